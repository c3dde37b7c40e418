"""Type fidelity: every OPC UA built-in type, with edge values, from an INDEPENDENT server
(python-asyncua) through `opcua-connector run` into Parquet, read back with pyarrow.

The scenario runs once per module (fixture `landed`):
1. a python-asyncua `Server` on `opc.tcp://127.0.0.1:<free port>/` (security None, anonymous)
   with namespace `urn:interop:types` and one string-id variable per case in CASES;
2. `opcua-connector run --config <tmp>/types.toml` as a subprocess (one group `all`, 100 ms
   publishing, 0 ms sampling, Parquet rolled every second);
3. poll (deadline) until the finished chunks hold a row for every node, then SIGTERM and poll
   (deadline) until the connector has drained and exited; the server keeps serving meanwhile;
4. every row of every `*.parquet` chunk is read with pyarrow and checked per node against the
   spec's column table ("Parquet chunks (schema version 2)").

The connector binary is `$OPCUA_CONNECTOR_BIN` (default `<repo>/target/debug/opcua-connector`).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from asyncua import Server, ua

from interop_helpers import VALUE_COLUMNS, connector_binary, free_port

NS_URI = "urn:interop:types"
VT = ua.VariantType
ROWS_DEADLINE_S = 60.0
EXIT_DEADLINE_S = 30.0
SERVER_START_ATTEMPTS = 5
POLL_S = 0.1


GUID = uuid.UUID("72962b91-fa75-4ae6-8d28-b404dc7daf63")
DATETIME = datetime(2026, 11, 26, 3, 12, 0, 123456, tzinfo=UTC)
BYTES = bytes(range(256))
DOUBLES = [1.5, -2.25, 1e308, 0.0]
INT32S = [-(2**31), -1, 0, 7, 2**31 - 1]
STATUS = ua.StatusCodes.BadNoCommunication  # 0x80310000


def same_float(expected: float) -> Callable[[Any], bool]:
    if math.isnan(expected):
        return lambda v: isinstance(v, float) and math.isnan(v)
    return lambda v: isinstance(v, float) and v == expected and math.copysign(1, v) == math.copysign(1, expected)


def equals(expected: Any) -> Callable[[Any], bool]:
    return lambda v: type(v) is type(expected) and v == expected


def contains(fragment: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and fragment.lower() in v.lower()


def json_array(expected: list[float | int]) -> Callable[[Any], bool]:
    """The OPC UA JSON text holds a JSON array equal to `expected` (at any depth, so both the
    reversible `{"Type":..,"Body":[..]}` and the non-reversible `[..]` encodings pass)."""

    def arrays(doc: Any):
        if isinstance(doc, list):
            yield doc
            for x in doc:
                yield from arrays(x)
        elif isinstance(doc, dict):
            for x in doc.values():
                yield from arrays(x)

    def same(x: int | float, e: int | float) -> bool:
        # JSON numbers carry no int/float distinction: a Double may be written `0` or as a long
        # integer literal (1e308 as 309 digits); what counts is the double a reader parses.
        # Integers must be integers, exactly.
        return float(x) == e if isinstance(e, float) else (isinstance(x, int) and x == e)

    def check(v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            doc = json.loads(v)
        except ValueError:
            return False
        return any(
            len(a) == len(expected)
            and all(isinstance(x, int | float) and not isinstance(x, bool) and same(x, e) for x, e in zip(a, expected))
            for a in arrays(doc)
        )

    return check


@dataclass(frozen=True)
class Case:
    name: str  # string node id in urn:interop:types
    value: Any  # python value handed to asyncua
    variant: ua.VariantType
    type_name: str  # expected `type` column
    column: str  # expected value column
    check: Callable[[Any], bool]  # on the landed value
    shows: str  # what the check expects, for messages


def _cases() -> list[Case]:
    c: list[Case] = []

    def add(name, value, variant, type_name, column, check, shows):
        c.append(Case(name, value, variant, type_name, column, check, shows))

    for name, x in [("Double.NaN", math.nan), ("Double.PosInf", math.inf), ("Double.NegInf", -math.inf),
                    ("Double.Big", 1e308), ("Double.NegZero", -0.0)]:
        add(name, x, VT.Double, "Double", "value_double", same_float(x), repr(x))
    add("Float.OneAndHalf", 1.5, VT.Float, "Float", "value_double", same_float(1.5), "1.5")
    for name, x, vt, tn in [
        ("Int64.Negative", -9_000_000_000_000, VT.Int64, "Int64"),
        ("Int64.Big", 2**62, VT.Int64, "Int64"),
        ("Int64.Min", -(2**63), VT.Int64, "Int64"),
        ("Int32.Min", -(2**31), VT.Int32, "Int32"),
        ("UInt32.Max", 2**32 - 1, VT.UInt32, "UInt32"),
        ("Int16.Min", -(2**15), VT.Int16, "Int16"),
        ("UInt16.Max", 2**16 - 1, VT.UInt16, "UInt16"),
        ("SByte.Min", -128, VT.SByte, "SByte"),
        ("Byte.Max", 255, VT.Byte, "Byte"),
    ]:
        add(name, x, vt, tn, "value_int", equals(x), str(x))
    add("UInt64.Max", 2**64 - 1, VT.UInt64, "UInt64", "value_uint", equals(2**64 - 1), str(2**64 - 1))
    add("UInt64.Small", 5, VT.UInt64, "UInt64", "value_uint", equals(5), "5")
    add("Boolean.True", True, VT.Boolean, "Boolean", "value_bool", equals(True), "True")
    add("Boolean.False", False, VT.Boolean, "Boolean", "value_bool", equals(False), "False")
    add("String.Unicode", "Füllstand ✓", VT.String, "String", "value_string", equals("Füllstand ✓"), "'Füllstand ✓'")
    add("String.Empty", "", VT.String, "String", "value_string", equals(""), "'' (not null)")
    add("DateTime.SubMs", DATETIME, VT.DateTime, "DateTime", "value_time", equals(DATETIME), DATETIME.isoformat())
    add("ByteString.All", BYTES, VT.ByteString, "ByteString", "value_bytes", equals(BYTES), "bytes(range(256))")
    add("LocalizedText.De", ua.LocalizedText("Grüße ✓", "de-DE"), VT.LocalizedText, "LocalizedText",
        "value_string", equals("Grüße ✓"), "'Grüße ✓'")
    add("Guid.Value", GUID, VT.Guid, "Guid", "value_string", contains(str(GUID)), f"contains {GUID}")
    # Its namespace index is filled in when the server has registered the namespace.
    # NodeId values are written in namespace-URI form, like the node column (Node identity).
    add("NodeId.Value", "Target.Node", VT.NodeId, "NodeId", "value_string",
        equals(f"nsu={NS_URI};s=Target.Node"), f"nsu={NS_URI};s=Target.Node")
    add("QualifiedName.Value", "Brand.Name", VT.QualifiedName, "QualifiedName", "value_string",
        contains("Brand.Name"), "contains 'Brand.Name'")
    add("Array.Double", DOUBLES, VT.Double, "Array<Double>", "value_json", json_array(DOUBLES), f"JSON {DOUBLES}")
    add("Array.Int32", INT32S, VT.Int32, "Array<Int32>", "value_json", json_array(INT32S), f"JSON {INT32S}")
    add("StatusCode.Bad", ua.StatusCode(STATUS), VT.StatusCode, "StatusCode", "value_int", equals(STATUS),
        f"{STATUS} (0x{STATUS:08X})")
    return c


CASES = _cases()


def node_id(case: Case) -> str:
    return f"nsu={NS_URI};s={case.name}"


def toml_str(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string is a valid TOML basic string


@dataclass
class Landed:
    rows: list[dict[str, Any]] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    returncode: int | None = None
    stderr: str = ""
    endpoint: str = ""

    def diag(self) -> str:
        return f"connector stderr (tail):\n{self.stderr[-4000:]}"

    def of(self, case: Case) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["node"] == node_id(case)]


def read_chunks(out: Path) -> tuple[list[Path], list[dict[str, Any]]]:
    files = sorted(out.rglob("*.parquet"))
    rows: list[dict[str, Any]] = []
    for f in files:
        for r in pq.read_table(f).to_pylist():
            r["_file"] = f.name
            r["line"] = f.parent.parent.name.removeprefix("line=")  # the partition key
            rows.append(r)
    return files, rows


async def start_server() -> tuple[Server, int]:
    last_error: Exception | None = None
    for _ in range(SERVER_START_ATTEMPTS):
        server = Server()
        await server.init()
        server.set_server_name("interop types server (python-asyncua)")
        port = free_port()
        server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_security_IDs(["Anonymous"])
        idx = await server.register_namespace(NS_URI)
        folder = await server.nodes.objects.add_object(ua.NodeId("Types", idx), "Types")
        for case in CASES:
            value = case.value
            if case.variant == VT.NodeId:
                value = ua.NodeId(case.value, idx)
            elif case.variant == VT.QualifiedName:
                value = ua.QualifiedName(case.value, idx)
            await folder.add_variable(ua.NodeId(case.name, idx), case.name, value, varianttype=case.variant)
        try:
            await server.start()
        except OSError as exc:  # the free port was taken in between: pick another
            last_error = exc
            continue
        return server, port
    raise RuntimeError(f"python-asyncua server did not start: {last_error}")


def write_config(tmp: Path, endpoint: str) -> Path:
    nodes = "\n".join(f"    {toml_str(node_id(c))}," for c in CASES)
    config = tmp / "types.toml"
    config.write_text(
        f"""[line]
