"""A PLC's own structures, from an INDEPENDENT server (python-asyncua), decoded by the connector
from the server's DataTypeDefinitions and landed in Parquet with field names.

The server defines, in namespace `urn:interop:structs`, an enumeration `PlcMode` and two
structures with DataTypeDefinitions: `MotorData` (Double, Float, Boolean) and `StationData`
(String, UInt32, PlcMode, a nested MotorData, an array of MotorData); variables of
`StationData` and of an array of `MotorData`. `opcua-connector run` subscribes to them; the
rows' `value_json`, and the samples' `v` in the MQTT telemetry (mosquitto, read with
paho-mqtt), must hold every field by name with its exact value, and `type` must name the
structure. Fields chosen with `flatten` land as rows of their own with their own type and
value column; fields that are not there land without a value and with `BadNoMatch`.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pyarrow.parquet as pq
import pytest
from asyncua import Server, ua
from asyncua.common.structures104 import new_enum, new_struct, new_struct_field

from interop_helpers import connector_running, free_port, line_tail
from upload_helpers import Mosquitto

NS_URI = "urn:interop:structs"
VT = ua.VariantType
DEADLINE_S = 60.0

MAIN = {"Speed": 1500.5, "Current": 3.25, "Running": True}
AXES = [{"Speed": -12.125, "Current": 0.5, "Running": False}, {"Speed": 7e-3, "Current": 1.75, "Running": True}]
STATION = {"Name": "Filler 1 – Ä", "Count": 4294967295, "Mode": 1, "Main": MAIN, "Axes": AXES}
BAD_NO_MATCH = 0x806F0000
# flattened field -> (type, value column, value); None: not in the structure
FLATTENED: dict[str, tuple[str, str, Any] | None] = {
    "Main.Speed": ("Double", "value_double", 1500.5),
    "Axes[1].Current": ("Float", "value_double", 1.75),
    "Axes[0]": ("MotorData", "value_json", AXES[0]),
    "Name": ("String", "value_string", STATION["Name"]),
    "Count": ("UInt32", "value_int", 4294967295),
    "Mode": ("Int32", "value_int", 1),
    "Main.Torque": None,
    "Axes[2].Speed": None,
}
VALUE_COLUMNS = ("value_double", "value_int", "value_uint", "value_bool", "value_string", "value_time",
                 "value_bytes", "value_json")


async def start_server() -> tuple[Server, int]:
    server = Server()
    await server.init()
    port = free_port()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    idx = await server.register_namespace(NS_URI)
    mode = await new_enum(server, idx, "PlcMode", ["Stopped", "Running", "Fault"])
    motor, _ = await new_struct(server, idx, "MotorData", [
        new_struct_field("Speed", VT.Double),
        new_struct_field("Current", VT.Float),
        new_struct_field("Running", VT.Boolean),
    ])
    station, _ = await new_struct(server, idx, "StationData", [
        new_struct_field("Name", VT.String),
        new_struct_field("Count", VT.UInt32),
        new_struct_field("Mode", mode),
        new_struct_field("Main", motor),
        new_struct_field("Axes", motor, array=True),
    ])
    await server.load_data_type_definitions()
    to_motor = lambda m: ua.MotorData(Speed=m["Speed"], Current=m["Current"], Running=m["Running"])  # noqa: E731
    value = ua.StationData(Name=STATION["Name"], Count=STATION["Count"], Mode=ua.PlcMode(STATION["Mode"]),
                           Main=to_motor(MAIN), Axes=[to_motor(a) for a in AXES])
    folder = await server.nodes.objects.add_object(ua.NodeId("Structs", idx), "Structs")
    await folder.add_variable(ua.NodeId("Station", idx), "Station", value, VT.ExtensionObject, datatype=station.nodeid)
    await folder.add_variable(ua.NodeId("Axes", idx), "Axes", [to_motor(a) for a in AXES], VT.ExtensionObject,
                              datatype=motor.nodeid)
    await server.start()
    return server, port


def fields(value_json: str) -> Any:
    """The structure's fields from the OPC UA JSON of a variant holding it (or an array)."""
    def body(v: Any) -> Any:
        if isinstance(v, dict) and "Body" in v and isinstance(v["Body"], (dict, list)):
            return body(v["Body"])
        if isinstance(v, dict) and "UaBody" in v:
            return body(v["UaBody"])
        if isinstance(v, list):
            return [body(x) for x in v]
        if isinstance(v, dict):
            return {k: body(x) for k, x in v.items()}
        return v
    return body(json.loads(value_json))


