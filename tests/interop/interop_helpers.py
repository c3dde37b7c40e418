"""Shared constants and helpers for the python-asyncua interop tests.

Nothing here hard-codes a namespace index: every NodeId is built from the index resolved at
run time from NS_URI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.common.node import Node
from asyncua.common.ua_utils import data_type_to_variant_type

REPO_ROOT = Path(__file__).resolve().parents[2]


def connector_binary() -> Path:
    """`$OPCUA_CONNECTOR_BIN`, else the debug build; the test fails if it is not there."""
    import pytest

    binary = Path(os.environ.get("OPCUA_CONNECTOR_BIN", REPO_ROOT / "target" / "debug" / "opcua-connector"))
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(f"connector binary {binary} is missing; build it (cargo build -p connector) or set OPCUA_CONNECTOR_BIN")
    return binary


def line_tail(tmp: Path, broker_port: int, roll: str) -> str:
    """The end of a test line's TOML: PKI trusting the server, Parquet under `tmp/out`, MQTT to
    the broker with its buffer."""
    return (
        f'[pki]\ndir = "{tmp / "pki"}"\ntrust_unknown_servers = true\n\n'
        f'[sink.parquet]\ndir = "{tmp / "out"}"\nroll_interval = "{roll}"\n\n'
        f'[sink.mqtt]\nurl = "mqtt://127.0.0.1:{broker_port}"\n\n[buffer]\ndir = "{tmp / "buffer"}"\n'
    )


@contextlib.asynccontextmanager
async def connector_running(config: Path, log: Path) -> AsyncIterator[subprocess.Popen]:
    """`opcua-connector run --config CONFIG` with its stderr in LOG; stopped with SIGTERM (and
    waited for, 30 s at most) when the block ends."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([str(connector_binary()), "run", "--config", str(config)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)


