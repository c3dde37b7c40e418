"""Shaped telemetry against an independent computation of the same run's raw Parquet rows.

The connector process subscribes to the bundled simulator (a counter at 10 values/s, a
sine at 2/s, a Float temperature, a string) with `[plc.group.telemetry] window = "5s"` and
sends telemetry to mosquitto; Parquet keeps every raw sample. DuckDB then computes every window
the telemetry carried from the Parquet rows: count, min, max, first, last and the sum (in time
order, as the connector adds) must be equal, the mean and the time-weighted mean (each value
held until the next, the previous window's last value from the window's start, a Bad value
ending what was held) within 1e-12
relative; windows start on multiples of 5 s since the epoch (UTC aligned). The string goes out
raw.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import duckdb
import paho.mqtt.client as mqtt
import pytest

from interop_helpers import NS_URI, connector_running, line_tail
from upload_helpers import Mosquitto

WINDOW_S = 5
NUMERIC = ["Filler.BottlesFilled", "Filler.FillPressure", "Filler.ProductTemperature"]
RAW = "Filler.RecipeName"


def us(text: str) -> int:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return int(t.timestamp()) * 1_000_000 + t.microsecond


async def run(tmp: Path, sim) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Path, str]:
    broker = Mosquitto(tmp)
    messages: list[dict[str, Any]] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="shaping-test")
    client.on_connect = lambda c, *_: c.subscribe("opcua/#", qos=1)
    client.on_message = lambda _c, _u, m: messages.append(json.loads(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    nodes = ", ".join(f'"nsu={NS_URI};s={n}"' for n in [*NUMERIC, RAW])
    config = tmp / "shaping.toml"
    config.write_text(
        f'[line]\nid = "shape"\n\n[[plc]]\nid = "sim"\nendpoint = "{sim.url}"\n\n'
        f'  [[plc.group]]\n  name = "g"\n  publishing_interval = "100ms"\n  sampling_interval = "0ms"\n'
        f'  nodes = [{nodes}]\n\n'
        f'    [plc.group.telemetry]\n    window = "{WINDOW_S}s"\n\n'
        + line_tail(tmp, broker.port, "2s")
    )
    log = tmp / "connector.log"
    try:
        async with connector_running(config, log) as proc:
            deadline = time.monotonic() + 60
            # Three complete windows of every numeric node.
            while True:
                done = [w for m in list(messages) for w in m.get("windows", []) if not w.get("partial")]
                if all(sum(1 for w in done if w["node"].endswith(n)) >= 3 for n in NUMERIC):
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"no three windows per node within 60 s\n{log.read_text()[-3000:]}")
                await asyncio.sleep(0.2)
        assert proc.returncode == 0, log.read_text()[-3000:]
        # The last messages (the partial windows of the stop) may still be on their way.
        deadline = time.monotonic() + 10
        while not any(w.get("partial") for m in list(messages) for w in m.get("windows", [])):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()
        broker.stop()
    windows = [w for m in messages for w in m.get("windows", [])]
    samples = [s for m in messages for s in m.get("samples", [])]
    return windows, samples, tmp / "out", log.read_text(errors="replace")


@pytest.fixture(scope="module")
def shaped(tmp_path_factory: pytest.TempPathFactory, launch_simulator):
    sim = launch_simulator("--security", "None")
    return asyncio.run(run(tmp_path_factory.mktemp("shaping"), sim))


def expected(out: Path, node: str, start: int, end: int) -> dict[str, Any]:
    """The window computed by DuckDB from the raw rows (sum in time order, as the connector)."""
    con = duckdb.connect()
    rows = con.execute(
        f"SELECT epoch_us(time) AS t, status, coalesce(value_double, CAST(value_int AS DOUBLE), CAST(value_uint AS DOUBLE)) AS v "
        f"FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true) WHERE node = ? ORDER BY t",
        [node],
    ).fetchall()
    agg = con.execute(
        f"SELECT count(*), min(v), max(v), arg_min(v, t), arg_max(v, t), "
        f"list_reduce(list(v ORDER BY t), lambda a, b: a + b) "
        f"FROM (SELECT epoch_us(time) AS t, coalesce(value_double, CAST(value_int AS DOUBLE), CAST(value_uint AS DOUBLE)) AS v "
        f"FROM read_parquet('{out}/**/*.parquet', hive_partitioning = true) "
        f"WHERE node = ? AND status = 0 AND epoch_us(time) >= ? AND epoch_us(time) < ?) WHERE v IS NOT NULL",
        [node, start, end],
    ).fetchone()
    count, vmin, vmax, first, last, total = agg
    numeric = [(t, s, v) for t, s, v in rows if v is not None]
    before = [(s, v) for t, s, v in numeric if t < start]
    inside = [(t, s, v) for t, s, v in numeric if start <= t < end]
    # Time-weighted mean of the held value; a Bad or Uncertain value ends what was held.
    held = (start, before[-1][1]) if before and before[-1][0] == 0 else None
    area, covered = 0.0, 0
    for t, st, v in inside:
        if held is not None and t > held[0]:
            area += held[1] * (t - held[0])
            covered += t - held[0]
        held = (t, v) if st == 0 else None
    if held is not None and end > held[0]:
        area += held[1] * (end - held[0])
        covered += end - held[0]
    return {"count": count, "min": vmin, "max": vmax, "first": first, "last": last, "sum": total,
            "mean": (total / count) if count else None, "twa": (area / covered) if covered else None,
            "bad": sum(1 for t, s, v in rows if s != 0 and v is not None and start <= t < end)}


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or abs(a - b) <= 1e-12 * max(abs(a), abs(b))


def test_every_complete_window_equals_the_independent_computation(shaped) -> None:
    windows, _, out, log = shaped
    complete = [w for w in windows if not w.get("partial")]
    assert len(complete) >= 3 * len(NUMERIC), log[-3000:]
    for w in complete:
        start, end = us(w["start"]), us(w["end"])
        assert start % (WINDOW_S * 1_000_000) == 0 and end - start == WINDOW_S * 1_000_000, w
        e = expected(out, w["node"], start, end)
        assert w["count"] == e["count"], (w, e)
        if e["count"] == 0:
            continue
        for k in ("min", "max", "first", "last", "sum"):
            assert w[k] == e[k], (k, w, e)
        assert close(w["mean"], e["mean"]), (w, e)
        assert close(w["twa"], e["twa"]), (w, e)
        assert w.get("bad", 0) == e["bad"], (w, e)


def test_windows_cover_every_node_and_non_numeric_samples_go_raw(shaped) -> None:
    windows, samples, _, log = shaped
    nodes = {w["node"].split(";s=")[1] for w in windows}
    assert nodes == set(NUMERIC), nodes
    assert {s["node"].split(";s=")[1] for s in samples} == {RAW}, log[-2000:]
    # At the stop the open windows went out, marked partial.
    assert any(w.get("partial") for w in windows), windows[-5:]
