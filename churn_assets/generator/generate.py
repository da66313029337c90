"""Synthetic landing data in exactly the reference formats (see data-contracts.md).

Same fields, types, timestamp format (``MM-dd-yyyy HH:mm:ss``), null rates and churn
label rule as the reference generator, so the pipeline cannot tell its files from the
reference files:
- users and orders: newline-delimited JSON; null fields are left out of the object, as
  Spark's JSON writer does; numbers are written as floats (``1.0``).
- events: CSV with a header, empty fields for nulls.

Volumes follow the reference generator (dbdemos ``_resources/01-load-data``): a customer
draws s ~ N(3, 2) and places ``int(s) - 1`` orders; only customers with at least one
order are exported to the users files (so 100k customers give ~69k profiles and ~178k
orders, as in the reference), and each order comes with one app event whose platform is
drawn per event. Files are written under a hidden temporary name and renamed into
place, so the ingestor never sees a half-written generated file. The history is drawn and
written ``CHUNK_CUSTOMERS`` at a time: its memory does not grow with ``--customers``, and its
bytes are those of drawing every field for all customers at once (see ``_Phases``).

``generate_increment`` adds one hour of activity as new files: new customers, re-sent
profiles of existing customers (newer ``last_activity_date``), new orders and events.
The generator's own state (its clock and customer table) lives in ``$CHURN_HOME/generator``,
outside the landing folders.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from churn_assets.landing import SOURCES, SPECS, SourceSpec
from churn_assets.timeutil import LANDING_TS_FORMAT as TS

FIRST = (
    "Mary James Patricia Robert Jennifer John Linda Michael Elizabeth David Barbara William Susan Richard "
    "Jessica Joseph Sarah Thomas Karen Charles Lisa Christopher Nancy Daniel Betty Matthew Sandra Anthony "
    "Margaret Mark Ashley Donald Kimberly Steven Emily Paul Donna Andrew Michelle Joshua Carol Kenneth "
    "Amanda Kevin Dorothy Brian Melissa George Deborah Timothy Stephanie Ronald Rebecca Edward Sharon Jason "
    "Laura Jeffrey Cynthia Ryan Kathleen Jacob Amy Gary Angela Nicholas Shirley Eric Anna Jonathan Brenda "
    "Stephen Pamela Larry Emma Justin Nicole Scott Helen Brandon Samantha Benjamin Katherine Samuel Christine"
).split()
LAST = (
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez Gonzalez "
    "Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris Sanchez Clark "
    "Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill Flores Green Adams "
    "Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Pittman Osborn Tyler Cook Haynes Kelley"
).split()
DOMAINS = ["example.com", "mail.example.org", "shop.example.net", "example.biz", "post.example.com"]
STREETS = [
    "Sandra Neck",
    "John Estate",
    "Eric Villages",
    "Mcintyre Heights",
    "Kelly Crossing",
    "Oak Street",
    "Pine Road",
]
CITIES = ["Hannahfurt, MP", "New Heather, AR", "East Gregoryfurt, MP", "Lake Christopherbury, TX", "South Jessica, CO"]
URLS = [
    "https://databricks.com/",
    "https://databricks.com/faq.html",
    "https://databricks.com/login/",
    "https://databricks.com/privacy.jsp",
    "https://databricks.com/category/app/homepage/",
    "https://databricks.com/posts/explore/about/",
    "https://databricks.com/wp-content/main/author/",
]
# The landing contract's column types as the frames written hold them.
POLARS_TYPES = {"VARCHAR": pl.String, "DOUBLE": pl.Float64, "BOOLEAN": pl.Boolean}
KEY_NULL_RATE = 0.02
CATEGORY_NULL_RATE = 0.01
ROWS_PER_FILE = {"users": 10_000, "orders": 20_000, "events": 20_000}
RENAME_GAP_SECONDS = 0.02  # > one tick of the kernel's file clock (4 ms at HZ=250, 10 ms at HZ=100)


@dataclass
class GenerationReport:
    files: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SOURCES})
    records: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SOURCES})
    dirty: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SOURCES})
    clock: str = ""


def uuid_bytes(rng, n: int) -> np.ndarray:
    """The random bytes of ``n`` version-4 UUIDs (one draw, 16 bytes each)."""
    return rng.integers(0, 256, (n, 16), dtype=np.uint8)


def format_uuids(raw: np.ndarray) -> pl.Series:
    raw = raw.copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    hexed = pl.Series(raw.view("S16").ravel()).bin.encode("hex")
    return pl.select(
        pl.concat_str(
            [
                hexed.str.slice(0, 8),
                hexed.str.slice(8, 4),
                hexed.str.slice(12, 4),
                hexed.str.slice(16, 4),
                hexed.str.slice(20, 12),
            ],
            separator="-",
        )
    ).to_series()


def _null_some(rng, s: pl.Series, rate: float) -> pl.Series:
    return _null_where(s, rng.random(len(s)), rate)


def _null_where(s: pl.Series, draw: np.ndarray, rate: float) -> pl.Series:
    mask = draw < rate
    return s.set(pl.Series(mask), None) if mask.any() else s  # type: ignore[arg-type]


def to_landing(df: pl.DataFrame, spec: SourceSpec) -> pl.DataFrame:
    """The frame as the landing contract writes it: the spec's columns in file order, with its
    types, timestamps as text in the landing format. A column the spec lacks is an error."""
    return df.select(
        pl.col(name).dt.strftime(TS) if name in spec.timestamps else pl.col(name).cast(POLARS_TYPES[kind])
        for name, kind in spec.columns
    )


# The reference's "account older than 90 days" condition is
# ``datediff(current_timestamp(), creation_date) >= 90`` on a ``MM-dd-yyyy HH:mm:ss``
# *string*, which Spark's date cast turns into NULL: it never holds in the reference
# data (its churn rate, ~62 % in the shared sample, would be ~80 % otherwise). We
# reproduce the label the reference data carries; set this to True for the rule as written.
AGE_CONDITION_FIRES = False


def churn_label(rng, df: pl.DataFrame, now: datetime) -> pl.Series:
    """The reference generator's rule: 80 % churn if any condition holds, else 20 %.

    ``df`` has one row per customer with n_orders, n_items, n_events, platform (the
    first platform seen), gender, age_group, country and creation.
    """
    old_account = pl.col("creation") < pl.lit(now - timedelta(days=90)) if AGE_CONDITION_FIRES else pl.lit(False)
    cond = (
        ((pl.col("n_orders") >= 5) & (pl.col("platform") == "ios"))
        | ((pl.col("n_orders") == 3) & (pl.col("gender") == 0))
        | ((pl.col("n_orders") == 2) & (pl.col("gender") == 1) & (pl.col("age_group") <= 3))
        | ((pl.col("n_items") <= 1) & (pl.col("platform") == "android"))
        | ((pl.col("n_items") >= 10) & (pl.col("platform") == "ios"))
        | (pl.col("n_events") >= 4)
        | (pl.col("country") == "USA")
        | old_account
        | ((pl.col("age_group") >= 7) & (pl.col("gender") == 0))
        | ((pl.col("age_group") <= 2) & (pl.col("gender") == 1))
    )
    p = df.select(pl.when(cond).then(0.8).otherwise(0.2)).to_series().to_numpy()
    return pl.Series(rng.random(len(df)) < p)


def _months(start: datetime, end: datetime) -> int:
    return max(1, round((end - start).days / 30.44))


def _customer_draws(rng, n: int, start: datetime, end: datetime, monthly: bool) -> dict[str, np.ndarray]:
    """Every random number of ``n`` customers, one vectorised draw per field, in a fixed order
    (the streamed history replays each draw from its own place in the stream: see ``_Phases``)."""
    if monthly:
        months = _months(start, end)
        weights = np.linspace(2000, 6600, months)
        when = {"month": rng.choice(months, size=n, p=weights / weights.sum()), "day": rng.random(n)}
    else:
        when = {"secs": rng.integers(0, int((end - start).total_seconds()), n)}
    return {
        **when,
        "first": rng.integers(0, len(FIRST), n),
        "last": rng.integers(0, len(LAST), n),
        # The reference: s ~ N(3, 2), negatives to 0, int(s) - 1 orders (range(1, s)).
        "s": rng.normal(3, 2, n),
        "id": uuid_bytes(rng, n),
        "address": rng.integers(1, 99999, n),
        "canal": rng.choice(4, size=n, p=[0.54, 0.34, 0.11, 0.01]),
        "country": rng.integers(0, 3, n),
        "gender": rng.random(n),
        "age_group": rng.random(n),
    }


def _customers(rng, n: int, start: datetime, end: datetime, monthly: bool) -> pl.DataFrame:
    """Customer attributes; creation dates in monthly cohorts growing over the span."""
    return _customer_frame(_customer_draws(rng, n, start, end, monthly), start, end)


def _customer_frame(d: dict[str, np.ndarray], start: datetime, end: datetime, first_index: int = 0) -> pl.DataFrame:
    """The customers of ``d`` (drawn by ``_customer_draws``); ``first_index`` numbers them
    within the whole history (their e-mail addresses carry it)."""
    n = len(d["s"])
    if "month" in d:
        day_offset = (d["month"] * 30.44 + d["day"] * 30.44).astype(int)
        creation = [start + timedelta(days=int(x)) for x in np.minimum(day_offset, (end - start).days - 1)]
        creation_s = pl.Series(creation, dtype=pl.Datetime("us"))
    else:
        creation_s = pl.Series([start] * n, dtype=pl.Datetime("us")) + pl.Series(
            d["secs"] * 1_000_000, dtype=pl.Duration("us")
        )
    # Accounts are created at midnight in the reference.
    creation_s = creation_s.dt.truncate("1d")
    first = np.array(FIRST)[d["first"]]
    last = np.array(LAST)[d["last"]]
    n_orders = np.trunc(np.maximum(d["s"], 0)).astype(np.int64) - 1
    return pl.DataFrame(
        {
            "id": format_uuids(d["id"]),
            "firstname": first,
            "lastname": last,
            "email": [
                f"{f.lower()}.{lname.lower()}{i}@{DOMAINS[i % len(DOMAINS)]}"
                for i, (f, lname) in enumerate(zip(first, last), start=first_index)
            ],
            "address": [
                f"{a} {STREETS[a % len(STREETS)]} Suite {a % 997}\n{CITIES[a % len(CITIES)]} {10000 + a % 89999}"
                for a in d["address"].tolist()
            ],
            "canal": pl.Series(["WEBAPP", "PHONE", "MOBILE", None], dtype=pl.String).gather(d["canal"]),
            "country": np.array(["FR", "USA", "SPAIN"])[d["country"]],
            "creation": creation_s,
            "gender": (d["gender"] < 0.7).astype(np.int64),
            "age_group": np.rint(d["age_group"] * 10).astype(np.int64),
            "n_orders": n_orders,
        }
    )


PLATFORMS = np.array(["ios", "android", "other"])
PLATFORM_P = np.array([0.5, 0.1, 0.3]) / 0.9  # the reference's weights (its 1 % nulls come after)


def _order_draws(rng, m: int) -> dict[str, np.ndarray]:
    """Every random number of ``m`` orders and their app events, one vectorised draw per field."""
    return {
        "when": rng.random(m),
        "items": rng.integers(1, 4, m),
        "unit": rng.integers(10, 41, m),
        "null_order_user": rng.random(m),
        "order_id": uuid_bytes(rng, m),
        "null_order_id": rng.random(m),
        "event_id": uuid_bytes(rng, m),
        "event_shift": rng.integers(-3600, 3600, m),
        "platform": rng.choice(3, size=m, p=PLATFORM_P),
        "null_platform": rng.random(m),
        "null_event_user": rng.random(m),
        "null_event_id": rng.random(m),
        "action": rng.integers(0, 3, m),
        "null_action": rng.random(m),
        "null_session": rng.random(m),
        "url": rng.integers(0, len(URLS), m),
    }


def _orders_and_events(rng, cust: pl.DataFrame, lo: pl.Series, hi: datetime, counts: np.ndarray):
    """``counts[i]`` orders for customer i between lo[i] and hi; one app event per order.

    Returns (orders, events, stats): stats has per customer what the label rule reads
    (n_orders, n_items, n_events, the first platform seen) and the last order time.
    """
    idx = np.repeat(np.arange(len(cust)), counts)
    d = _order_draws(rng, len(idx))
    lo_us = lo.dt.epoch("us").to_numpy()[idx]
    hi_us = (
        int(hi.timestamp() * 1_000_000) if hi.tzinfo else int((hi - datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    )
    span = np.maximum(hi_us - lo_us, 1)
    when_us = lo_us + (d["when"] * span).astype(np.int64)
    when = pl.Series(when_us // 1_000_000 * 1_000_000, dtype=pl.Datetime("us"))
    items = d["items"]
    user_ids = cust["id"].gather(idx)
    orders = pl.DataFrame(
        {
            "user_id": _null_where(user_ids, d["null_order_user"], KEY_NULL_RATE),
            "id": _null_where(format_uuids(d["order_id"]), d["null_order_id"], KEY_NULL_RATE),
            "transaction_date": when,
            "item_count": items.astype(np.float64),
            "amount": (items * d["unit"]).astype(np.float64),
        }
    )
    event_ids = format_uuids(d["event_id"])
    ev_us = np.minimum(when_us + d["event_shift"] * 1_000_000, hi_us)
    ev_when = pl.Series(ev_us // 1_000_000 * 1_000_000, dtype=pl.Datetime("us"))
    platform = _null_where(pl.Series(PLATFORMS[d["platform"]]), d["null_platform"], CATEGORY_NULL_RATE)
    events = pl.DataFrame(
        {
            "user_id": _null_where(user_ids, d["null_event_user"], KEY_NULL_RATE),
            "event_id": _null_where(event_ids, d["null_event_id"], KEY_NULL_RATE),
            "platform": platform,
            "date": ev_when,
            "action": _null_where(
                pl.Series(np.array(["view", "click", "log"])[d["action"]]), d["null_action"], CATEGORY_NULL_RATE
            ),
            # In the reference a session is one event: the ids are equal.
            "session_id": _null_where(event_ids, d["null_session"], KEY_NULL_RATE),
            "url": np.array(URLS)[d["url"]],
        }
    )
    per_event = pl.DataFrame({"i": idx, "t": ev_when, "platform": platform, "items": items, "tx": when})
    stats = (
        pl.DataFrame({"i": np.arange(len(cust))})
        .join(
            per_event.group_by("i").agg(
                n_orders=pl.len(),
                n_items=pl.col("items").sum(),
                # First platform seen: the earliest event's, as gold computes it.
                platform=pl.col("platform").sort_by("t").drop_nulls().first(),
                last_order=pl.col("tx").max(),
            ),
            on="i",
            how="left",
        )
        .sort("i")
        .with_columns(n_events=pl.col("n_orders"))
    )
    return orders, events, stats


def _json_lines(df: pl.DataFrame) -> pl.Series:
    # Spark's JSON writer leaves null fields out of the object; so do we.
    parts = [
        pl.when(pl.col(c).is_not_null()).then(
            pl.struct(c).struct.json_encode().str.strip_prefix("{").str.strip_suffix("}")
        )
        for c in df.columns
    ]
    return df.select(("{" + pl.concat_list(parts).list.drop_nulls().list.join(",") + "}").alias("line")).to_series()


def _dirty_draws(rng, n: int, rate: float, kinds: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Which of a file's ``n`` records are spoiled and, for JSON files, how (one kind per spoiled record)."""
    mask = rng.random(n) < rate
    k = int(mask.sum())
    return mask, (rng.integers(0, 4, k) if kinds and k else None)


