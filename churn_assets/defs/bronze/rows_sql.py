"""SQL fitting parsed lines to the landing schema: typed bronze rows, ``_rescued_data`` for a
record that parses but does not fit, quarantine for a JSON line that is no object."""

from __future__ import annotations

from churn_assets.defs.bronze.parse import FILE_ID, ROW_NO, SOURCE_FILE
from churn_assets.landing import TIMESTAMP_REGEX, SourceSpec

# Valid JSON whose first character is "{" is an object; json_valid is the one full parse.
OPENS_OBJECT = "ltrim(raw)[1] = '{'"
IS_OBJECT = f"CASE WHEN json_valid(raw) THEN {OPENS_OBJECT} ELSE false END"
# A line that is its parsed struct written back fits by construction (json_select_sql). Compared
# as text: against JSON, DuckDB would cast (parse) every landed line once more.
CANONICAL = "to_json(s)::VARCHAR = raw"
# Accepted JSON types per declared column type (json_type names); NULL always fits.
JSON_FITS = {
    "VARCHAR": ("VARCHAR",),
    "DOUBLE": ("DOUBLE", "BIGINT", "UBIGINT"),
    "BOOLEAN": ("BOOLEAN",),
}


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# The lineage columns of a view of parsed lines, in the bronze tables' order (_source_file,
# _file_id, _row_no): the rows queries end with them, so their columns are the table's.
LINEAGE = f"{_q(SOURCE_FILE)}, {_q(FILE_ID)}, {_q(ROW_NO)}"


def json_select_sql(spec: SourceSpec, view: str, *, careful: bool = True) -> tuple[str, str]:
    """SQL turning a (raw, lineage) view of JSON lines into bronze rows, and into quarantine.

    ``careful=False`` leaves out json_valid, a full parse of every line: it takes the lines
    that open with "{" as objects, and from_json then raises on one that is not valid JSON
    (the same parser and flags as json_valid). The caller inserts that way first and, when it
    raises or leaves a line out, writes the batch again carefully: the rows are the same.

    Each object line is parsed once into the schema's struct. A line that is exactly that
    struct written back (``to_json``: the schema's keys in order, compact, each value of its
    declared JSON type or null) fits by construction, so only the other lines (keys left
    out, another order, spaces, an integer in a DOUBLE field, extra keys...) pay the two
    more parses that decide fit key by key. The timestamp format is checked on every line."""
    struct = "{" + ", ".join(f'"{c}": "{t}"' for c, t in spec.columns) + "}"
    paths = "[" + ", ".join(f"'$.\"{c}\"'" for c in spec.column_names) + "]"
    fits = []
    for i, (c, t) in enumerate(spec.columns, start=1):
        allowed = ", ".join(f"'{x}'" for x in JSON_FITS[t] + ("NULL",))
        cond = f"CASE WHEN canon THEN true ELSE t[{i}] IS NULL OR t[{i}] IN ({allowed}) END"
        if c in spec.timestamps:
            cond = f"({cond}) AND (s.{_q(c)} IS NULL OR regexp_full_match(s.{_q(c)}, '{TIMESTAMP_REGEX}'))"
        fits.append((c, cond))
    # No key outside the schema: as many keys as expected paths found (t and k are NULL on
    # a canonical line, whose t[i] IS NULL then holds for every column).
    all_fit = (
        " AND ".join(f"f_{i}" for i in range(len(fits)))
        + " AND (canon OR len(k) = len(list_filter(t, lambda x: x IS NOT NULL)))"
    )
    flags = ", ".join(f"{cond} AS f_{i}" for i, (_, cond) in enumerate(fits))
    parsed = f"""
        SELECT {LINEAGE}, raw, s, canon, t, k, {flags}
        FROM (
            SELECT {LINEAGE}, raw, s, canon,
                   CASE WHEN NOT canon THEN json_type(raw, {paths}) END AS t,
                   CASE WHEN NOT canon THEN json_keys(raw) END AS k
            FROM (
                SELECT {LINEAGE}, raw, s, {CANONICAL} AS canon
                FROM (SELECT {LINEAGE}, raw, from_json(raw, '{struct}') AS s
                      FROM {view} WHERE {IS_OBJECT if careful else OPENS_OBJECT})
            )
        )"""
    cols = ", ".join(f"CASE WHEN f_{i} THEN s.{_q(c)} END AS {_q(c)}" for i, (c, _) in enumerate(fits))
    rows = f"SELECT {cols}, CASE WHEN NOT ({all_fit}) THEN raw END AS _rescued_data, {LINEAGE} FROM ({parsed})"
    bad = f"""
        SELECT {_q(FILE_ID)}, {_q(SOURCE_FILE)}, {_q(ROW_NO)}, raw,
               CASE WHEN json_valid(raw) THEN 'JSON value is not an object' ELSE 'malformed JSON' END AS reason
        FROM {view}
        WHERE NOT ({IS_OBJECT})"""
    return rows, bad


def csv_select_sql(spec: SourceSpec, header: list[str], view: str) -> str:
    present = set(header)
    cols = []
    fit_conds = []
    for c, _ in spec.columns:
        if c not in present:
            cols.append(f"NULL AS {_q(c)}")
            fit_conds.append("false")  # a column the file lacks: every record is rescued
        elif c in spec.timestamps:
            ok = f"({_q(c)} IS NULL OR regexp_full_match({_q(c)}, '{TIMESTAMP_REGEX}'))"
            cols.append(f"CASE WHEN {ok} THEN {_q(c)} END AS {_q(c)}")
            fit_conds.append(ok)
        else:
            cols.append(_q(c))
    extras = [h for h in header if h not in set(spec.column_names)]
    fit_conds += [f"{_q(h)} IS NULL" for h in extras]
    fit = " AND ".join(fit_conds) if fit_conds else "true"
    record = "to_json(struct_pack(" + ", ".join(f"{_q(h)} := {_q(h)}" for h in header) + "))"
    return f"SELECT {', '.join(cols)}, CASE WHEN NOT ({fit}) THEN {record} END AS _rescued_data, {LINEAGE} FROM {view}"
