"""Which JSON lines fit the landing schema: bronze's SQL against a plain Python statement of the
contract, line by line, for every kind of misfit, each written compactly (as the generator and
Spark write: the SQL's one-parse path) and with spaces (the key-by-key path)."""

from __future__ import annotations

import json
import re

import duckdb
import pyarrow as pa
import pytest

from churn_assets.defs.bronze.parse import FILE_ID, ROW_NO, SOURCE_FILE, _parse_json_lines
from churn_assets.defs.bronze.rows_sql import CANONICAL, json_select_sql
from churn_assets.landing import SPECS, TIMESTAMP_REGEX

SPEC = SPECS["orders"]
GOOD = {"user_id": "u-1", "id": "o-1", "transaction_date": "06-05-2023 12:07:59", "item_count": 3.0, "amount": 57.5}


def pairs(**changes) -> list[tuple[str, object]]:
    """GOOD's members in schema order with ``changes`` (a value of ... drops the key)."""
    return [(k, changes.get(k, v)) for k, v in GOOD.items() if changes.get(k, v) is not ...] + [
        (k, v) for k, v in changes.items() if k not in GOOD
    ]


def write(members: list[tuple[str, object]], compact: bool) -> str:
    sep = (",", ":") if compact else (", ", ": ")
    return "{" + sep[0].join(json.dumps(k) + sep[1] + json.dumps(v) for k, v in members) + "}"


CASES = {
    "fits": pairs(),
    "explicit null": pairs(amount=None),
    "key left out": pairs(id=...),
    "integer in a DOUBLE": pairs(item_count=3),
    "exponent in a DOUBLE": pairs(amount=1.5e-7),
    "number in a VARCHAR": pairs(id=5),
    "object in a VARCHAR": pairs(id={"a": 1}),
    "string number in a DOUBLE": pairs(amount="1.5"),
    "NaN as a string in a DOUBLE": pairs(amount="NaN"),
    "boolean in a DOUBLE": pairs(amount=True),
    "extra key": pairs(coupon="X"),
    "extra key set to null": pairs(coupon=None),
    "key in another case": pairs(id=..., ID="o-1"),
    "duplicate key": pairs() + [("id", "o-2")],
    "timestamp in another format": pairs(transaction_date="2023-06-05 12:07:59"),
    "keys in another order": list(reversed(pairs())),
    "escapes and non-ASCII": pairs(id='o-"1"\\/\n\u00e9\u2028'),
}


def oracle(members: list[tuple[str, object]]) -> tuple[dict, bool]:
    """The contract in Python: (the typed values kept, whether the record fits)."""
    types = dict(SPEC.columns)
    names = [k for k, _ in members]
    fits = len(set(names)) == len(names) and set(names) <= set(types)
    values = {}
    for k, v in members:
        if k not in types:
            continue
        ok = (
            v is None
            or {
                "VARCHAR": isinstance(v, str),
                "DOUBLE": isinstance(v, int | float) and not isinstance(v, bool),
                "BOOLEAN": isinstance(v, bool),
            }[types[k]]
        )
        if ok and k in SPEC.timestamps and v is not None:
            ok = re.fullmatch(TIMESTAMP_REGEX, v) is not None
        values[k] = (float(v) if types[k] == "DOUBLE" and v is not None else v) if ok else None
        fits = fits and ok
    if len(set(names)) != len(names):
        values = {k: values[k] for k in dict(members) if k in types}  # which duplicate wins is not asserted
    return {c: values.get(c) for c in SPEC.column_names}, fits