def _dirty_json(rng, lines: pl.Series, rate: float) -> tuple[pl.Series, int]:
    """Replace about ``rate`` of the lines with malformed records of several kinds."""
    mask, kinds = _dirty_draws(rng, len(lines), rate, kinds=True)
    k = int(mask.sum())
    if not k:
        return lines, 0
    out = lines.to_list()
    for j, i in enumerate(np.flatnonzero(mask).tolist()):
        line = out[i]
        kind = kinds[j]
        if kind == 0:
            out[i] = line[: max(1, len(line) // 2)]  # truncated record: not JSON
        elif kind == 1:
            out[i] = line[:-1] + ',"unexpected_field":"x"}'  # extra field: rescued
        elif kind == 2:
            out[i] = line.replace('"creation_date":"', '"creation_date":"2023/').replace(
                '"transaction_date":"', '"transaction_date":"2023/'
            )
            if out[i] == line:
                out[i] = line[:-1] + ',"unexpected_field":1}'
        else:
            out[i] = "{not json at all"  # malformed
    return pl.Series(out), k


def _dirty_csv(rng, df: pl.DataFrame, rate: float) -> tuple[list[str], int]:
    body = df.write_csv(include_header=False).splitlines()
    mask, _ = _dirty_draws(rng, len(body), rate, kinds=False)
    for i in np.flatnonzero(mask).tolist():
        kind = i % 3
        if kind == 0:
            body[i] = body[i].rsplit(",", 3)[0]  # missing columns: quarantined
        elif kind == 1:
            body[i] = body[i] + ",surplus"  # one column too many: quarantined
        else:
            parts = body[i].split(",")
            parts[3] = "not-a-date"  # bad timestamp: rescued
            body[i] = ",".join(parts)
    return body, int(mask.sum())


class LandingWriter:
    def __init__(self, home: Path, tag: str, rows_per_file: int | None = None):
        self.root = home / "landing"
        self.tag = tag
        self.rows_per_file = rows_per_file
        self.report = GenerationReport()
        self._pending: dict[str, pl.DataFrame | None] = {s: None for s in SOURCES}
        for s in SOURCES:
            (self.root / s).mkdir(parents=True, exist_ok=True)

    def write(self, source: str, df: pl.DataFrame, rng, dirty_rate: float, progress=None, last: bool = True) -> None:
        """``df`` (datetimes for the timestamp fields) as files of ``source``, in its format.

        Streamed: with ``last=False`` only whole files are written and the rest waits for the next
        call, so a source written in chunks gets the same files as written at once."""
        spec = SPECS[source]
        per = self.rows_per_file or ROWS_PER_FILE[source]
        rows = to_landing(df, spec)
        held = self._pending[source]
        rows = rows if held is None else pl.concat([held, rows])
        whole = len(rows) if last else len(rows) // per * per
        write = self._json_file if spec.fmt == "json" else self._csv_file
        for start in range(0, whole, per):
            write(source, rows.slice(start, min(per, whole - start)), rng, dirty_rate, progress)
        self._pending[source] = rows.slice(whole) if whole < len(rows) else None

    def _write(self, source: str, text: str) -> None:
        name = f"part-{len(self.report.files[source]):05d}-{self.tag}{SPECS[source].extension}"
        tmp = self.root / source / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        # File timestamps tick coarsely (a few ms): renamed in the same tick as its last write, the
        # file would not show its rename (ctime past mtime) and would wait the settle time.
        time.sleep(RENAME_GAP_SECONDS)
        os.replace(tmp, self.root / source / name)  # atomic: readers see all or nothing
        self.report.files[source].append(f"{source}/{name}")

    def _json_file(self, source: str, df: pl.DataFrame, rng, dirty_rate: float, progress=None) -> None:
        lines, k = _dirty_json(rng, _json_lines(df), dirty_rate)
        self.report.dirty[source] += k
        self.report.records[source] += len(lines)
        self._write(source, "\n".join(lines.to_list()) + "\n")
        if progress:
            progress.update(len(lines))

    def _csv_file(self, source: str, df: pl.DataFrame, rng, dirty_rate: float, progress=None) -> None:
        body, k = _dirty_csv(rng, df, dirty_rate)
        self.report.dirty[source] += k
        self.report.records[source] += len(body)
        self._write(source, ",".join(df.columns) + "\n" + "\n".join(body) + "\n")
        if progress:
            progress.update(len(body))


def _users_frame(cust: pl.DataFrame, last_activity: pl.Series, churn: pl.Series) -> pl.DataFrame:
    # No null ids: the reference's profiles come out of a join on the id (none of the
    # shared sample's 2,086 is null). The pipeline still drops and counts any that land.
    return pl.DataFrame(
        {
            "id": cust["id"],
            "firstname": cust["firstname"],
            "lastname": cust["lastname"],
            "email": cust["email"],
            "address": cust["address"],
            "canal": cust["canal"],
            "country": cust["country"],
            "creation_date": cust["creation"],
            "last_activity_date": last_activity,
            "gender": cust["gender"],
            "age_group": cust["age_group"],
            "churn": churn,
        }
    )


def _state_dir(home: Path) -> Path:
    return home / "generator"


# Customers drawn and written per step of the streamed history: its memory follows this, not the history's size.
CHUNK_CUSTOMERS = 100_000


class _Placeholder:
    """Stands in for a generator in all but one of a draw function's calls: the shape of the
    result without drawing (read-only broadcasts, no memory)."""

    def __init__(self, rng, phase: int):
        self.rng, self.phase, self.calls = rng, phase, 0

    def _real(self) -> bool:
        self.calls += 1
        return self.calls - 1 == self.phase

    def random(self, size):
        return self.rng.random(size) if self._real() else np.broadcast_to(np.float64(0), size)

    def normal(self, loc, scale, size):
        return self.rng.normal(loc, scale, size) if self._real() else np.broadcast_to(np.float64(loc), size)

    def integers(self, low, high, size, dtype=np.int64):
        return self.rng.integers(low, high, size, dtype=dtype) if self._real() else np.broadcast_to(dtype(low), size)

    def choice(self, a, size, p=None):
        return self.rng.choice(a, size=size, p=p) if self._real() else np.broadcast_to(np.int64(0), size)


class _Phases:
    """One generator per call of a draw function, each where the in-memory algorithm (one call
    per field over all rows) makes that call in the seed's stream. Numpy's ``random``, ``normal``,
    ``integers`` and ``choice`` give the same numbers in chunks as in one call (the generator's
    tests hold it to that with chunks of 37 and 64 customers), so the rows can be drawn chunk by
    chunk, fields interleaved, with exactly the numbers of the all-at-once run, from ``generator()``."""

    def __init__(self, rng, draw, sizes, observe=None):
        """Walks each field's draw over ``sizes`` (discarding the numbers, bar what ``observe(key,
        values)`` keeps) to find where the next starts; leaves ``rng`` after the last field."""
        keys = list(draw(_Placeholder(None, -1), 1))
        self.states = []
        for phase, key in enumerate(keys):
            self.states.append(rng.bit_generator.state)
            for size in sizes:
                stand_in = _Placeholder(rng, phase)
                values = draw(stand_in, size)[key]
                assert stand_in.calls == len(keys), "a draw function makes exactly one call per field"
                if observe:
                    observe(key, values)

    def generator(self) -> _PhaseRng:
        return _PhaseRng([_generator_at(state) for state in self.states])


class _PhaseRng:
    """The generator a draw function is given, chunk after chunk: its i-th call of every chunk
    draws from field i's generator."""

    def __init__(self, gens: list[np.random.Generator]):
        self._gens = gens
        self._calls = 0

    def _next(self) -> np.random.Generator:
        gen = self._gens[self._calls % len(self._gens)]
        self._calls += 1
        return gen

    def random(self, size):
        return self._next().random(size)

    def normal(self, loc, scale, size):
        return self._next().normal(loc, scale, size)

    def integers(self, low, high, size, dtype=np.int64):
        return self._next().integers(low, high, size, dtype=dtype)

    def choice(self, a, size, p=None):
        return self._next().choice(a, size=size, p=p)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - lo) for lo in range(0, total, size)]


