"""`opcua-connector demo` end to end, checked by independent readers (pyarrow and DuckDB).

The demo is run once per module (`demo --duration 30s --out <tmp>`, cwd = repo root so that
`configs/demo.toml` is found). Every check reads what landed on disk; the simulator's ground
truth is `<out>/_simulator_stats.json`, written by the demo after the connector has stopped.

The connector binary is `$OPCUA_CONNECTOR_BIN` (default `<repo>/target/debug/opcua-connector`).
Nothing sleeps a fixed time: the only wait is the demo process itself, under a deadline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from interop_helpers import REPO_ROOT, VALUE_COLUMNS, DICTIONARY_COLUMNS

DEMO_DURATION_S = 30
# The demo runs DEMO_DURATION_S, then drains (the connector's stop is bounded at 10 s) and
# stops the simulator; anything far beyond that is a hang.
DEMO_DEADLINE_S = DEMO_DURATION_S + 90

LINE_ID = "bottling-demo"
SITE_ID = "demo-plant"
PLC_ID = "line1"
NS = "nsu=urn:opcua-connector:bottling-line;s="
COUNTERS = [
    f"{NS}Filler.BottlesFilled",
    f"{NS}Filler.BottlesRejected",
    f"{NS}Capper.CapsApplied",
    f"{NS}Labeler.LabelsApplied",
    f"{NS}Conveyor.ItemsTransported",
]
# Ground truth vs. files: before it stops the connector, the demo freezes the simulator's
# values and waits until the last notifications have landed, so the files must end exactly at
# the simulator's `last` for every counter; anything less is a sample lost at shutdown.
MAX_BEHIND_TRUTH = 0

TS_UTC_US = "timestamp[us, UTC]"
# Spec "Parquet chunks (schema version 3)", in column order.
EXPECTED_COLUMNS: list[tuple[str, str]] = [
    ("time", TS_UTC_US),
    ("server_time", TS_UTC_US),
    ("plc", "dict"),
    ("group", "dict"),
    ("node", "dict"),
    ("name", "dict"),
    ("type", "dict"),
    ("status", "uint32"),
    ("value_double", "double"),
    ("value_int", "int64"),
    ("value_uint", "uint64"),
    ("value_bool", "bool"),
    ("value_string", "string"),
    ("value_time", TS_UTC_US),
    ("value_bytes", "binary"),
    ("value_json", "string"),
    ("origin", "dict"),
]
# Which value column a scalar of each built-in type lands in (spec table); arrays -> value_json.
TYPE_COLUMN = {
    **{t: "value_double" for t in ("Float", "Double")},
    **{t: "value_int" for t in ("SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64")},
    "UInt64": "value_uint",
    "Boolean": "value_bool",
    **{t: "value_string" for t in ("String", "LocalizedText", "QualifiedName", "NodeId", "Guid")},
    "DateTime": "value_time",
    "ByteString": "value_bytes",
}

# Footer keys for "schema version, line, site, connector version" (spec), as the connector names
# them; docs/parquet.md is expected to document these (and whatever else it lists is checked too).
REQUIRED_FOOTER_KEYS = {
    "opcua_connector.schema_version": "3",
    "opcua_connector.line": LINE_ID,
    "opcua_connector.site": SITE_ID,
    "opcua_connector.connector_version": None,  # compared with `opcua-connector --version`
}
PARTITION_DIR = re.compile(r"^line=(?P<line>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})$")


def connector_binary() -> Path:
    return Path(os.environ.get("OPCUA_CONNECTOR_BIN", REPO_ROOT / "target" / "debug" / "opcua-connector"))


def require_binary() -> Path:
    binary = connector_binary()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"connector binary {binary} is missing; build it (cargo build -p connector) "
            "or set OPCUA_CONNECTOR_BIN"
        )
    return binary


@dataclass
class DemoRun:
    out: Path
    returncode: int
    stdout: str
    stderr: str
    chunks: list[Path]
    tables: dict[Path, pa.Table]

    def diag(self) -> str:
        return f"stdout:\n{self.stdout}\nstderr (tail):\n{self.stderr[-4000:]}"

    @property
    def glob(self) -> str:
        return f"{self.out}/**/*.parquet"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    binary = require_binary()
    out = tmp_path_factory.mktemp("demo") / "out"
    args = [str(binary), "demo", "--duration", f"{DEMO_DURATION_S}s", "--out", str(out)]
    try:
        proc = subprocess.run(
            args,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=DEMO_DEADLINE_S,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(
            f"`{' '.join(args)}` did not finish within {DEMO_DEADLINE_S} s\n"
            f"stderr (tail):\n{(exc.stderr or b'').decode('utf-8', 'replace')[-4000:]}"
        )
    chunks = sorted(out.rglob("*.parquet"))
    run = DemoRun(
        out=out,
        returncode=proc.returncode,
        stdout=proc.stdout.decode("utf-8", "replace"),
        stderr=proc.stderr.decode("utf-8", "replace"),
        chunks=chunks,
        tables={f: pq.read_table(f) for f in chunks},
    )
    print(f"demo: exit {run.returncode}, {len(chunks)} chunk(s) under {out}")
    return run


@pytest.fixture(scope="module")
def truth(demo: DemoRun) -> dict[str, Any]:
    path = demo.out / "_simulator_stats.json"
    assert path.is_file(), f"the demo wrote no ground truth {path}\n{demo.diag()}"
    stats = json.loads(path.read_text())
    assert isinstance(stats.get("nodes"), dict), f"{path} has no 'nodes' object: {sorted(stats)}"
    return stats["nodes"]


def all_rows(demo: DemoRun) -> pa.Table:
    assert demo.chunks, f"the demo wrote no *.parquet chunk under {demo.out}\n{demo.diag()}"
    return pa.concat_tables(
        [t.cast(demo.tables[demo.chunks[0]].schema) for t in demo.tables.values()]
    ).combine_chunks()


# --------------------------------------------------------------------------------------------
# The process
# --------------------------------------------------------------------------------------------


def test_demo_exits_zero_with_summary_on_stdout(demo: DemoRun) -> None:
    assert demo.returncode == 0, f"demo exited {demo.returncode}\n{demo.diag()}"
    assert demo.stdout.strip(), f"demo printed no summary on stdout\n{demo.diag()}"
    assert str(demo.out) in demo.stdout, f"the summary does not name the output dir\n{demo.diag()}"
    assert demo.stderr.strip(), "demo printed no progress on stderr"


def test_demo_progress_is_plain_lines_when_not_on_a_terminal(demo: DemoRun) -> None:
    # stderr is a pipe here, as under systemd or in CI: no redrawn line, no colour codes.
    assert "\r" not in demo.stderr, f"carriage returns in a non-terminal log\n{demo.diag()}"
    assert "\x1b[" not in demo.stderr, f"ANSI codes in a non-terminal log\n{demo.diag()}"
    progress = [l for l in demo.stderr.splitlines() if l.startswith("demo: ") and "samples/s" in l]
    assert len(progress) >= 2, f"a progress line every 10 s\n{demo.diag()}"


def test_chunks_are_hive_partitioned_and_complete(demo: DemoRun) -> None:
    assert demo.chunks, f"no *.parquet chunk under {demo.out}\n{demo.diag()}"
    for f in demo.chunks:
        rel = f.parent.relative_to(demo.out).as_posix()
        m = PARTITION_DIR.match(rel)
        assert m, f"{f}: not under line=<id>/date=YYYY-MM-DD/ (got {rel!r})"
        assert m["line"] == LINE_ID, f"{f}: partition line={m['line']}, expected {LINE_ID}"
        date.fromisoformat(m["date"])  # a real calendar date
        assert demo.tables[f].num_rows > 0, f"{f} has no rows"
    # After a clean exit every chunk is finished: no temporary file is left behind.
    leftovers = [p for p in demo.out.rglob("*") if p.is_file() and ".parquet" in p.name and p.suffix != ".parquet"]
    assert not leftovers, f"temporary chunk files left after a clean exit: {leftovers}"


# --------------------------------------------------------------------------------------------
# pyarrow: every chunk on its own
# --------------------------------------------------------------------------------------------


def describe(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return "dict" if pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type) else f"dict<{t}>"
    if pa.types.is_timestamp(t):
        tz = "UTC" if t.tz in ("UTC", "+00:00", "Etc/UTC") else t.tz
        return f"timestamp[{t.unit}, {tz}]"
    return str(t)


def test_every_chunk_has_the_v1_schema(demo: DemoRun) -> None:
    assert demo.chunks, f"no *.parquet chunk under {demo.out}\n{demo.diag()}"
    problems = []
    for f, table in demo.tables.items():
        got = [(field.name, describe(field.type)) for field in table.schema]
        if got != EXPECTED_COLUMNS:
            problems.append(f"{f.name}: columns {got}\n  expected {EXPECTED_COLUMNS}")
        # Dictionary encoding must be physical too (DuckDB/Spark ignore the ARROW:schema hint).
        md = pq.read_metadata(f)
        names = [md.schema.column(i).name for i in range(md.num_columns)]
        for rg in range(md.num_row_groups):
            for col in (*DICTIONARY_COLUMNS, "origin"):
                encodings = md.row_group(rg).column(names.index(col)).encodings
                if not any("DICTIONARY" in e for e in encodings):
                    problems.append(f"{f.name}: row group {rg} column {col} not dictionary-encoded: {encodings}")
    assert not problems, "\n".join(problems)


def test_exactly_one_value_column_per_row(demo: DemoRun) -> None:
    table = all_rows(demo)
    types = table.column("type").cast(pa.string()).to_pylist()
    columns = {c: table.column(c).is_valid().to_pylist() for c in VALUE_COLUMNS}
    problems: list[str] = []
    counts: dict[tuple[str, str], int] = {}
    for i, ty in enumerate(types):
        set_columns = [c for c in VALUE_COLUMNS if columns[c][i]]
        key = (ty, ",".join(set_columns) or "<none>")
        counts[key] = counts.get(key, 0) + 1
        if len(set_columns) > 1:
            problems.append(f"row {i} ({ty}): {len(set_columns)} value columns set: {set_columns}")
        elif not set_columns:
            # A null value (e.g. Bad without value): no column, and no value type either.
            if ty in TYPE_COLUMN or ty.startswith("Array<"):
                problems.append(f"row {i}: type {ty} but no value column set")
        else:
            expected = "value_json" if ty.startswith("Array<") else TYPE_COLUMN.get(ty, "value_json")
            if set_columns[0] != expected:
                problems.append(f"row {i}: type {ty} landed in {set_columns[0]}, spec says {expected}")
    print("type -> value column (rows):", dict(sorted(counts.items())))
    assert not problems, f"{len(problems)} bad rows, first 20:\n" + "\n".join(problems[:20])
    values = set(table.column("plc").cast(pa.string()).to_pylist())
    assert values == {PLC_ID}, f"column plc holds {values}"
    # Schema v2: the line id is the partition key `line=` (checked with the paths), no column.
    assert "line" not in table.schema.names
    assert table.column("time").null_count == 0, "time is never null"


# --------------------------------------------------------------------------------------------
# DuckDB: the whole set through the Hive partitions
# --------------------------------------------------------------------------------------------


def test_duckdb_reads_the_whole_set_with_hive_partitions(demo: DemoRun) -> None:
    pyarrow_rows = sum(t.num_rows for t in demo.tables.values())
    assert pyarrow_rows > 0, f"no rows\n{demo.diag()}"
    con = duckdb.connect()
    src = f"read_parquet('{demo.glob}', hive_partitioning=true)"
    columns = [r[0] for r in con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()]
    assert "line" in columns and "date" in columns, f"DuckDB sees columns {columns}"
    (count,) = con.sql(f"SELECT count(*) FROM {src}").fetchall()[0]
    assert count == pyarrow_rows, f"DuckDB counts {count} rows, pyarrow {pyarrow_rows}"
    (demo_rows,) = con.sql(f"SELECT count(*) FROM {src} WHERE line = '{LINE_ID}'").fetchall()[0]
    assert demo_rows == count, f"only {demo_rows} of {count} rows have line='{LINE_ID}'"
    dates = [str(d) for (d,) in con.sql(f'SELECT DISTINCT "date" FROM {src} ORDER BY 1').fetchall()]
    assert dates, "no date partition values"
    for d in dates:
        date.fromisoformat(d)
    print(f"DuckDB: {count} rows, dates {dates}")


# --------------------------------------------------------------------------------------------
# Counters against the simulator's ground truth
# --------------------------------------------------------------------------------------------


def test_counters_step_by_one_in_duckdb(demo: DemoRun) -> None:
    con = duckdb.connect()
    rows = con.sql(
        f"""
        WITH s AS (
            SELECT node, time, status,
                   coalesce(value_int::HUGEINT, value_uint::HUGEINT) AS v
            FROM read_parquet('{demo.glob}', hive_partitioning=true)
            WHERE "group" = 'fast' AND node IN ({", ".join(f"'{n}'" for n in COUNTERS)})
        ), d AS (
            SELECT node, time, status, v, v - lag(v) OVER (PARTITION BY node ORDER BY time) AS step
            FROM s
        )
        SELECT node, count(*), min(v), max(v),
               count(*) FILTER (WHERE v IS NULL OR status <> 0),
               count(*) FILTER (WHERE step IS NOT NULL AND step <> 1),
               list(struct_pack(time := time, v := v, step := step) ORDER BY time)
                   FILTER (WHERE step IS NOT NULL AND step <> 1)
        FROM d GROUP BY node ORDER BY node
        """
    ).fetchall()
    by_node = {r[0]: r for r in rows}
    problems = []
    for node in COUNTERS:
        if node not in by_node:
            problems.append(f"{node}: no rows in group 'fast'")
            continue
        _, n, lo, hi, bad_values, bad_steps, examples = by_node[node]
        print(f"{node}: {n} rows, {lo}..{hi}")
        if bad_values:
            problems.append(f"{node}: {bad_values} rows without a Good integer value")
        if bad_steps:
            problems.append(f"{node}: {bad_steps} steps != +1, first: {examples[:5]}")
        if n >= 2 and hi - lo + 1 != n:
            problems.append(f"{node}: {n} rows span {lo}..{hi} ({hi - lo + 1} values)")
    assert not problems, "\n".join(problems)


def counter_series(demo: DemoRun) -> dict[str, list[tuple[Any, int]]]:
    """(time, value) per counter node, group 'fast', sorted by time; computed in Python only."""
    series: dict[str, list[tuple[Any, int]]] = {n: [] for n in COUNTERS}
    for table in demo.tables.values():
        cols = {c: table.column(c).to_pylist() for c in ("time", "group", "node", "status", "value_int", "value_uint")}
        for i in range(table.num_rows):
            node = cols["node"][i]
            if cols["group"][i] != "fast" or node not in series:
                continue
            assert cols["status"][i] == 0, f"{node} at {cols['time'][i]}: status 0x{cols['status'][i]:08X}"
            ints = [v for v in (cols["value_int"][i], cols["value_uint"][i]) if v is not None]
            assert len(ints) == 1, f"{node} at {cols['time'][i]}: integer columns {ints}"
            series[node].append((cols["time"][i], ints[0]))
    for values in series.values():
        values.sort(key=lambda tv: tv[0])
    return series


def test_counters_step_by_one_in_python(demo: DemoRun) -> None:
    problems = []
    for node, values in counter_series(demo).items():
        if len(values) < 2:
            problems.append(f"{node}: only {len(values)} rows in group 'fast'")
            continue
        for (t0, v0), (t1, v1) in zip(values, values[1:]):
            if v1 - v0 != 1:
                problems.append(f"{node}: {v0} at {t0} then {v1} at {t1} (step {v1 - v0})")
    assert not problems, f"{len(problems)} bad steps, first 20:\n" + "\n".join(problems[:20])


def test_counters_end_at_the_simulator_ground_truth(demo: DemoRun, truth: dict[str, Any]) -> None:
    problems = []
    for node, values in counter_series(demo).items():
        assert node in truth, f"ground truth has no {node}; it has {sorted(truth)[:10]}..."
        t = truth[node]
        if not values:
            problems.append(f"{node}: no rows")
            continue
        last = values[-1][1]
        print(f"{node}: files {values[0][1]}..{last} ({len(values)} rows); truth {t}")
        if not (t["last"] - MAX_BEHIND_TRUTH <= last <= t["last"]):
            problems.append(
                f"{node}: last value in files {last}, simulator's last {t['last']} "
                f"(allowed {MAX_BEHIND_TRUTH} behind, never ahead)"
            )
        if t.get("status", 0) != 0:
            problems.append(f"{node}: simulator reports status {t['status']}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------------------------
# Footer metadata
# --------------------------------------------------------------------------------------------


def documented_footer_keys() -> set[str]:
    doc = REPO_ROOT / "docs" / "parquet.md"
    if not doc.is_file():
        print(f"{doc} does not exist (yet); checking the spec's keys only")
        return set()
    return set(re.findall(r"opcua_connector\.[a-z_]+", doc.read_text()))


def test_footer_metadata(demo: DemoRun) -> None:
    assert demo.chunks, f"no *.parquet chunk under {demo.out}\n{demo.diag()}"
    version_out = subprocess.run(
        [str(require_binary()), "--version"], capture_output=True, text=True, timeout=30
    ).stdout.split()
    documented = documented_footer_keys()
    print(f"keys documented in docs/parquet.md: {sorted(documented)}")
    problems = []
    for f in demo.chunks:
        meta = {k.decode(): v.decode() for k, v in (pq.read_metadata(f).metadata or {}).items()}
        print(f"{f.name}: footer keys {sorted(meta)}")
        for key, want in REQUIRED_FOOTER_KEYS.items():
            if key not in meta:
                problems.append(f"{f.name}: no footer key {key}")
            elif key == "opcua_connector.connector_version":
                if not re.fullmatch(r"\d+\.\d+\.\d+\S*", meta[key]) or meta[key] not in version_out:
                    problems.append(f"{f.name}: {key}={meta[key]!r}, `--version` says {' '.join(version_out)!r}")
            elif meta[key] != want:
                problems.append(f"{f.name}: {key}={meta[key]!r}, expected {want!r}")
        for key in sorted(documented - meta.keys()):
            problems.append(f"{f.name}: docs/parquet.md documents footer key {key}, the file lacks it")
    assert not problems, "\n".join(problems)
