"""One landing contract (``churn_assets.landing``): the bronze tables, the parser and the generator
take their fields from it, and finding files costs a sensor none of the heavy libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import date, datetime

import duckdb

from churn_assets.generator import generate_history
from churn_assets.landing import SPECS, TIMESTAMP_REGEX
from churn_assets.timeutil import LANDING_TS_FORMAT
from churn_assets.warehouse import BRONZE_LINEAGE, ensure_schema
from churn_assets_tests.helpers import REPO

HEAVY = ("pyarrow", "duckdb", "polars", "numpy", "dagster", "pandas")


def test_finding_files_imports_no_heavy_library():
    code = f"import sys, churn_assets.landing; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sensors_find_files_through_the_landing_contract_only():
    tree = ast.parse((REPO / "churn_assets" / "defs" / "automation" / "triggers.py").read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert "churn_assets.landing" in imported
    assert not [m for m in imported if m.startswith("churn_assets.defs.bronze")]


def test_bronze_tables_have_the_contract_columns_then_the_lineage():
    con = duckdb.connect()
    ensure_schema(con)
    for spec in SPECS.values():
        columns = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'bronze' AND table_name = ? ORDER BY ordinal_position",
            [spec.table],
        ).fetchall()
        assert columns == [*spec.columns, *BRONZE_LINEAGE]


def test_the_timestamp_pattern_is_the_landing_format():
    con = duckdb.connect()
    written = datetime(2023, 6, 2, 6, 49, 21).strftime(LANDING_TS_FORMAT)
    assert written == "06-02-2023 06:49:21"
    for value, fits in (
        (written, True),
        ("2023-06-02 06:49:21", False),
        ("2023/06-02-2023 06:49:21", False),
        ("06-02-2023", False),
    ):
        assert con.execute("SELECT regexp_full_match(?, ?)", [value, TIMESTAMP_REGEX]).fetchall()[0][0] is fits


def test_the_generator_writes_the_contract_fields_in_order(tmp_path):
    report = generate_history(tmp_path, customers=300, seed=3, end=date(2026, 1, 1), progress=False)
    for source, spec in SPECS.items():
        files = report.files[source]
        assert files and all(f.endswith(spec.extension) for f in files)
        text = (tmp_path / "landing" / files[0]).read_text()
        if spec.fmt == "csv":
            assert text.splitlines()[0].split(",") == spec.column_names
            continue
        records = [json.loads(line) for line in text.splitlines()]
        widest = max(records, key=len)
        assert list(widest) == spec.column_names  # every field, in file order
        kinds = {"VARCHAR": str, "DOUBLE": float, "BOOLEAN": bool}
        for name, kind in spec.columns:
            assert {type(r[name]) for r in records if name in r} == {kinds[kind]}, (source, name)
        for name in spec.timestamps:
            assert all(datetime.strptime(r[name], LANDING_TS_FORMAT) for r in records if name in r)