def _label_draws(rng, n: int) -> dict[str, np.ndarray]:
    # What ``churn_label`` draws, then the gap from the last order to the last activity.
    return {"churn": rng.random(n), "gap": rng.random(n)}


def _skip_dirty(rng, records: int, per: int, rate: float, kinds: bool) -> dict:
    """Walks the spoiling draws of ``records`` records written ``per`` a file; the state before them."""
    state = rng.bit_generator.state
    for n in _chunks(records, per):
        _dirty_draws(rng, n, rate, kinds)
    return state


def _generator_at(state: dict) -> np.random.Generator:
    gen = np.random.Generator(np.random.PCG64())
    gen.bit_generator.state = state
    return gen


def generate_history(
    home: Path,
    customers: int = 100_000,
    seed: int = 42,
    end: date | None = None,
    dirty_rate: float = 0.0,
    progress: bool = True,
    rows_per_file: int | None = None,
    chunk_customers: int = CHUNK_CUSTOMERS,
) -> GenerationReport:
    """Two years of history ending at ``end`` (default: today, UTC).

    Streamed: ``chunk_customers`` at a time (customers, their orders, events and label), so memory
    stays flat whatever ``customers`` is; the files are the same, byte for byte, as drawing every
    field for all customers at once (``_Phases``), whatever the chunk size.
    """
    end_dt = datetime.combine(end or datetime.utcnow().date(), datetime.min.time())
    start_dt = end_dt - timedelta(days=730)
    rng = np.random.default_rng(seed)
    # First the plan: where each field's draw starts, and how many customers are kept and orders placed.
    counted = {"users": 0, "orders": 0}

    def count(key: str, values: np.ndarray) -> None:
        if key == "s":
            n_orders = np.trunc(np.maximum(values, 0)).astype(np.int64) - 1
            counted["users"] += int((n_orders >= 1).sum())
            counted["orders"] += int(n_orders[n_orders >= 1].sum())

    def customer_draws(g, n):
        return _customer_draws(g, n, start_dt, end_dt, monthly=True)

    plan_customers = _Phases(rng, customer_draws, _chunks(customers, chunk_customers), count)
    n_users, n_orders = counted["users"], counted["orders"]
    plan_orders = _Phases(rng, _order_draws, _chunks(n_orders, 8 * chunk_customers))
    plan_labels = _Phases(rng, _label_draws, _chunks(n_users, chunk_customers))
    spoil = {}
    for source, records, kinds in (("users", n_users, True), ("orders", n_orders, True), ("events", n_orders, False)):
        per = rows_per_file or ROWS_PER_FILE[source]
        spoil[source] = _generator_at(_skip_dirty(rng, records, per, dirty_rate, kinds))

    writer = LandingWriter(home, f"h{seed}", rows_per_file)
    state = _state_dir(home)
    state.mkdir(parents=True, exist_ok=True)
    bar = _progress(progress, n_users + 2 * n_orders, "generate")
    customer_rng, order_rng, label_rng = plan_customers.generator(), plan_orders.generator(), plan_labels.generator()
    with _ParquetAppender(state / "customers.parquet") as kept:
        for lo in range(0, customers, chunk_customers):
            size = min(chunk_customers, customers - lo)
            drawn = _customer_draws(customer_rng, size, start_dt, end_dt, monthly=True)
            # Customers without an order are not exported, as in the reference.
            cust = _customer_frame(drawn, start_dt, end_dt, first_index=lo).filter(pl.col("n_orders") >= 1)
            orders, events, stats = _orders_and_events(
                order_rng, cust, cust["creation"], end_dt, cust["n_orders"].to_numpy()
            )
            cust = cust.with_columns(stats.select("n_items", "n_events", "platform"))
            churn = churn_label(label_rng, cust, end_dt)
            # Last activity: at or after the last order, before the end of the history.
            gap_us = (label_rng.random(len(cust)) * 7 * 86400).astype(np.int64) * 1_000_000
            gap = pl.Series(gap_us, dtype=pl.Duration("us"))
            last_activity = pl.select(pl.min_horizontal(stats["last_order"] + gap, pl.lit(end_dt))).to_series()
            last = lo + size >= customers
            for source, frame in (
                ("users", _users_frame(cust, last_activity, churn)),
                ("orders", orders),
                ("events", events),
            ):
                writer.write(source, frame, spoil[source], dirty_rate, bar, last=last)
            kept.write(cust.drop("n_items", "n_events", "platform").with_columns(churn=churn))
    if bar:
        bar.close()
    (state / "state.json").write_text(
        json.dumps({"seed": seed, "clock": end_dt.isoformat(), "increments": 0, "orders": n_orders})
    )
    writer.report.clock = end_dt.isoformat()
    return writer.report


