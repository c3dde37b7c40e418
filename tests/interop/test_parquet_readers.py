"""Independent readers (pyarrow, DuckDB) on Parquet chunks written by the Rust sink.

The Rust unit test `sinks::parquet::tests::writes_reader_fixture` writes 13 samples covering
every value kind into `$PARQUET_FIXTURE_DIR` (two chunks, two date partitions: the samples span
a UTC midnight and the sink rolls there). The session fixture `rust_parquet_fixture`
(conftest.py) runs it through cargo once; this module checks what the readers see. Nothing is skipped: without cargo, or if the
test writes no files, every test here fails. EXPECTED below mirrors `fixture_samples()` in
`connector/src/sinks/parquet/tests.rs`; keep both in step.
"""

from __future__ import annotations

import math
import shutil
import tomllib
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from interop_helpers import DICTIONARY_COLUMNS, REPO_ROOT, VALUE_COLUMNS

NODE_PREFIX = "nsu=urn:opcua-connector:test;s=Filler."
UTC_US = pa.timestamp("us", tz="UTC")
DICT_STRING = pa.dictionary(pa.int32(), pa.string())
EXPECTED_SCHEMA = pa.schema(
    [
        pa.field("time", UTC_US, nullable=False),
        pa.field("server_time", UTC_US),
        *(pa.field(name, DICT_STRING, nullable=False) for name in DICTIONARY_COLUMNS),
        pa.field("status", pa.uint32(), nullable=False),
        pa.field("value_double", pa.float64()),
        pa.field("value_int", pa.int64()),
        pa.field("value_uint", pa.uint64()),
        pa.field("value_bool", pa.bool_()),
        pa.field("value_string", pa.string()),
        pa.field("value_time", UTC_US),
        pa.field("value_bytes", pa.binary()),
        pa.field("value_json", pa.string()),
        pa.field("origin", DICT_STRING, nullable=False),
    ]
)


