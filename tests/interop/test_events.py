"""Alarms from the bundled simulator through the connector process, read back independently.

The simulator's alarm `Filler.TemperatureHigh` is active while the product temperature is above
`Filler.TemperatureLimit`. A python-asyncua client lowers the limit (the alarm activates),
the cloud acknowledges it through the connector's MQTT command topic (a `[[method]]` mapping of
Acknowledge, i=9111, with the event's id from the telemetry), the client raises the limit
again (the alarm clears). The acknowledgement must reach the PLC: the simulator logs it. The
events table the connector wrote (under `events_dir`) is then read with pyarrow.dataset, DuckDB
and polars: the three events in order with their fields, the same in every reader and in the
telemetry (mosquitto, paho-mqtt).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import duckdb
import paho.mqtt.client as mqtt
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from asyncua import ua

from conftest import make_client
from interop_helpers import NS_URI, connector_running
from upload_helpers import Mosquitto

DEADLINE_S = 60.0
RAISED = "Filler product temperature above limit"
CLEARED = "Filler product temperature back within limit"
COMMENT = "checked from the cloud"


class Broker:
    """Every message on `opcua/#`, as JSON, and a publisher."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, Any]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="events-test")
        self.client.on_connect = lambda c, *_: c.subscribe("opcua/#", qos=1)
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def events(self) -> list[dict[str, Any]]:
        return [e for t, m in list(self.messages) if t == "opcua/ev/sim/alarms" for e in m.get("events", [])]

    def answer(self, topic: str, request_id: str) -> dict[str, Any] | None:
        return next((m for t, m in list(self.messages) if t == topic and m.get("id") == request_id), None)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def until(what: str, check, log: Path) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE_S} s\n{log.read_text(errors='replace')[-3000:]}")
        await asyncio.sleep(0.1)


async def scenario(tmp: Path, sim) -> tuple[Path, list[dict[str, Any]], str, str]:
    mosquitto = Mosquitto(tmp)
    broker = Broker(mosquitto.port)
    ns_node = lambda name: f"nsu={NS_URI};s={name}"  # noqa: E731
    config = tmp / "events.toml"
    config.write_text(
        f'[line]\nid = "ev"\n\n[[plc]]\nid = "sim"\nendpoint = "{sim.url}"\n\n'
        f'  [[plc.events]]\n  name = "alarms"\n  publishing_interval = "100ms"\n\n'
        f'[pki]\ndir = "{tmp / "pki"}"\ntrust_unknown_servers = true\n\n'
        f'[sink.parquet]\ndir = "{tmp / "out"}"\nroll_interval = "1s"\n\n'
        f'[sink.mqtt]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\nallow_insecure_commands = true\n\n'
        f'[buffer]\ndir = "{tmp / "buffer"}"\n\n'
        f'[[method]]\nname = "acknowledge"\nplc = "sim"\nobject = "{ns_node("Filler.TemperatureHigh")}"\n'
        f'method = "i=9111"\ntimeout = "5s"\n'
    )
    log = tmp / "connector.log"
    client = make_client(sim.url)
    try:
        async with client:
            idx = await client.get_namespace_index(NS_URI)
            limit = client.get_node(ua.NodeId("Filler.TemperatureLimit", idx))
            async with connector_running(config, log) as proc:
                await until("the event stream subscribed", lambda: "event stream subscribed" in log.read_text(), log)
                await limit.write_value(ua.DataValue(ua.Variant(0.0, ua.VariantType.Float)))
                raised = await until("the activation event",
                                     lambda: next((e for e in broker.events() if e.get("active")), None), log)
                request = {"id": "ack-1", "args": {"EventId": raised["event_id"], "Comment": COMMENT}}
                topic = "opcua/ev/cmd/method/acknowledge"
                response_topic = f"{topic}/response"

                def answered() -> dict[str, Any] | None:
                    found = broker.answer(response_topic, "ack-1")
                    if found is None:
                        # The connector subscribes to its command topics shortly after start;
                        # a repeated id is answered once (idempotent).
                        broker.client.publish(topic, json.dumps(request), qos=1)
                    return found

                answer = await until("the acknowledgement answered", answered, log)
                assert answer["status"] == 200, answer
                await until("the simulator's log of the acknowledgement",
                            lambda: f'alarm acknowledged condition=TemperatureHigh comment="{COMMENT}"'
                            in sim.stderr_tail(100_000), log)
                await limit.write_value(ua.DataValue(ua.Variant(1000.0, ua.VariantType.Float)))
                await until("the clear event", lambda: any(e.get("active") is False for e in broker.events()), log)
            assert proc.returncode == 0, log.read_text(errors="replace")[-3000:]
    finally:
        broker.stop()
        mosquitto.stop()
    return tmp / "out-events", broker.events(), log.read_text(errors="replace"), sim.stderr_tail(1_000_000)


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory, launch_simulator) -> tuple[Path, list[dict[str, Any]], str, str]:
    sim = launch_simulator("--security", "None")
    return asyncio.run(scenario(tmp_path_factory.mktemp("events"), sim))


