"""Which JSON lines fit the landing schema: bronze's SQL against a plain Python statement of the
contract, line by line, for every kind of misfit, each written compactly (as the generator and
Spark write: the SQL's one-parse path) and with spaces (the key-by-key path)."""

from __future__ import annotations

import json
import re

import duckdb
import pyarrow as pa
import pytest

from churn_assets.defs.bronze.parse import _parse_json_lines
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


def bronze_rows(lines: list[str]) -> tuple[dict[int, tuple], list[tuple]]:
    """(row_no -> (typed values, _rescued_data), quarantine rows) from the project's parse and SQL."""
    pf = _parse_json_lines(None, "", ("\n".join(lines) + "\n").encode(), 1)
    n = pf.lines.num_rows
    view = pf.lines.append_column("file_id", pa.array([1] * n, pa.int64())).append_column(
        "source_file", pa.array(["orders/t.json"] * n)
    )
    con = duckdb.connect()
    con.register("lines", view)
    rows_sql, bad_sql = json_select_sql(SPEC, "lines")
    cols = ", ".join(f'"{c}"' for c in SPEC.column_names)
    rows = {
        r[0]: (dict(zip(SPEC.column_names, r[1:-1])), r[-1])
        for r in con.execute(f"SELECT row_no, {cols}, _rescued_data FROM ({rows_sql})").fetchall()
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
        got = con.execute("SELECT raw, row_no FROM lines").fetchall()
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
    assert pf.lines.column("row_no").to_pylist() == [1, 4, 7]
    assert pf.lines.column("user_id").to_pylist() == ["u1", "u2", "u3"]
    assert [(no, reason) for no, _, reason in pf.quarantine] == [(5, "expected 7 columns, found 2")]
    assert pf.records == 4