def bronze_rows(lines: list[str], careful: bool = True) -> tuple[dict[int, tuple], list[tuple]]:
    """(row_no -> (typed values, _rescued_data), quarantine rows) from the project's parse and SQL."""
    pf = _parse_json_lines(None, "", ("\n".join(lines) + "\n").encode(), 1)
    n = pf.lines.num_rows
    view = pf.lines.append_column(FILE_ID, pa.array([1] * n, pa.int64())).append_column(
        SOURCE_FILE, pa.array(["orders/t.json"] * n)
    )
    con = duckdb.connect()
    con.register("lines", view)
    rows_sql, bad_sql = json_select_sql(SPEC, "lines", careful=careful)
    cols = ", ".join(f'"{c}"' for c in SPEC.column_names)
    rows = {
        r[0]: (dict(zip(SPEC.column_names, r[1:-1])), r[-1])
        for r in con.execute(f'SELECT "{ROW_NO}", {cols}, _rescued_data FROM ({rows_sql})').fetchall()
    }
    return rows, con.execute(bad_sql).fetchall()


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
def test_each_line_fits_exactly_when_the_contract_says_so(compact):
    lines = [write(members, compact) for members in CASES.values()]
    rows, quarantined = bronze_rows(lines)
    assert quarantined == [] and sorted(rows) == list(range(1, len(lines) + 1))
    for row_no, (name, members) in enumerate(CASES.items(), start=1):
        values, rescued = rows[row_no]
        want, fits = oracle(members)
        assert (rescued is None) == fits, name
        if not fits:
            assert rescued == lines[row_no - 1], name  # the raw line, as landed
        if name == "duplicate key":
            continue
        assert values == want, name


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
def test_the_quick_query_gives_the_careful_rows_for_every_line_it_takes(compact):
    """Without json_valid (bronze's first try at a batch), every object line comes out as the
    careful query has it: the same values, the same rescued lines."""
    lines = [write(members, compact) for members in CASES.values()]
    quick, _ = bronze_rows(lines, careful=False)
    assert quick == bronze_rows(lines)[0]
    assert sum(rescued is not None for _, rescued in quick.values()) == sum(
        not oracle(members)[1] for members in CASES.values()
    )


def test_the_quick_query_fails_loudly_on_what_it_cannot_take():
    """What makes bronze write a batch again carefully: a line that opens an object but is no
    JSON raises; a line that is not an object is left out, so fewer rows than lines."""
    good = write(CASES["fits"], compact=True)
    with pytest.raises(duckdb.InvalidInputException):
        bronze_rows([good, "{not json", good], careful=False)
    rows, _ = bronze_rows([good, "[1, 2]", '"text"', good], careful=False)
    assert sorted(rows) == [1, 4]


def test_the_compact_form_is_the_one_parse_path():
    """The compact good line is what ``to_json`` writes back, so it skips the key-by-key parses."""
    line = write(CASES["fits"], compact=True)
    spaced = write(CASES["fits"], compact=False)
    struct = "{" + ", ".join(f'"{c}": "{t}"' for c, t in SPEC.columns) + "}"
    test = f"SELECT {CANONICAL} FROM (SELECT from_json(raw, '{struct}') AS s, raw FROM (SELECT ?::VARCHAR AS raw))"
    assert duckdb.sql(test, params=[line]).fetchall() == [(True,)]
    assert duckdb.sql(test, params=[spaced]).fetchall() == [(False,)]  # the key-by-key path decides it


def test_lines_that_are_not_objects_go_to_quarantine_with_their_reason():
    good = write(CASES["fits"], compact=True)
    lines = [good, "{not json", "[1, 2]", "null", '"text"', "  ", good + "\r", "{" + '"id":"o-\x01"}']
    rows, quarantined = bronze_rows(lines)
    reasons = {r[2]: r[4] for r in quarantined}
    assert reasons == {
        2: "malformed JSON",
        3: "JSON value is not an object",
        4: "JSON value is not an object",
        5: "JSON value is not an object",
        8: "malformed JSON",  # a raw control character inside a string
    }
    assert sorted(rows) == [1, 7]  # line 6 is blank: no record; a CRLF line ends before its CR
    assert rows[7] == rows[1]


LINE_PIECES = ["{}", '{"a":1}', '{"id":"' + "x" * 30 + '"}', "", " ", "\t", "\u00a0", "\u3000 ", ' {"b":2}', "not json"]
LINE_PIECES += [
    "[1]",
    '{"é":"ü"}',
    "\r",
    '{"c":3}\r',
    '{"d":4}\r\r',
    "x" * 11,
    "x" * 12,
    "x" * 13,
    "\u2028",
    "\u00e9" * 7,
]


