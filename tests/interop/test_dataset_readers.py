"""The Hive-partitioned data set, read as a data engineer reads it: pyarrow.dataset, DuckDB,
polars and Spark (pyspark, local mode) on one directory.

The data set is what a real connector run left on disk (`opcua-connector demo --duration 5s`:
line `bottling-demo`, today's UTC date, with the demo's other files beside the chunks:
`_simulator_stats.json`, `.pki/`, a lock file) plus the chunks of the Rust fixture writer
(line `line-a`: samples on both sides of a UTC midnight, which the sink splits into
`date=2026-11-26` and `date=2026-11-27`). Every reader must count every row, as many per
(line, date) as the files hold when read one by one, give the partition columns `line` and
`date` right, and find no row whose `time` (UTC) lies outside its `date=` partition.

Spark needs Java 17 or later (`java` on PATH, or JAVA_HOME); the session is started once for
the module, on one core, bound to 127.0.0.1. Nothing sleeps a fixed time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from interop_helpers import REPO_ROOT

DEMO_DURATION_S = 5
DEMO_DEADLINE_S = DEMO_DURATION_S + 90  # start, drain (the connector's stop is bounded at 10 s)
DEMO_LINE = "bottling-demo"
FIXTURE_LINE = "line-a"
FIXTURE_PARTITIONS = {(FIXTURE_LINE, date(2026, 11, 26)): 7, (FIXTURE_LINE, date(2026, 11, 27)): 6}
PARTITION_DIR = re.compile(r"^line=(?P<line>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})$")

Counts = dict[tuple[str, date], int]


def connector_binary() -> Path:
    binary = Path(os.environ.get("OPCUA_CONNECTOR_BIN", REPO_ROOT / "target" / "debug" / "opcua-connector"))
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"connector binary {binary} is missing; build it (cargo build -p connector) or set OPCUA_CONNECTOR_BIN")
    return binary


@dataclass
class DataSet:
    dir: Path
    files: list[Path]
    # Rows per (line, date) partition, from the paths and the files read one by one.
    expected: Counts

    @property
    def glob(self) -> str:
        return f"{self.dir}/**/*.parquet"

    @property
    def total(self) -> int:
        return sum(self.expected.values())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, rust_parquet_fixture: Path) -> DataSet:
    out = tmp_path_factory.mktemp("dataset") / "data"
    args = [str(connector_binary()), "demo", "--duration", f"{DEMO_DURATION_S}s", "--out", str(out)]
    try:
        proc = subprocess.run(args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, capture_output=True, timeout=DEMO_DEADLINE_S)
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode("utf-8", "replace")[-4000:]
        pytest.fail(f"`{' '.join(args)}` did not finish within {DEMO_DEADLINE_S} s\nstderr (tail):\n{stderr}")
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"demo exited {proc.returncode}\nstderr (tail):\n{stderr[-4000:]}"
    shutil.copytree(rust_parquet_fixture, out, dirs_exist_ok=True)

    files = sorted(out.rglob("*.parquet"))
    expected: Counts = {}
    for f in files:
        rel = f.parent.relative_to(out).as_posix()
        m = PARTITION_DIR.match(rel)
        assert m, f"{f}: not under line=<id>/date=YYYY-MM-DD/"
        key = (m["line"], date.fromisoformat(m["date"]))
        expected[key] = expected.get(key, 0) + pq.read_table(f).num_rows
    print(f"data set {out}: {len(files)} chunk(s), rows per partition {expected}")
    return DataSet(dir=out, files=files, expected=expected)


def test_the_data_set_holds_both_lines_and_the_midnight_split(dataset: DataSet) -> None:
    for key, rows in FIXTURE_PARTITIONS.items():
        assert dataset.expected.get(key) == rows, f"{key}: {dataset.expected}"
    demo = {k: n for k, n in dataset.expected.items() if k[0] == DEMO_LINE}
    assert demo and all(n > 0 for n in demo.values()), f"demo partitions: {dataset.expected}"
    # Files the readers must pass over: the demo's truth, its PKI, the sink's lock file.
    assert (dataset.dir / "_simulator_stats.json").is_file()
    assert (dataset.dir / ".pki").is_dir()


def assert_counts(reader: str, got: Counts, dataset: DataSet) -> None:
    assert got == dataset.expected, f"{reader}: rows per (line, date)\n got {got}\nwant {dataset.expected}"
    assert sum(got.values()) == dataset.total


def test_pyarrow_dataset_hive(dataset: DataSet) -> None:
    d = ds.dataset(dataset.dir, format="parquet", partitioning="hive")
    assert d.schema.field("line").type == pa.string()
    assert d.schema.field("date").type == pa.string()  # inferred as text; see the typed read below
    assert d.count_rows() == dataset.total
    table = d.to_table(columns=["line", "date", "time"])
    counts = table.group_by(["line", "date"]).aggregate([([], "count_all")]).to_pylist()
    got = {(r["line"], date.fromisoformat(r["date"])): r["count_all"] for r in counts}
    assert_counts("pyarrow.dataset", got, dataset)
    utc_day = pc.strftime(table.column("time"), format="%Y-%m-%d")
    assert pc.sum(pc.not_equal(utc_day, table.column("date"))).as_py() == 0, "rows outside their date="

    typed = ds.partitioning(pa.schema([("line", pa.string()), ("date", pa.date32())]), flavor="hive")
    d = ds.dataset(dataset.dir, format="parquet", partitioning=typed)
    for (line, day), rows in dataset.expected.items():
        part = d.to_table(columns=["time"], filter=(ds.field("line") == line) & (ds.field("date") == day))
        assert part.num_rows == rows, (line, day)


def test_duckdb_hive(dataset: DataSet) -> None:
    con = duckdb.connect()
    source = f"read_parquet('{dataset.glob}', hive_partitioning = true)"
    rows = con.sql(
        f"""SELECT line, date, typeof(line), typeof(date), count(*),
                   count(*) FILTER (WHERE CAST(timezone('UTC', time) AS DATE) <> date)
            FROM {source} GROUP BY ALL"""
    ).fetchall()
    assert {(r[2], r[3]) for r in rows} == {("VARCHAR", "DATE")}
    assert [r for r in rows if r[5] != 0] == [], "rows outside their date="
    assert_counts("DuckDB", {(r[0], r[1]): r[4] for r in rows}, dataset)
    day = date(2026, 11, 27)
    on_day = con.execute(f"SELECT count(*) FROM {source} WHERE date = ?", [day]).fetchall()
    assert on_day == [(FIXTURE_PARTITIONS[(FIXTURE_LINE, day)],)]


def test_polars_hive(dataset: DataSet) -> None:
    lf = pl.scan_parquet(dataset.glob, hive_partitioning=True)
    schema = lf.collect_schema()
    assert schema["line"] == pl.String
    assert schema["date"] == pl.Date
    counts = (
        lf.group_by("line", "date")
        .agg(pl.len().alias("rows"), (pl.col("time").dt.date() != pl.col("date")).sum().alias("outside"))
        .collect()
    )
    assert counts["outside"].sum() == 0, "rows outside their date="
    got = {(r["line"], r["date"]): r["rows"] for r in counts.iter_rows(named=True)}
    assert_counts("polars", got, dataset)
    assert lf.select(pl.len()).collect().item() == dataset.total


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        pytest.fail("Spark needs Java 17 or later: no `java` on PATH and no JAVA_HOME (Debian: openjdk-17-jre-headless)")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("opcua-connector interop")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        # A short-lived JVM on 2 cores: C1 only and the serial GC start and warm up faster
        # (the module's Spark time 17-21 s -> about 12 s).
        .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.local.dir", str(tmp_path_factory.mktemp("spark-local")))
        .config("spark.sql.warehouse.dir", str(tmp_path_factory.mktemp("spark-warehouse")))
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def test_spark_hive(spark, dataset: DataSet) -> None:
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    df = spark.read.parquet(str(dataset.dir))
    assert isinstance(df.schema["line"].dataType, T.StringType)
    assert isinstance(df.schema["date"].dataType, T.DateType)
    assert isinstance(df.schema["time"].dataType, T.TimestampType)
    rows = (
        df.groupBy("line", "date")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum((F.to_date("time") != F.col("date")).cast("int")).alias("outside"),
        )
        .collect()
    )
    assert [r for r in rows if r["outside"] != 0] == [], "rows outside their date= (session time zone UTC)"
    assert_counts("Spark", {(r["line"], r["date"]): r["rows"] for r in rows}, dataset)