id = "types"

[[plc]]
id = "py"
endpoint = {toml_str(endpoint)}
security_policy = "None"
security_mode = "None"

  [[plc.group]]
  name = "all"
  publishing_interval = "100ms"
  sampling_interval = "0ms"
  nodes = [
{nodes}
  ]

[pki]
dir = {toml_str(str(tmp / "pki"))}
trust_unknown_servers = true

[sink.parquet]
dir = {toml_str(str(tmp / "out"))}
roll_interval = "1s"
""",
        encoding="utf-8",
    )
    return config


async def scenario(tmp: Path) -> Landed:
    binary = connector_binary()
    landed = Landed()
    server, port = await start_server()
    stderr_path = tmp / "connector.stderr.log"
    try:
        landed.endpoint = f"opc.tcp://127.0.0.1:{port}/"
        config = write_config(tmp, landed.endpoint)
        out = tmp / "out"
        with open(stderr_path, "wb") as stderr, open(tmp / "connector.stdout.log", "wb") as stdout:
            proc = subprocess.Popen(
                [str(binary), "run", "--config", str(config)],
                cwd=tmp, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            )
            try:
                wanted = {node_id(c) for c in CASES}
                deadline = time.monotonic() + ROWS_DEADLINE_S
                seen: set[str] = set()
                while True:
                    if proc.poll() is not None:
                        pytest.fail(f"connector exited early with {proc.returncode}\n{stderr_path.read_text(errors='replace')[-4000:]}")
                    _, rows = read_chunks(out)
                    seen = {r["node"] for r in rows}
                    if wanted <= seen:
                        break
                    if time.monotonic() > deadline:
                        pytest.fail(
                            f"after {ROWS_DEADLINE_S:.0f} s the chunks under {out} have no row for "
                            f"{sorted(wanted - seen)}\n{stderr_path.read_text(errors='replace')[-4000:]}"
                        )
                    await asyncio.sleep(POLL_S)  # poll interval; the server keeps serving meanwhile
                proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + EXIT_DEADLINE_S
                while proc.poll() is None and time.monotonic() < deadline:
                    await asyncio.sleep(POLL_S)  # let the server answer the drain (close session)
                landed.returncode = proc.poll()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        landed.files, landed.rows = read_chunks(out)
    finally:
        await server.stop()
        landed.stderr = stderr_path.read_text(errors="replace") if stderr_path.exists() else ""
    return landed


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> Landed:
    result = asyncio.run(scenario(tmp_path_factory.mktemp("types")))
    print(f"{len(result.rows)} rows in {len(result.files)} chunk(s), connector exit {result.returncode}")
    return result


# --------------------------------------------------------------------------------------------


def test_connector_drains_and_exits_zero_on_sigterm(landed: Landed) -> None:
    assert landed.returncode is not None, f"connector still running {EXIT_DEADLINE_S:.0f} s after SIGTERM\n{landed.diag()}"
    assert landed.returncode == 0, f"connector exited {landed.returncode} after SIGTERM\n{landed.diag()}"


def test_rows_name_nodes_by_namespace_uri(landed: Landed) -> None:
    nodes = {r["node"] for r in landed.rows}
    assert nodes == {node_id(c) for c in CASES}, f"node column values: {sorted(nodes)}"
    assert not [n for n in nodes if "ns=" in n.replace("nsu=", "")], f"ns=<index> form in node column: {nodes}"
    where = {(r["line"], r["plc"], r["group"]) for r in landed.rows}
    assert where == {("types", "py", "all")}, f"line/plc/group: {where}"


def test_every_row_is_good_with_at_most_one_value_column(landed: Landed) -> None:
    problems = []
    for r in landed.rows:
        set_cols = [c for c in VALUE_COLUMNS if r[c] is not None]
        if r["status"] != 0:
            problems.append(f"{r['node']}: status 0x{r['status']:08X}")
        if len(set_cols) != 1:
            problems.append(f"{r['node']} ({r['type']}): value columns set {set_cols}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_value_lands_exactly(landed: Landed, case: Case) -> None:
    rows = landed.of(case)
    assert rows, f"no row for {node_id(case)}\n{landed.diag()}"
    problems = []
    for r in rows:
        got_cols = {c: r[c] for c in VALUE_COLUMNS if r[c] is not None}
        sent = f"sent {case.variant.name} {case.value!r}"
        if r["type"] != case.type_name:
            problems.append(f"{sent}: type column {r['type']!r}, expected {case.type_name!r}")
        if case.column not in got_cols:
            problems.append(f"{sent}: {case.column} is null; landed {got_cols!r}")
        elif not case.check(got_cols[case.column]):
            problems.append(f"{sent}: {case.column} = {got_cols[case.column]!r}, expected {case.shows}")
        others = {c: v for c, v in got_cols.items() if c != case.column}
        if others:
            problems.append(f"{sent}: also set {others!r}")
    assert not problems, f"{node_id(case)} ({len(rows)} rows):\n" + "\n".join(sorted(set(problems)))
