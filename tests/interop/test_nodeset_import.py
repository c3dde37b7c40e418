"""The bottling-line NodeSet2 file loads into an independent stack (python-asyncua's Server).

No simulator process is involved: this checks the XML model itself.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from asyncua import Server, ua

from interop_helpers import (
    EXPECTED_TYPES,
    MACHINES,
    NODESET_PATH,
    NS_URI,
    REQUIRED_BUILTIN_TYPES,
    DataTypeResolver,
    browse_variables,
    sid,
)

UA_NS = "{http://opcfoundation.org/UA/2011/03/UANodeSet.xsd}"


def require_nodeset() -> None:
    assert NODESET_PATH.is_file(), f"nodeset {NODESET_PATH} is missing"


def test_xml_declares_namespace_and_every_datatype() -> None:
    require_nodeset()
    root = ET.parse(NODESET_PATH).getroot()
    assert root.tag == f"{UA_NS}UANodeSet", f"root element is {root.tag}"
    uris = [e.text for e in root.iter(f"{UA_NS}Uri")]
    assert NS_URI in uris, f"NamespaceUris {uris} lack {NS_URI}"
    variables = list(root.iter(f"{UA_NS}UAVariable"))
    assert len(variables) >= 64, f"only {len(variables)} UAVariable elements"
    missing = [v.get("NodeId") for v in variables if not v.get("DataType")]
    assert not missing, f"UAVariable elements without a DataType attribute: {missing}"


@pytest_asyncio.fixture
async def imported() -> AsyncIterator[tuple[Server, int]]:
    """A python-asyncua Server (initialised, not listening) with the nodeset imported."""
    require_nodeset()
    server = Server()
    await server.init()
    new_nodes = await server.import_xml(str(NODESET_PATH))
    assert new_nodes, "import_xml added no nodes"
    idx = await server.get_namespace_index(NS_URI)
    yield server, idx


async def test_import_and_browse_bottling_line(imported: tuple[Server, int]) -> None:
    server, idx = imported
    objects_children = {n.nodeid for n in await server.nodes.objects.get_children()}
    line = server.get_node(sid(idx, "BottlingLine"))
    assert line.nodeid in objects_children, "BottlingLine is not referenced from the Objects folder"
    assert await line.read_node_class() == ua.NodeClass.Object
    line_children = {n.nodeid for n in await line.get_children()}
    for machine in MACHINES:
        assert sid(idx, machine) in line_children, f"{machine} is not a child of BottlingLine"

    variables, _methods = await browse_variables(line)
    data_vars = [v for v in variables if not v.is_property]
    assert len(data_vars) >= 64, f"only {len(data_vars)} (non-property) variables under BottlingLine"

    resolver = DataTypeResolver(server.get_node)
    types_seen: set[ua.VariantType] = set()
    arrays: list[str] = []
    for var in data_vars:
        dtype = await var.node.read_data_type()
        assert dtype != ua.NodeId(0, 0), f"{var} has a null DataType"
        vtype = await resolver.variant_type(dtype)
        types_seen.add(vtype)
        if await var.node.read_value_rank() >= 1:
            arrays.append(var.browse_path)
    missing = {t.name for t in REQUIRED_BUILTIN_TYPES - types_seen}
    assert not missing, f"no variable declares built-in type(s) {sorted(missing)}"
    assert arrays, "no array variable (ValueRank >= 1) under BottlingLine"

    for name, expected in EXPECTED_TYPES.items():
        node = server.get_node(sid(idx, name))
        dtype = await node.read_data_type()
        assert await resolver.variant_type(dtype) == expected, f"{name}: DataType {dtype} is not {expected.name}"

    def writable(level: int) -> bool:
        return bool(level & ua.AccessLevel.CurrentWrite.mask)

    async def access_level(name: str) -> int:
        return (await server.get_node(sid(idx, name)).read_attribute(ua.AttributeIds.AccessLevel)).Value.Value

    assert writable(await access_level("Filler.SpeedSetpoint")), "Filler.SpeedSetpoint is not writable"
    assert writable(await access_level("Filler.RecipeName")), "Filler.RecipeName is not writable"
    assert not writable(await access_level("Filler.Speed")), "Filler.Speed is writable"
    assert not writable(await access_level("Filler.SerialNumber")), "Filler.SerialNumber is writable"


async def _arguments(method, prop: str) -> list[ua.Argument] | None:
    for child in await method.get_properties():
        if (await child.read_browse_name()).Name == prop:
            value = await child.read_value()
            assert isinstance(value, list), f"{prop} of {method} is {value!r}, not a list"
            for arg in value:
                assert isinstance(arg, ua.Argument), f"{prop} of {method} holds {arg!r}, not a decoded Argument"
            return value
    return None


async def test_method_argument_properties_decode(imported: tuple[Server, int]) -> None:
    server, idx = imported
    for machine in MACHINES:
        obj = server.get_node(sid(idx, machine))
        methods = {(await m.read_browse_name()).Name: m for m in await obj.get_methods()}
        for name in ("Start", "Stop", "ResetCounters"):
            assert name in methods, f"{machine} lacks method {name} (has {sorted(methods)})"
        for name in ("Start", "Stop"):
            for prop in ("InputArguments", "OutputArguments"):
                args = await _arguments(methods[name], prop)
                assert not args, f"{machine}.{name} declares {prop} {args!r}; it takes none"

        reset = methods["ResetCounters"]
        inputs = await _arguments(reset, "InputArguments")
        outputs = await _arguments(reset, "OutputArguments")
        assert inputs is not None, f"{machine}.ResetCounters has no InputArguments property"
        assert outputs is not None, f"{machine}.ResetCounters has no OutputArguments property"
        assert [(a.Name, a.DataType, a.ValueRank) for a in inputs] == [
            ("Reason", ua.NodeId(ua.ObjectIds.String), -1)
        ], f"{machine}.ResetCounters inputs: {inputs!r}"
        assert [(a.Name, a.DataType, a.ValueRank) for a in outputs] == [
            ("CountersReset", ua.NodeId(ua.ObjectIds.UInt32), -1),
            ("PreviousTotal", ua.NodeId(ua.ObjectIds.UInt64), -1),
        ], f"{machine}.ResetCounters outputs: {outputs!r}"


async def test_every_declared_value_survives_import(imported: tuple[Server, int]) -> None:
    """Each <Value> in the XML decodes to a non-null value in python-asyncua.

    (asyncua's parser reads a <Value> whose first child has no text, e.g. a ListOf... written
    on one line with no whitespace, as Null; the file must not depend on such formatting.)
    """
    server, _idx = imported
    root = ET.parse(NODESET_PATH).getroot()
    xml_uris = [e.text for e in root.iter(f"{UA_NS}Uri")]
    ns_map = {0: 0}
    for i, uri in enumerate(xml_uris, start=1):
        ns_map[i] = await server.get_namespace_index(uri)
    lost: list[str] = []
    checked = 0
    for var in root.iter(f"{UA_NS}UAVariable"):
        value_el = var.find(f"{UA_NS}Value")
        if value_el is None or len(value_el) == 0:
            continue
        xml_id = ua.NodeId.from_string(var.get("NodeId"))
        nodeid = ua.NodeId(xml_id.Identifier, ns_map[xml_id.NamespaceIndex], xml_id.NodeIdType)
        dv = await server.get_node(nodeid).read_data_value()
        checked += 1
        if dv.Value is None or dv.Value.Value is None or dv.Value.VariantType == ua.VariantType.Null:
            kind = value_el[0].tag.split("}")[-1]
            lost.append(f"{var.get('NodeId')} ({kind})")
    assert checked, "the nodeset declares no <Value> at all"
    assert not lost, f"{len(lost)} declared values imported as Null: {lost[:20]}"