def free_port() -> int:
    """A free loopback port (bound and released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
NODESET_PATH = REPO_ROOT / "nodesets" / "bottling-line.NodeSet2.xml"
NS_URI = "urn:opcua-connector:bottling-line"

OPERATOR_USER = "operator"
OPERATOR_PASSWORD = "secret-pw"
# Application URI of the test client; the generated client certificate carries the same URI.
CLIENT_APP_URI = "urn:opcua-connector:interop-tests:asyncua-client"

MACHINES = ("Filler", "Capper", "Labeler", "Conveyor")

# The five counters and the built-in type each must carry.
COUNTERS: dict[str, ua.VariantType] = {
    "Filler.BottlesFilled": ua.VariantType.UInt64,
    "Filler.BottlesRejected": ua.VariantType.UInt32,
    "Capper.CapsApplied": ua.VariantType.UInt32,
    "Labeler.LabelsApplied": ua.VariantType.Int64,
    "Conveyor.ItemsTransported": ua.VariantType.Int32,
}

# Variables named by the model contract and their built-in types.
EXPECTED_TYPES: dict[str, ua.VariantType] = {
    **COUNTERS,
    "Filler.SpeedSetpoint": ua.VariantType.Double,
    "Filler.Speed": ua.VariantType.Double,
    "Filler.SerialNumber": ua.VariantType.String,
    "Filler.RecipeName": ua.VariantType.String,
    "Filler.Running": ua.VariantType.Boolean,
}

# The twelve built-in types the model must cover (arrays are checked separately).
REQUIRED_BUILTIN_TYPES = frozenset(
    {
        ua.VariantType.Double,
        ua.VariantType.Float,
        ua.VariantType.Int16,
        ua.VariantType.Int32,
        ua.VariantType.UInt32,
        ua.VariantType.Int64,
        ua.VariantType.UInt64,
        ua.VariantType.Boolean,
        ua.VariantType.String,
        ua.VariantType.DateTime,
        ua.VariantType.ByteString,
        ua.VariantType.LocalizedText,
    }
)

HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)


def sid(ns: int, name: str) -> ua.NodeId:
    """String NodeId `ns=<ns>;s=<name>`."""
    return ua.NodeId(name, ns, ua.NodeIdType.String)


def code_name(code: ua.StatusCode | int) -> str:
    value = code.value if isinstance(code, ua.StatusCode) else int(code)
    name, _doc = ua.status_codes.get_name_and_doc(value)
    return f"{name}(0x{value:08X})"


class BrowsedVariable:
    """A Variable node found below the root, and whether it was reached by HasProperty."""

    def __init__(self, node: Node, browse_path: str, is_property: bool) -> None:
        self.node = node
        self.browse_path = browse_path
        self.is_property = is_property

    def __repr__(self) -> str:
        kind = "property" if self.is_property else "variable"
        return f"<{kind} {self.browse_path} {self.node.nodeid.to_string()}>"


async def browse_variables(root: Node, max_nodes: int = 5000) -> tuple[list[BrowsedVariable], list[Node]]:
    """Breadth-first browse of every hierarchical reference below `root`.

    Returns (variables, methods). Variables include properties (flagged) and variables nested
    below other variables.
    """
    seen: set[ua.NodeId] = {root.nodeid}
    queue: list[tuple[Node, str]] = [(root, (await root.read_browse_name()).Name)]
    variables: list[BrowsedVariable] = []
    methods: list[Node] = []
    while queue:
        node, path = queue.pop(0)
        refs = await node.get_references(
            refs=ua.ObjectIds.HierarchicalReferences,
            direction=ua.BrowseDirection.Forward,
            includesubtypes=True,
        )
        for ref in refs:
            # ReferenceDescription carries an ExpandedNodeId; compare and hash plain NodeIds.
            target_id = ua.NodeId(ref.NodeId.Identifier, ref.NodeId.NamespaceIndex, ref.NodeId.NodeIdType)
            if target_id in seen:
                continue
            seen.add(target_id)
            assert len(seen) <= max_nodes, f"browse below {root} did not terminate ({max_nodes} nodes)"
            child = Node(root.session, target_id)
            child_path = f"{path}/{ref.BrowseName.Name}"
            if ref.NodeClass == ua.NodeClass.Variable:
                variables.append(BrowsedVariable(child, child_path, ref.ReferenceTypeId == HAS_PROPERTY))
            elif ref.NodeClass == ua.NodeClass.Method:
                methods.append(child)
            queue.append((child, child_path))
    return variables, methods


async def read_attribute_batched(
    read: Callable[[list[ua.NodeId], ua.AttributeIds], Awaitable[list[ua.DataValue]]],
    nodeids: list[ua.NodeId],
    attr: ua.AttributeIds,
    batch: int = 50,
) -> list[ua.DataValue]:
    out: list[ua.DataValue] = []
    for i in range(0, len(nodeids), batch):
        out.extend(await read(nodeids[i : i + batch], attr))
    return out


class DataTypeResolver:
    """Maps a DataType NodeId to the built-in VariantType a value of that type is encoded with.

    Returns VariantType.Variant for abstract types that allow any built-in (BaseDataType,
    Number, Integer, UInteger).
    """

    def __init__(self, session_node: Callable[[ua.NodeId], Node]) -> None:
        self._node = session_node
        self._cache: dict[ua.NodeId, ua.VariantType] = {}

    async def variant_type(self, datatype: ua.NodeId) -> ua.VariantType:
        if datatype not in self._cache:
            self._cache[datatype] = await data_type_to_variant_type(self._node(datatype))
        return self._cache[datatype]


async def wait_until(
    probe: Callable[[], Awaitable[Any]],
    accept: Callable[[Any], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
) -> tuple[Any, float]:
    """Poll `probe` until `accept(value)` or the deadline; returns (value, seconds waited).

    Fails with the last value seen when the deadline passes.
    """
    start = time.monotonic()
    deadline = start + timeout
    history: list[Any] = []
    while True:
        value = await probe()
        history.append(value)
        if accept(value):
            return value, time.monotonic() - start
        if time.monotonic() >= deadline:
            tail = history[-10:]
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}; last values: {tail!r}")
        await asyncio.sleep(interval)


async def write_status(node: Node, variant: ua.Variant) -> ua.StatusCode:
    """Write the Value attribute (no timestamps) and return the per-node status code."""
    results = await node.session.write_attributes(
        [node.nodeid], [ua.DataValue(Value=variant)], ua.AttributeIds.Value
    )
    assert len(results) == 1, f"write returned {len(results)} results for one node"
    return results[0]


# Parquet schema v3: the typed value columns (exactly one is set per row) and the
# dictionary-encoded string columns. The line id is no column: it is the partition key `line=`.
VALUE_COLUMNS = (
    "value_double",
    "value_int",
    "value_uint",
    "value_bool",
    "value_string",
    "value_time",
    "value_bytes",
    "value_json",
)
DICTIONARY_COLUMNS = ("plc", "group", "node", "name", "type")
