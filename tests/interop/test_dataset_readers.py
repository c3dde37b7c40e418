"""The Hive-partitioned data set, read as a data engineer reads it: pyarrow.dataset, DuckDB,
polars and Spark (pyspark, local mode) on one directory.

The data set is what a real connector run left on disk (`opcua-connector demo --duration 5s`:
line `bottling-demo`, today's UTC date, with the demo's other files beside the chunks:
`_simulator_stats.json`, `.pki/`, a lock file) plus the chunks of the Rust fixture writer
(line `line-a`: samples on both sides of a UTC midnight, which the sink splits into
`date=2026-11-26` and `date=2026-11-27`). Every reader must count every row, as many per
(line, date) as the files hold when read one by one, give the partition columns `line` and
`date` right, and find no row whose `time` (UTC) lies outside its `date=` partition.

The same readers then read the data set as uploaded: a connector run of line `line-a` with
`az://` upload to Azurite, the fixture's midnight chunks placed in its directory beforehand
(uploaded as chunks found at start), every blob downloaded by the test into a directory of its
own (the object keys are the paths).

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

from interop_helpers import REPO_ROOT, connector_binary
from upload_helpers import Azurite, az_connector, blobs, run_until

DEMO_DURATION_S = 5
DEMO_DEADLINE_S = DEMO_DURATION_S + 90  # start, drain (the connector's stop is bounded at 10 s)
DEMO_LINE = "bottling-demo"
FIXTURE_LINE = "line-a"
FIXTURE_PARTITIONS = {(FIXTURE_LINE, date(2026, 11, 26)): 7, (FIXTURE_LINE, date(2026, 11, 27)): 6}
PARTITION_DIR = re.compile(r"^line=(?P<line>[^/]+)/date=(?P<date>\d{4}-\d{2}-\d{2})$")

Counts = dict[tuple[str, date], int]


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
    return data_set(out)


def data_set(out: Path) -> DataSet:
    """The chunks under `out`, with their rows per partition counted one file at a time."""
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


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory: pytest.TempPathFactory, rust_parquet_fixture: Path, simulator) -> DataSet:
    root = tmp_path_factory.mktemp("uploaded")
    azurite = Azurite(root / "azurite")
    try:
        azurite.client().create_container("chunks")
        c = az_connector(root, simulator, azurite, line=FIXTURE_LINE)
        shutil.copytree(rust_parquet_fixture / f"line={FIXTURE_LINE}", c.workdir / "parquet" / f"line={FIXTURE_LINE}")
        fixture_chunks = len(list(rust_parquet_fixture.rglob("*.parquet")))
        run_until(c, "the fixture and 3 chunks of the run uploaded, nothing pending",
                  lambda m: m.get("parquet_upload_chunks_total", 0) >= fixture_chunks + 3
                  and m.get("parquet_upload_pending_chunks", 1) == 0, timeout=120)
        out = root / "downloaded"
        for key, data in blobs(azurite, "plant-1/").items():
            path = out / key.removeprefix("plant-1/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    finally:
        azurite.kill()
    return data_set(out)


@pytest.fixture(params=["local", "uploaded"])
def data(request: pytest.FixtureRequest) -> DataSet:
    """The data set on disk (demo + fixture), then as downloaded from the store."""
    return request.getfixturevalue("dataset" if request.param == "local" else "uploaded")


def test_the_uploaded_data_set_holds_the_midnight_split_and_the_run(uploaded: DataSet) -> None:
    for key, rows in FIXTURE_PARTITIONS.items():
        assert uploaded.expected.get(key) == rows, f"{key}: {uploaded.expected}"
    run = {k: n for k, n in uploaded.expected.items() if k not in FIXTURE_PARTITIONS}
    assert run and all(k[0] == FIXTURE_LINE and n > 0 for k, n in run.items()), uploaded.expected


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


def test_pyarrow_dataset_hive(data: DataSet) -> None:
    dataset = data
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


def test_duckdb_hive(data: DataSet) -> None:
    dataset = data
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


def test_polars_hive(data: DataSet) -> None:
    dataset = data
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


def test_spark_hive(spark, data: DataSet) -> None:
    dataset = data
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