def plain_lines(data: bytes, first_no: int) -> list[tuple[str, int]]:
    """The line rule in plain Python: split at "\\n", trailing CRs dropped, a line that is
    empty or white space only (Unicode's White_Space, as Arrow's utf8_is_space) is no record."""
    space = set("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}
    out = []
    for no, line in enumerate(data.decode("utf-8").split("\n"), start=first_no):
        line = line.rstrip("\r\n")
        if line and not set(line) <= space:
            out.append((line, no))
    return out


@pytest.mark.parametrize("chunk", [16, 64, None], ids=["16-byte buffers", "64-byte buffers", "one buffer"])
def test_json_lines_are_views_of_the_landed_bytes_split_as_the_line_rule_says(chunk, monkeypatch):
    """Lines reach SQL as Arrow string views into the file's bytes (none copied): short ones
    held in the view, long ones pointing into the buffer that holds them, however it is cut."""
    import random

    import churn_assets.defs.bronze.parse as parse

    if chunk:
        # Buffers reach just past the longest line (41 bytes here): a view must land in its own.
        monkeypatch.setattr(parse, "VIEW_CHUNK", chunk)
        monkeypatch.setattr(parse, "MAX_RECORD_BYTES", 41)
    rng = random.Random(chunk or 0)
    con = duckdb.connect()
    for _ in range(150):
        lines = [rng.choice(LINE_PIECES) for _ in range(rng.randint(0, 25))]
        data = "\n".join(lines).encode() + rng.choice([b"", b"\n", b"\r\n"])
        first_no = rng.randint(1, 9)
        pf = _parse_json_lines(None, "", data, first_no)
        assert pf.lines.schema.field("raw").type == pa.string_view()
        for views in pf.lines.column("raw").chunks:
            views.validate(full=True)  # the prefix Arrow keeps in each view (DuckDB does not read it)
        con.register("lines", pf.lines)
        got = con.execute(f'SELECT raw, "{ROW_NO}" FROM lines').fetchall()
        assert got == plain_lines(data, first_no), data
        assert pf.records == len(got)


def test_csv_rows_keep_their_physical_line_numbers_across_empty_lines(tmp_path):
    """The CSV reader skips empty lines (and CRLF's lone CRs) without counting them: the row
    numbers stored are the file's own line numbers all the same, for rows and quarantine."""
    from churn_assets.defs.bronze.parse import parse_file
    from churn_assets.landing import LandedFile

    header = ",".join(SPECS["events"].column_names)
    lines = [header, "u1,e1,ios,06-05-2023 12:07:59,view,s1,/a", "", "\r", "u2,e2,ios,06-05-2023 12:08:00,view,s1,/b"]
    lines += ["too,few", "", "u3,e3,web,06-05-2023 12:09:00,view,s2,/c", ""]
    path = tmp_path / "events.csv"
    path.write_bytes("\n".join(lines).encode())
    st = path.stat()
    pf = parse_file(SPECS["events"], LandedFile(path, "events/events.csv", st.st_size, st.st_mtime))
    # Line 1 is the header: data line k of the file is row_no k - 1, as without empty lines.
    assert pf.lines.column(ROW_NO).to_pylist() == [1, 4, 7]
    assert pf.lines.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    assert [(no, reason) for no, _, reason in pf.quarantine] == [(5, "expected 7 columns, found 2")]
    assert pf.records == 4


# --- CSV line breaks, quotes and column names: every landed line is a row or in quarantine ---

EVENTS_HEADER = ",".join(SPECS["events"].column_names)


def event_line(i: int, url: str = "https://x/") -> str:
    return f"u-{i},e{i},ios,11-24-2026 10:00:{i % 60:02d},view,s{i},{url}"


def parse_events(tmp_path, name: str, data: bytes):
    from churn_assets.defs.bronze.parse import parse_file
    from churn_assets.landing import LandedFile

    path = tmp_path / name
    path.write_bytes(data)
    st = path.stat()
    return parse_file(SPECS["events"], LandedFile(path, f"events/{name}", st.st_size, st.st_mtime))


def landed_lines(data: bytes) -> int:
    """Records landed, by the contract's rule: non-blank lines (at LF, CRLF or a lone CR), header excluded."""
    return len([line for line in re.split(rb"\r\n|\r|\n", data) if line.strip()]) - 1


def test_cr_only_line_breaks_are_line_breaks():
    """Excel's "CSV (Macintosh)" ends lines with a lone CR: read as "\\n", byte for byte
    (offsets and line numbers stay the file's); files with LF or CRLF lines are left alone."""
    from churn_assets.defs.bronze.parse import cr_lines_as_lf

    assert cr_lines_as_lf(b"h,i\ra,b\rc,d\r") == b"h,i\na,b\nc,d\n"
    assert cr_lines_as_lf(b"h,i\ra,b") == b"h,i\na,b"
    assert cr_lines_as_lf(b"h,i\ra,b\r\nc,d\n") == b"h,i\na,b\r\nc,d\n"  # CR lines, then an appended LF one
    for kept in (b"h,i\na,b\rc\n", b"h,i\r\na,b\r\n", b"h,i\r\r\na\n", b"h,i", b"", b"h,i\r"[:-1]):
        assert cr_lines_as_lf(kept) is kept


@pytest.mark.parametrize("events", [1, 3])
def test_a_csv_with_cr_only_line_breaks_loads_every_event(tmp_path, events):
    data = "\r".join([EVENTS_HEADER, *(event_line(i) for i in range(events))]).encode() + b"\r"
    pf = parse_events(tmp_path, "mac.csv", data)
    assert (pf.status, pf.records, pf.quarantine) == ("loaded", events, [])
    assert pf.lines.column("user_id").to_pylist() == [f"u-{i}" for i in range(events)]
    assert pf.lines.column(ROW_NO).to_pylist() == list(range(1, events + 1))


def test_lines_that_end_inside_a_quoted_field_are_found():
    from churn_assets.defs.bronze.parse import unclosed_quote_lines

    closed = [b"a,b,c", b'a,"b,c",d', b'a,"say ""hi""",c', b'a,b"c,d', b'a,"x"y"z,c', b'"",b', b'a,"b\rc",d', b"a,b\r"]
    unclosed = [b'a,b,"c', b'a,"b""', b'a,"b"",c', b'"a', b'a,b\r"c', b'a,"x"y,"z']
    lines = closed + unclosed
    assert unclosed_quote_lines(b"\n".join(lines)).tolist() == list(range(len(closed), len(lines)))
    assert unclosed_quote_lines(b"a,b\nc,d\n").tolist() == []


def test_an_unclosed_quote_quarantines_its_line_and_loses_none_after_it(tmp_path):
    """The reader would run every line after an unclosed quote into that field (one row
    loaded for 6 lines): that line goes to quarantine, the lines after it load as they are."""
    from churn_assets.defs.bronze.parse import UNCLOSED_QUOTE

    lines = [EVENTS_HEADER, event_line(0), event_line(1, '"https://x/?q=shoes'), *(event_line(i) for i in range(2, 7))]
    data = ("\n".join(lines) + "\n").encode()
    pf = parse_events(tmp_path, "unclosed.csv", data)
    assert pf.lines.num_rows + len(pf.quarantine) == pf.records == landed_lines(data) == 7
    assert pf.lines.column(ROW_NO).to_pylist() == [1, 3, 4, 5, 6, 7]
    assert set(pf.lines.column("url").to_pylist()) == {"https://x/"}
    assert pf.quarantine == [(2, lines[2], UNCLOSED_QUOTE)]


def test_an_unclosed_quote_across_the_readers_block_boundary_is_no_crash(tmp_path, monkeypatch):
    """Past one reader block (64 MiB), the reader gives up out of sync instead of running on."""
    import churn_assets.defs.bronze.parse as parse

    monkeypatch.setattr(parse, "CSV_BLOCK_BYTES", 1024)
    lines = [EVENTS_HEADER, *(event_line(i) for i in range(40))]
    lines[20] = event_line(19, '"https://x/?q=shoes')
    data = ("\r\n".join(lines) + "\r\n").encode()
    pf = parse_events(tmp_path, "big.csv", data)
    assert pf.lines.num_rows + len(pf.quarantine) == pf.records == landed_lines(data) == 40
    assert [(no, reason) for no, _, reason in pf.quarantine] == [(20, parse.UNCLOSED_QUOTE)]


def test_columns_named_like_the_lineage_are_the_files_own(tmp_path):
    pf = parse_events(
        tmp_path, "x.csv", f"{EVENTS_HEADER},row_no,file_id,Source_File\n{event_line(1)},7,8,9\n".encode()
    )
    assert (pf.status, pf.records) == ("loaded", 1)
    assert pf.lines.select(["row_no", "file_id", "Source_File"]).to_pylist() == [
        {"row_no": "7", "file_id": "8", "Source_File": "9"}
    ]


def ingest_events(tmp_path, files: dict[str, bytes]):
    """Land ``files`` in events/ and ingest them in one batch into a real DuckDB warehouse."""
    from churn_assets.defs.bronze.ingest import ingest_source
    from churn_assets.warehouse import ensure_schema

    folder = tmp_path / "landing" / "events"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ensure_schema(con)
    result = ingest_source(con, tmp_path / "landing", "events", "run-1", settle_seconds=0, batch_bytes=1 << 30)
    return con, result


def accounted(con, name: str) -> tuple:
    """(manifest status, records, rows loaded, rows quarantined), checked against the tables."""
    path = f"events/{name}"
    status, records, loaded, quarantined = con.execute(
        "SELECT status, records, rows_loaded, rows_quarantined FROM bronze.ingest_manifest WHERE path = ?", [path]
    ).fetchone()
    in_bronze = con.execute("SELECT count(*) FROM bronze.churn_app_events WHERE _source_file = ?", [path]).fetchone()
    in_quarantine = con.execute("SELECT count(*) FROM bronze.quarantine WHERE source_file = ?", [path]).fetchone()
    assert (in_bronze[0], in_quarantine[0]) == (loaded, quarantined)
    return status, records, loaded, quarantined


CLEAN = ("\n".join([EVENTS_HEADER, event_line(50), event_line(51)]) + "\n").encode()


@pytest.mark.parametrize(
    "name, data, expected",
    [
        (
            "mac.csv",
            "\r".join([EVENTS_HEADER, *(event_line(i) for i in range(3))]).encode() + b"\r",
            ("loaded", 3, 3, 0),
        ),
        (
            "unclosed.csv",
            "\n".join([EVENTS_HEADER, event_line(0), event_line(1, '"https://x/'), event_line(2)]).encode() + b"\n",
            ("loaded", 3, 2, 1),
        ),
        (
            "lineage_names.csv",
            f"{EVENTS_HEADER},row_no,FILE_ID,source_file\n{event_line(0)},1,2,3\n{event_line(1)},,,\n".encode(),
            ("loaded", 2, 2, 0),
        ),
    ],
    ids=["cr-only", "unclosed-quote", "lineage-column-names"],
)
def test_awkward_csv_is_ingested_whole_beside_the_rest_of_its_batch(tmp_path, name, data, expected):
    """Every landed line is a bronze row or a quarantine record, as the manifest counts them,
    and the other file of the batch loads."""
    con, result = ingest_events(tmp_path, {name: data, "z_clean.csv": CLEAN})
    assert accounted(con, name) == expected
    assert expected[2] + expected[3] == landed_lines(data)
    assert accounted(con, "z_clean.csv") == ("loaded", 2, 2, 0)
    assert result.records == result.rows_loaded + result.rows_quarantined == landed_lines(data) + 2
    if name == "lineage_names.csv":  # the file's own columns are rescued, under their own names
        rescued = con.execute(
            "SELECT _row_no, _file_id, _rescued_data FROM bronze.churn_app_events "
            "WHERE _source_file = 'events/lineage_names.csv' ORDER BY _row_no"
        ).fetchall()
        assert [(r[0], r[1]) for r in rescued] == [(1, 1), (2, 1)]
        assert json.loads(rescued[0][2]) | {} == {
            **dict(zip(SPECS["events"].column_names, event_line(0).split(","))),
            "row_no": "1",
            "FILE_ID": "2",
            "source_file": "3",
        }
        assert rescued[1][2] is None  # its extra columns are empty: the record fits


@pytest.mark.parametrize("after", [b"", b"\n", b"\r\n\r\n"], ids=["no-newline", "newline", "empty-lines"])
def test_an_unclosed_quote_on_the_last_line_is_quarantined_too(tmp_path, after):
    """Read alone (the file as landed so far), the last line's quote swallows no line: it is
    quarantined all the same, as a fresh load of the file with lines after it would."""
    from churn_assets.defs.bronze.parse import UNCLOSED_QUOTE

    lines = [EVENTS_HEADER, event_line(0), event_line(1, '"https://x/')]
    pf = parse_events(tmp_path, "last.csv", "\n".join(lines).encode() + after)
    assert pf.lines.column("user_id").to_pylist() == ["u-0"]
    assert pf.quarantine == [(2, lines[2], UNCLOSED_QUOTE)]
    assert pf.records == 2


ORDERS_GOOD = [write(pairs(id=f"o-{i}"), compact=True) for i in range(6)]


def orders_batch(
    tmp_path, files: dict[str, list[str]], *, always_careful: bool, monkeypatch, batch_bytes: int = 1 << 30
) -> tuple[list, list[bool]]:
    """Ingest ``files`` (orders JSON lines) in one batch; (bronze rows, quarantine, manifest as
    the tables hold them, without run ids and clocks; how many transactions were tried)."""
    from churn_assets.defs.bronze import load
    from churn_assets.defs.bronze.ingest import ingest_source
    from churn_assets.warehouse import ensure_schema

    folder = tmp_path / "landing" / "orders"
    folder.mkdir(parents=True)
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    tries = []
    write_batch = load._write_batch

    def spy(*args, careful, **kwargs):
        tries.append(careful)
        return write_batch(*args, careful=careful or always_careful, **kwargs)

    monkeypatch.setattr(load, "_write_batch", spy)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ensure_schema(con)
    ingest_source(con, tmp_path / "landing", "orders", "run-1", settle_seconds=0, batch_bytes=batch_bytes)
    tables = [
        con.execute(f"SELECT * EXCLUDE ({clock}) FROM bronze.{table} ORDER BY ALL").fetchall()
        for table, clock in (
            ("churn_orders_bronze", "_ingested_at"),
            ("quarantine", "run_id, quarantined_at"),
            ("ingest_manifest", "run_id, ingested_at, mtime"),
        )
    ]
    return tables, tries


@pytest.mark.parametrize(
    "bad",
    [["{not json", "[1]"], ["[1]", '"text"']],
    ids=["malformed-and-not-an-object", "not-an-object-only"],
)
def test_a_batch_the_quick_query_cannot_take_is_written_again_carefully(tmp_path, monkeypatch, bad):
    """A malformed line (or one that is not an object) in a batch's second file: the quick
    transaction is rolled back and the batch read and written again, with the careful query
    throughout; the tables then hold what a careful load alone writes, every line accounted."""
    files = {"a.json": ORDERS_GOOD[:2], "b.json": [ORDERS_GOOD[2], *bad, ORDERS_GOOD[3]], "c.json": ORDERS_GOOD[4:]}
    (rows, quarantine, manifest), tries = orders_batch(
        tmp_path / "q", files, always_careful=False, monkeypatch=monkeypatch
    )
    assert tries == [False, True]
    expected, _ = orders_batch(tmp_path / "c", files, always_careful=True, monkeypatch=monkeypatch)
    assert [rows, quarantine, manifest] == expected
    assert [r[1] for r in rows] == [f"o-{i}" for i in range(6)]
    reasons = {
        "{not json": "malformed JSON",
        "[1]": "JSON value is not an object",
        '"text"': "JSON value is not an object",
    }
    assert [(q[2], q[3], q[5]) for q in quarantine] == [
        ("orders/b.json", 2 + i, reasons[line]) for i, line in enumerate(bad)
    ]
    clean, tries = orders_batch(
        tmp_path / "clean", {"a.json": ORDERS_GOOD}, always_careful=False, monkeypatch=monkeypatch
    )
    assert tries == [False] and len(clean[0]) == 6  # a clean batch: one transaction, the quick query


def test_after_a_careful_batch_the_pass_stays_careful_and_every_batch_lands_once(tmp_path, monkeypatch):
    """One file a batch: the second batch's quick try fails while the third is parsed ahead; the
    batches after it are written carefully at once, and the tables are a careful load's."""
    files = {f"{n}.json": ORDERS_GOOD[i : i + 2] for n, i in zip("abcd", (0, 2, 4, 0), strict=True)}
    files["b.json"] = [*files["b.json"], "{not json"]
    files["d.json"] = [write(pairs(id=f"o-d{i}"), compact=True) for i in range(2)]
    tables, tries = orders_batch(tmp_path / "q", files, always_careful=False, monkeypatch=monkeypatch, batch_bytes=1)
    assert tries == [False, False, True, True, True]
    expected, _ = orders_batch(tmp_path / "c", files, always_careful=True, monkeypatch=monkeypatch, batch_bytes=1)
    assert tables == expected
    assert len(tables[0]) == 8 and len(tables[1]) == 1 and len(tables[2]) == 4


def test_an_error_raised_beside_a_refused_line_does_not_carry_the_line(tmp_path, monkeypatch):
    """DuckDB's message for a line it refuses quotes the line; when a later file's read fails in
    the same INSERT, the error the step reports must not carry that message, in its text or its
    chain. DuckDB's refusal is simulated once the stream is drained: which comes first is a race."""
    import traceback

    from churn_assets.defs.bronze import load
    from churn_assets.defs.bronze.ingest import ingest_source
    from churn_assets.warehouse import ensure_schema

    folder = tmp_path / "landing" / "orders"
    folder.mkdir(parents=True)
    for name in ("a.json", "b.json"):
        (folder / name).write_text("\n".join(ORDERS_GOOD) + "\n")
    parse = load.parse_file

    def failing(spec, landed, state):
        if landed.relpath.endswith("b.json"):
            raise PermissionError(f"cannot read {landed.relpath}")
        return parse(spec, landed, state)

    def refusing(con, spec, rows_sql, now):
        view = re.search(r"FROM (_landing_\w+)", rows_sql).group(1)
        con.execute(f"SELECT count(*) FROM {view}").fetchall()  # pulls b.json: its read fails
        raise duckdb.InvalidInputException('Malformed JSON. Input: "{\\"email\\": \\"jane.doe@example.com\\""')

    monkeypatch.setattr(load, "parse_file", failing)
    monkeypatch.setattr(load, "_insert", refusing)
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ensure_schema(con)
    with pytest.raises(PermissionError) as raised:
        ingest_source(con, tmp_path / "landing", "orders", "run-1", settle_seconds=0, batch_bytes=1 << 30)
    shown = "".join(traceback.format_exception(raised.value))
    assert "orders/b.json" in shown and "jane.doe" not in shown


def test_a_parse_error_fails_the_batch_with_its_own_error_and_writes_nothing(tmp_path, monkeypatch):
    """Files are parsed while DuckDB inserts the rows of the ones before: an error raised by a
    later file's read is the step's error, as it is, and the batch's transaction rolls back."""
    from churn_assets.defs.bronze import load

    parse = load.parse_file

    def failing(spec, landed, state):
        if landed.relpath.endswith("b.csv"):
            raise PermissionError(f"cannot read {landed.relpath}")
        return parse(spec, landed, state)

    monkeypatch.setattr(load, "parse_file", failing)
    with pytest.raises(PermissionError, match="events/b.csv"):
        ingest_events(tmp_path, {"a.csv": CLEAN, "b.csv": CLEAN, "c.csv": CLEAN})
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    assert con.execute(
        "SELECT (SELECT count(*) FROM bronze.churn_app_events), (SELECT count(*) FROM bronze.ingest_manifest)"
    ).fetchall() == [(0, 0)]


def test_a_line_longer_than_the_limit_is_never_missed_by_the_window_test():
    """Bronze looks for over-long lines only where a window of half the limit holds no line
    break: a line just over the limit, wherever it starts, leaves such a window."""
    from churn_assets.defs.bronze.parse import MAX_RECORD_BYTES, _may_hold_long_line

    short = (b"x" * 99 + b"\n") * (3 * MAX_RECORD_BYTES // 100)
    assert not _may_hold_long_line(short)
    long_line = b"y" * (MAX_RECORD_BYTES + 1)
    half = MAX_RECORD_BYTES // 2
    for at in (0, 1, 99, half - 1, half, half + 1, MAX_RECORD_BYTES - 3, len(short) - 100):
        at -= at % 100  # at a line start
        assert _may_hold_long_line(short[:at] + long_line + b"\n" + short[at:]), at
        assert _may_hold_long_line(short[:at] + long_line), at  # the last line, unfinished