class _ParquetAppender:
    """One Parquet file written a frame at a time (renamed into place when complete)."""

    def __init__(self, path: Path):
        self.path, self.tmp, self.writer = path, path.with_name(f".{path.name}.tmp"), None

    def __enter__(self) -> _ParquetAppender:
        return self

    def write(self, frame: pl.DataFrame) -> None:
        import pyarrow.parquet as pq

        table = frame.to_arrow()
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.tmp, table.schema, compression="zstd")
        self.writer.write_table(table.cast(self.writer.schema))

    def __exit__(self, kind, *_) -> None:
        if self.writer is not None:
            self.writer.close()
            if kind is None:
                os.replace(self.tmp, self.path)


def generate_increment(
    home: Path, fraction: float = 0.01, dirty_rate: float = 0.0, progress: bool = False
) -> GenerationReport:
    """One hour of new activity, about ``fraction`` of the history's volume, as new files."""
    state_dir = _state_dir(home)
    if not (state_dir / "state.json").exists():
        raise FileNotFoundError(f"no generator state in {state_dir}: run `churn generate` (the history) first")
    state = json.loads((state_dir / "state.json").read_text())
    known = pl.read_parquet(state_dir / "customers.parquet")
    k = state["increments"] + 1
    rng = np.random.default_rng([state["seed"], k])
    start = datetime.fromisoformat(state["clock"])
    end = start + timedelta(hours=1)
    n_users = max(2, round(len(known) * fraction))
    n_new = max(1, n_users * 2 // 5)
    n_resent = n_users - n_new
    n_orders = max(1, round(state["orders"] * fraction))

    # Every new customer orders once in its first hour; the other orders go to existing customers.
    new = _customers(rng, n_new, start, end, monthly=False).with_columns(n_orders=pl.lit(1, dtype=pl.Int64))
    existing_idx = rng.integers(0, len(known), max(0, n_orders - n_new))
    buyers = pl.concat([new, known.select(new.columns)[existing_idx]])
    counts = np.ones(len(buyers), dtype=np.int64)
    lo = pl.Series([start] * len(buyers), dtype=pl.Datetime("us"))
    orders, events, stats = _orders_and_events(rng, buyers, lo, end, counts)
    new = new.with_columns(stats.head(n_new).select("n_items", "n_events", "platform"))
    churn_new = churn_label(rng, new, end)
    resent = known[rng.choice(len(known), n_resent, replace=False)]
    offsets = (rng.random(n_new + n_resent) * 3600).astype(np.int64) * 1_000_000
    act = lo.head(n_new + n_resent) + pl.Series(offsets, dtype=pl.Duration("us"))
    users = pl.concat(
        [
            _users_frame(new, act.head(n_new), churn_new),
            _users_frame(resent, act.tail(n_resent), resent["churn"]),
        ]
    )
    writer = LandingWriter(home, f"i{k:06d}-{start.strftime('%Y%m%dT%H')}")
    bar = _progress(progress, len(users) + len(orders) + len(events), "increment")
    for source, frame in (("users", users), ("orders", orders), ("events", events)):
        writer.write(source, frame, rng, dirty_rate, bar)
    if bar:
        bar.close()
    pl.concat([known, new.drop("n_items", "n_events", "platform").with_columns(churn=churn_new)]).write_parquet(
        state_dir / "customers.parquet"
    )
    state.update(clock=end.isoformat(), increments=k, orders=state["orders"] + len(orders))
    (state_dir / "state.json").write_text(json.dumps(state))
    writer.report.clock = end.isoformat()
    return writer.report


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="rec", unit_scale=True)