COLUMNS = ["time", "plc", "group", "event_id", "event_type", "source_node", "source_name", "severity",
           "message", "condition_id", "condition_name", "retain", "active", "acked", "comment"]


def rows_pyarrow(events_dir: Path) -> list[dict[str, Any]]:
    table = ds.dataset(events_dir, format="parquet", partitioning="hive").to_table()
    assert table.schema.field("time").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("event_id").type == pa.binary()
    assert table.schema.field("severity").type == pa.uint16()
    assert table.schema.field("condition_id").type == pa.dictionary(pa.int32(), pa.string())
    return table.sort_by("time").select(COLUMNS).to_pylist()


def rows_duckdb(events_dir: Path) -> list[dict[str, Any]]:
    con = duckdb.connect()
    quoted = ", ".join(f'"{c}"' for c in COLUMNS)  # `group` is an SQL keyword
    cur = con.execute(
        f"SELECT {quoted} FROM read_parquet('{events_dir}/**/*.parquet', hive_partitioning = true) "
        "ORDER BY time"
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def rows_polars(events_dir: Path) -> list[dict[str, Any]]:
    frame = pl.read_parquet(f"{events_dir}/**/*.parquet", hive_partitioning=True).sort("time")
    return frame.select(COLUMNS).to_dicts()


def normalized(rows: list[dict[str, Any]]) -> list[tuple]:
    """What every reader must agree on (times as µs since the epoch, ids as bytes)."""
    out = []
    for r in rows:
        t = r["time"]
        micros = int(t.timestamp()) * 1_000_000 + t.microsecond
        out.append((micros, *(bytes(r[c]) if c == "event_id" else r[c] for c in COLUMNS[1:])))
    return out


def test_the_acknowledgement_from_the_cloud_reached_the_plc(landed) -> None:
    _, _, log, sim_log = landed
    acks = [line for line in sim_log.splitlines() if "alarm acknowledged" in line]
    assert len(acks) == 1, f"{acks}\n{log[-3000:]}"
    assert f'condition=TemperatureHigh comment="{COMMENT}"' in acks[0]


def test_alarm_events_land_in_order_with_their_fields(landed) -> None:
    events_dir, telemetry, log, _ = landed
    rows = rows_pyarrow(events_dir)
    states = [(r["active"], r["acked"], r["retain"], r["message"]) for r in rows]
    assert states == [
        (True, False, True, RAISED),
        (True, True, True, f"Acknowledged: {COMMENT}"),
        (False, True, False, CLEARED),
    ], f"{rows}\n{log[-3000:]}"
    for r in rows:
        assert (r["plc"], r["group"], r["severity"], r["event_type"]) == ("sim", "alarms", 700, "i=2915")
        assert r["condition_id"] == f"nsu={NS_URI};s=Filler.TemperatureHigh"
        assert (r["condition_name"], r["source_name"]) == ("TemperatureHigh", "Filler")
        assert r["source_node"] == f"nsu={NS_URI};s=Filler"
    assert rows[1]["comment"] == COMMENT
    assert len({r["event_id"] for r in rows}) == 3
    # The telemetry carried the same events, ids in base64.
    assert [e["message"] for e in telemetry] == [r["message"] for r in rows]
    assert [base64.b64decode(e["event_id"]) for e in telemetry] == [r["event_id"] for r in rows]


def test_duckdb_and_polars_read_the_same_events(landed) -> None:
    events_dir, _, _, _ = landed
    expected = normalized(rows_pyarrow(events_dir))
    assert normalized(rows_duckdb(events_dir)) == expected
    assert normalized(rows_polars(events_dir)) == expected