def same(expected: Any, got: Any) -> bool:
    if isinstance(expected, dict):
        return isinstance(got, dict) and all(k in got and same(v, got[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return isinstance(got, list) and len(got) == len(expected) and all(same(e, g) for e, g in zip(expected, got))
    return expected == got and type(expected) is type(got) or (isinstance(expected, float) and got == expected)


class Telemetry:
    """Every sample of the telemetry on `opcua/#`, as JSON."""

    def __init__(self, port: int) -> None:
        self.samples: list[dict[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="structs-test")
        self.client.on_connect = lambda c, *_: c.subscribe("opcua/#", qos=1)
        self.client.on_message = lambda _c, _u, m: self.samples.extend(json.loads(m.payload)["samples"])
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def scenario(tmp: Path) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    server, port = await start_server()
    broker = Mosquitto(tmp)
    telemetry = Telemetry(broker.port)
    config = tmp / "structs.toml"
    flatten = ", ".join(f'"{f}"' for f in FLATTENED)
    nodes = f'{{ id = "nsu={NS_URI};s=Station", flatten = [{flatten}] }}, "nsu={NS_URI};s=Axes"'
    config.write_text(
        f'[line]\nid = "structs"\n\n[[plc]]\nid = "py"\nendpoint = "opc.tcp://127.0.0.1:{port}/"\n\n'
        f'  [[plc.group]]\n  name = "s"\n  publishing_interval = "100ms"\n  nodes = [{nodes}]\n\n'
        + line_tail(tmp, broker.port, "1s")
    )
    log = tmp / "connector.log"
    try:
        async with connector_running(config, log) as proc:
            deadline = time.monotonic() + DEADLINE_S
            while True:
                rows = [r for f in sorted((tmp / "out").rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
                names = {"Station", "Axes"}
                if {r["name"] for r in rows} >= names and {s["name"] for s in telemetry.samples} >= names:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"no rows of both structures within {DEADLINE_S} s\n{log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)
    finally:
        telemetry.stop()
        broker.stop()
        await server.stop()
    rows = [r for f in sorted((tmp / "out").rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return rows, log.read_text(errors="replace"), telemetry.samples


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], str, list[dict[str, Any]]]:
    return asyncio.run(scenario(tmp_path_factory.mktemp("structs")))


def test_a_structure_lands_with_every_field_by_name_nested_and_arrays_included(landed) -> None:
    rows, log, _ = landed
    station = [r for r in rows if r["name"] == "Station"]
    assert station, log[-3000:]
    for r in station:
        assert r["status"] == 0 and r["value_json"] is not None, r
        got = fields(r["value_json"])
        assert same(STATION, got), f"{got}\n{r['value_json']}"


def test_an_array_of_structures_lands_as_a_json_array_of_objects(landed) -> None:
    rows, log, _ = landed
    axes = [r for r in rows if r["name"] == "Axes"]
    assert axes, log[-3000:]
    for r in axes:
        got = fields(r["value_json"])
        assert same(AXES, got), f"{got}\n{r['value_json']}"
    assert "does not match its DataTypeDefinition" not in log


def test_the_telemetry_carries_the_same_fields(landed) -> None:
    _, log, samples = landed
    for name, expected in (("Station", STATION), ("Axes", AXES)):
        got = [s for s in samples if s["name"] == name]
        assert got, log[-3000:]
        for s in got:
            v = s["v"] if not isinstance(s["v"], str) else json.loads(s["v"])
            assert same(expected, fields(json.dumps(v))), s


def test_the_type_column_names_the_structure(landed) -> None:
    rows, log, samples = landed
    for name, type_name in (("Station", "StationData"), ("Axes", "Array<MotorData>")):
        assert {r["type"] for r in rows if r["name"] == name} == {type_name}, log[-3000:]
        assert {s["type"] for s in samples if s["name"] == name} == {type_name}


def test_flattened_fields_land_as_rows_of_their_own(landed) -> None:
    rows, log, samples = landed
    station = [r for r in rows if r["name"] == "Station"]
    for field, expected in FLATTENED.items():
        got = [r for r in rows if r["name"] == f"Station.{field}"]
        # one row per structure row, same node, same timestamps
        assert len(got) == len(station), (field, len(got), len(station), log[-3000:])
        assert sorted(r["time"] for r in got) == sorted(r["time"] for r in station)
        assert {r["node"] for r in got} == {station[0]["node"]}
        for r in got:
            if expected is None:
                assert r["status"] == BAD_NO_MATCH and r["type"] == "Null", r
                assert all(r[c] is None for c in VALUE_COLUMNS), r
                continue
            type_name, column, value = expected
            assert r["status"] == 0 and r["type"] == type_name, r
            got_value = fields(r[column]) if column == "value_json" else r[column]
            assert same(value, got_value), (field, r)
            assert all(r[c] is None for c in VALUE_COLUMNS if c != column), r
        assert {s["name"] for s in samples} >= {f"Station.{field}"}, field
    assert log.count("a flattened field is not in the structure's value") == 2, log[-3000:]