def us(text: str) -> int:
    """Microseconds since the Unix epoch of an RFC 3339 UTC time."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    delta = t - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return delta // timedelta(microseconds=1)


D1 = us("2026-11-26T23:59:58.000001Z")
D2 = us("2026-11-27T00:00:00.000123Z")
NAN = float("nan")

# (tag, group, time µs, server time µs, status, type, value column, value)
EXPECTED = [
    ("Speed", "fast", D1, D1 + 250, 0, "Double", "value_double", 1.5),
    ("Nan", "fast", D1 + 100_123, D1 + 100_200, 0, "Double", "value_double", NAN),
    ("PosInf", "fast", D1 + 200_000, D1 + 200_001, 0, "Double", "value_double", math.inf),
    ("NegInf", "fast", D1 + 300_000, None, 0x4000_0000, "Float", "value_double", -math.inf),
    ("BigInt", "fast", D1 + 400_000, D1 + 400_000, 0, "Int64", "value_int", -5_000_000_000),
    ("MaxUInt", "fast", D1 + 500_000, D1 + 500_000, 0, "UInt64", "value_uint", 2**64 - 1),
    ("HalfUInt", "fast", D1 + 600_000, D1 + 600_000, 0, "UInt64", "value_uint", 2**63),
    ("Running", "slow", D2, D2 + 1, 0, "Boolean", "value_bool", True),
    ("Recipe", "slow", D2 + 1, D2 + 2, 0, "String", "value_string", "Cola 0,5 l – ✓"),
    ("LastCip", "slow", D2 + 2, D2 + 3, 0, "DateTime", "value_time", us("2026-11-20T12:34:56.789012Z")),
    ("Serial", "slow", D2 + 3, D2 + 4, 0, "ByteString", "value_bytes", b"\x00\xff\x10\x80"),
    ("Temps", "slow", D2 + 4, D2 + 5, 0, "Array<Double>", "value_json", "[1.5,2.5,3]"),
    ("Missing", "slow", D2 + 5, None, 0x8034_0000, "Null", None, None),
]
FIRST_CHUNK_ROWS = 7


def same_value(actual: object, expected: object) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(actual, float) and math.isnan(actual)
    return type(actual) is type(expected) and actual == expected


def connector_version() -> str:
    cargo = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text(encoding="utf-8"))
    return cargo["workspace"]["package"]["version"]


@pytest.fixture(scope="module")
def chunk_dir(rust_parquet_fixture: Path) -> Path:
    """The chunks of the Rust fixture test (run once per session, see conftest.py)."""
    return rust_parquet_fixture


@pytest.fixture(scope="module")
def chunk_files(chunk_dir: Path) -> list[Path]:
    files = sorted(chunk_dir.glob("**/*.parquet"))
    assert [f.relative_to(chunk_dir).parent.as_posix() for f in files] == [
        "line=line-a/date=2026-11-26",
        "line=line-a/date=2026-11-27",
    ]
    return files


def test_chunk_names_and_no_temporary_files(chunk_dir: Path, chunk_files: list[Path]) -> None:
    names = [f.name for f in chunk_files]
    assert names[0].startswith("filler-20261126T235958Z-")
    assert names[1].startswith("filler-20261127T000000Z-")
    assert names == sorted(names, key=lambda n: n.split("-", 1)[1])
    leftovers = [p for p in chunk_dir.rglob("*") if p.is_file() and p.suffix != ".parquet"]
    assert leftovers == [], "completed chunks leave no temporary files"


def test_pyarrow_schema_is_v2(chunk_files: list[Path]) -> None:
    for f in chunk_files:
        schema = pq.read_schema(f)
        assert schema.remove_metadata().equals(EXPECTED_SCHEMA), f"{f}:\n{schema}"


def test_pyarrow_values(chunk_files: list[Path]) -> None:
    tables = [pq.read_table(f) for f in chunk_files]
    assert [t.num_rows for t in tables] == [FIRST_CHUNK_ROWS, len(EXPECTED) - FIRST_CHUNK_ROWS]
    table = pa.concat_tables(tables)
    # Timestamps compared as integer µs (exact), after checking their type.
    ints = {
        name: table.column(name).cast(pa.int64()).to_pylist()
        for name in ("time", "server_time", "value_time")
    }
    rows = table.to_pylist()
    for i, (tag, group, t, server, status, type_name, column, value) in enumerate(EXPECTED):
        row = rows[i]
        ctx = f"row {i} ({tag})"
        assert row["plc"] == "filler", ctx
        assert row["group"] == group, ctx
        assert row["node"] == NODE_PREFIX + tag, ctx
        assert row["name"] == "Filler." + tag, ctx
        assert row["type"] == type_name, ctx
        assert row["status"] == status, ctx
        assert ints["time"][i] == t, ctx
        assert ints["server_time"][i] == server, ctx
        assert isinstance(row["time"], datetime) and row["time"].utcoffset().total_seconds() == 0, ctx
        filled = [c for c in VALUE_COLUMNS if row[c] is not None]
        assert filled == ([column] if column else []), ctx
        if column == "value_time":
            assert ints["value_time"][i] == value, ctx
        elif column is not None:
            assert same_value(row[column], value), f"{ctx}: {row[column]!r} != {value!r}"


def test_pyarrow_dictionary_columns(chunk_files: list[Path]) -> None:
    table = pq.read_table(chunk_files[0])
    for name in DICTIONARY_COLUMNS:
        column = table.column(name)
        assert column.type == DICT_STRING, name
        assert column.null_count == 0, name
    assert table.column("group").chunk(0).dictionary.to_pylist() == ["fast"]
    assert table.column("origin").chunk(0).dictionary.to_pylist() == ["live"]
    assert table.column("origin").null_count == 0
    # Schema v2: the line id is the partition key `line=` (and a footer key), not a column.
    assert "line" not in table.schema.names


def test_pyarrow_hive_dataset(chunk_dir: Path) -> None:
    """`partitioning="hive"` reads the data set: no column clashes with a partition key."""
    dataset = ds.dataset(chunk_dir, format="parquet", partitioning="hive")
    assert dataset.schema.field("line").type == pa.string()
    assert dataset.schema.field("date").type == pa.string()  # inferred; declare date32 to get dates
    table = dataset.to_table(columns=["line", "date", "time"]).sort_by("time")
    assert table.num_rows == len(EXPECTED)
    assert set(table.column("line").to_pylist()) == {"line-a"}
    days = table.column("date").to_pylist()
    assert days == ["2026-11-26"] * FIRST_CHUNK_ROWS + ["2026-11-27"] * (len(EXPECTED) - FIRST_CHUNK_ROWS)
    typed = ds.partitioning(pa.schema([("line", pa.string()), ("date", pa.date32())]), flavor="hive")
    on_day_one = ds.dataset(chunk_dir, format="parquet", partitioning=typed).to_table(
        filter=ds.field("date") == date(2026, 11, 26)
    )
    assert on_day_one.num_rows == FIRST_CHUNK_ROWS
    # pq.read_table (and pandas.read_parquet) infer the keys as dictionaries: no clash either.
    merged = pq.read_table(chunk_dir, columns=["line", "date"])
    assert merged.column("line").to_pylist() == ["line-a"] * len(EXPECTED)
    assert sorted(set(merged.column("date").to_pylist())) == ["2026-11-26", "2026-11-27"]


def test_pyarrow_encodings_and_statistics(chunk_files: list[Path]) -> None:
    meta = pq.ParquetFile(chunk_files[0]).metadata
    assert meta.format_version.startswith("2")
    rg = meta.row_group(0)
    columns = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    for name in ("time", "server_time", "status", "value_int", "value_uint", "value_time"):
        assert "DELTA_BINARY_PACKED" in columns[name].encodings, name
    assert "BYTE_STREAM_SPLIT" in columns["value_double"].encodings
    for name in (*DICTIONARY_COLUMNS, "origin", "value_string"):
        assert "RLE_DICTIONARY" in columns[name].encodings, name
    for name, column in columns.items():
        assert column.compression == "ZSTD", name
        assert column.is_stats_set, name
    uint_stats = columns["value_uint"].statistics
    assert (uint_stats.min, uint_stats.max) == (2**63, 2**64 - 1)


def test_footer_metadata(chunk_files: list[Path]) -> None:
    ranges = [
        ("2026-11-26T23:59:58.000001Z", "2026-11-26T23:59:58.600001Z"),
        ("2026-11-27T00:00:00.000123Z", "2026-11-27T00:00:00.000128Z"),
    ]
    for f, (first, last) in zip(chunk_files, ranges, strict=True):
        kv = {k.decode(): v.decode() for k, v in pq.read_metadata(f).metadata.items()}
        assert kv["opcua_connector.schema_version"] == "3"
        assert kv["opcua_connector.line"] == "line-a"
        assert kv["opcua_connector.site"] == "plant-1"
        assert kv["opcua_connector.plc"] == "filler"
        assert kv["opcua_connector.connector_version"] == connector_version()
        assert kv["opcua_connector.first_sample_time"] == first
        assert kv["opcua_connector.last_sample_time"] == last


def test_pyarrow_dataset_skips_temporary_files(chunk_dir: Path, tmp_path: Path) -> None:
    """A crash leaves only `.<name>.parquet.tmp`; the dataset readers must not see it."""
    copy = tmp_path / "chunks"
    shutil.copytree(chunk_dir, copy)
    partition = copy / "line=line-a" / "date=2026-11-27"
    # Hidden by its leading dot (pyarrow, Spark) and by its suffix (`*.parquet` globs, DuckDB).
    (partition / ".filler-20261127T000001Z-000099.parquet.tmp").write_bytes(b"PAR1 torn write")
    assert len(pq.read_table(copy)) == len(EXPECTED)
    dataset = ds.dataset(copy, format="parquet", partitioning="hive")
    on_day_two = dataset.to_table(filter=ds.field("date") == "2026-11-27")
    assert on_day_two.num_rows == len(EXPECTED) - FIRST_CHUNK_ROWS
    assert len(duckdb.sql(f"SELECT * FROM read_parquet('{copy}/**/*.parquet')").fetchall()) == len(
        EXPECTED
    )


def test_duckdb_hive_partitions(chunk_dir: Path) -> None:
    con = duckdb.connect()
    source = f"read_parquet('{chunk_dir}/**/*.parquet', hive_partitioning=true)"
    assert con.sql(f"SELECT count(*) FROM {source}").fetchall() == [(len(EXPECTED),)]
    partitions = con.sql(
        f"SELECT line, date, typeof(date), count(*) FROM {source} GROUP BY ALL ORDER BY date"
    ).fetchall()
    assert partitions == [
        ("line-a", date(2026, 11, 26), "DATE", FIRST_CHUNK_ROWS),
        ("line-a", date(2026, 11, 27), "DATE", len(EXPECTED) - FIRST_CHUNK_ROWS),
    ]


def test_duckdb_values(chunk_dir: Path) -> None:
    con = duckdb.connect()
    source = f"read_parquet('{chunk_dir}/**/*.parquet', hive_partitioning=true)"
    types = dict(con.sql(f"SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM {source})").fetchall())
    assert types["time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["value_time"] == "TIMESTAMP WITH TIME ZONE"
    assert types["value_uint"] == "UBIGINT"
    assert types["status"] == "UINTEGER"
    assert types["value_bytes"] == "BLOB"
    rows = con.sql(
        f"""SELECT name, "group", type, status, epoch_us(time), epoch_us(server_time),
                   value_double, value_int, value_uint, value_bool, value_string,
                   epoch_us(value_time), value_bytes, value_json
            FROM {source} ORDER BY time"""
    ).fetchall()
    assert len(rows) == len(EXPECTED)
    for row, (tag, group, t, server, status, type_name, column, value) in zip(rows, EXPECTED, strict=True):
        name, grp, typ, st, t_us, server_us, *values = row
        ctx = f"{tag}: {row!r}"
        assert (name, grp, typ, st, t_us, server_us) == ("Filler." + tag, group, type_name, status, t, server), ctx
        got = dict(zip(VALUE_COLUMNS, values, strict=True))
        assert [c for c in VALUE_COLUMNS if got[c] is not None] == ([column] if column else []), ctx
        if column is not None:
            assert same_value(got[column], value), ctx
