"""`opcua-connector dtdl` through an independent DTDL parser.

Microsoft's DTDL parser (DTDLParser for .NET, compiled to WebAssembly and shipped on npm as
@digicatapult/dtdl-parser, installed by tests/run into tests/node) parses the Interface the
connector prints for every file in configs/ (offline: no PLC), and for a line on the bundled
simulator, whose method arguments the connector reads from the PLC. Beside the parser, the
JSON-LD shape is checked here: the DTDL v3 context, the element types DTDL v3 has, names as
DTDL allows them and unique among the contents.

Nothing is skipped: a missing parser (npm ci not run) fails the tests.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from interop_helpers import REPO_ROOT, connector_binary

CHECKER = REPO_ROOT / "tests" / "node" / "dtdl_check.mjs"
PARSER = REPO_ROOT / "tests" / "node" / "node_modules" / "@digicatapult" / "dtdl-parser"
NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?$")
DTMI = re.compile(r"^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*;[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,5})?$")
# What "@type" may say in DTDL v3 (no extensions are used).
V3_TYPES = {
    "Interface", "Telemetry", "Property", "Command", "CommandRequest", "CommandResponse",
    "Object", "Array", "Enum", "Map",
}
V3_PRIMITIVES = {"boolean", "date", "dateTime", "double", "duration", "float", "integer", "long", "string", "time"}
DEADLINE_S = 60


def configs() -> list[Path]:
    return sorted((REPO_ROOT / "configs").glob("*.toml"))


def dtdl(config: Path, *extra: str) -> tuple[dict[str, Any], str]:
    """`opcua-connector dtdl --config CONFIG`: the model and the notes on stderr."""
    proc = subprocess.run([str(connector_binary()), "dtdl", "--config", str(config), *extra],
                          capture_output=True, timeout=DEADLINE_S, stdin=subprocess.DEVNULL)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 0, f"dtdl on {config} exited {proc.returncode}\n{stderr}"
    return json.loads(proc.stdout), stderr


def parse_with_microsofts_parser(model: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The elements Microsoft's parser found: {"parser": ..., "elements": [...]}."""
    if not PARSER.is_dir():
        pytest.fail(f"{PARSER} is missing: run `npm ci` in tests/node (tests/run does)")
    path = tmp / "model.json"
    path.write_text(json.dumps(model, indent=2), encoding="utf-8")
    proc = subprocess.run(["node", str(CHECKER), str(path)], capture_output=True,
                          timeout=DEADLINE_S, cwd=CHECKER.parent, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, (
        f"Microsoft's DTDL parser refused the model:\n{proc.stderr.decode('utf-8', 'replace')}\n"
        f"model:\n{path.read_text(encoding='utf-8')}"
    )
    return json.loads(proc.stdout)


def check_shape(model: dict[str, Any]) -> None:
    """JSON-LD as DTDL v3 wants it, checked without the parser."""
    assert model["@context"] == "dtmi:dtdl:context;3"
    assert model["@type"] == "Interface"
    assert DTMI.match(model["@id"]) and len(model["@id"]) <= 128, model["@id"]
    names = [c["name"] for c in model["contents"]]
    assert len(names) == len(set(names)), f"names repeat: {names}"

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "@type" in node:
                assert node["@type"] in V3_TYPES, f"{where}: @type {node['@type']!r}"
            for key, value in node.items():
                if key == "name":
                    assert NAME.match(value) and len(value) <= 64, f"{where}: name {value!r}"
                elif key in ("description", "comment"):
                    assert isinstance(value, str) and len(value) <= 512, f"{where}.{key}"
                elif key in ("schema", "elementSchema") and isinstance(value, str):
                    assert value in V3_PRIMITIVES, f"{where}.{key}: {value!r}"
                elif key == "fields":
                    field_names = [f["name"] for f in value]
                    assert len(field_names) == len(set(field_names)), f"{where}: {field_names}"
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(model, "model")


def kinds(parsed: dict[str, Any]) -> set[tuple[str, str]]:
    return {(e["kind"], e["name"]) for e in parsed["elements"] if e["name"]}


@pytest.mark.parametrize("config", configs(), ids=lambda p: p.name)
def test_every_config_gives_a_model_microsofts_parser_accepts(config: Path, tmp_path: Path) -> None:
    model, notes = dtdl(config, "--offline")
    check_shape(model)
    parsed = parse_with_microsofts_parser(model, tmp_path)
    interface = [e for e in parsed["elements"] if e["kind"] == "Interface"]
    assert [(e["id"], e["dtdl"]) for e in interface] == [(model["@id"], 3)]
    found = kinds(parsed)
    for c in model["contents"]:
        assert (c["@type"], c["name"]) in found, f"the parser did not find {c['@type']} {c['name']}"
    # Offline: every method's arguments are unknown, and said so.
    for c in model["contents"]:
        if c["@type"] == "Command":
            assert "request" not in c
            assert f'"{c["name"]}"' in notes and "--offline" in notes, notes


def test_demo_model_lists_its_streams_writes_and_methods(tmp_path: Path) -> None:
    model, notes = dtdl(REPO_ROOT / "configs" / "demo.toml", "--offline")
    # demo.toml has no [hub] model_id: one is made from the line's site and id.
    assert model["@id"] == "dtmi:opcua_connector:demo_plant:bottling_demo;1"
    assert "[hub] model_id is not set" in notes
    contents = {c["name"]: c for c in model["contents"]}
    assert contents["line1_fast"]["@type"] == "Telemetry"
    assert contents["line1_process"]["@type"] == "Telemetry"
    assert contents["fillerSpeedSetpoint"]["schema"] == "double"
    assert contents["fillerSpeedSetpoint"]["writable"] is True
    assert "from 0 to 1200" in contents["fillerSpeedSetpoint"]["description"]
    assert contents["coolingValve"]["schema"] == "boolean"
    assert contents["resetCounters"]["@type"] == "Command"


def test_method_arguments_read_from_the_simulator_parse(simulator, tmp_path: Path) -> None:
    config = tmp_path / "line.toml"
    config.write_text(
        f'[line]\nid = "line-s"\n\n[[plc]]\nid = "sim"\nendpoint = "{simulator.url}"\n\n'
        f'[pki]\ndir = "{tmp_path / "pki"}"\ntrust_unknown_servers = true\n\n'
        '[[method]]\nname = "resetCounters"\nplc = "sim"\n'
        'object = "nsu=urn:opcua-connector:bottling-line;s=Filler"\n'
        'method = "nsu=urn:opcua-connector:bottling-line;s=Filler.ResetCounters"\n',
        encoding="utf-8",
    )
    model, notes = dtdl(config, "--timeout", "10s")
    check_shape(model)
    reset = next(c for c in model["contents"] if c["name"] == "resetCounters")
    request = {f["name"]: f["schema"] for f in reset["request"]["schema"]["fields"]}
    response = {f["name"]: f["schema"] for f in reset["response"]["schema"]["fields"]}
    assert request == {"Reason": "string"}, notes
    assert response == {"CountersReset": "long", "PreviousTotal": "long"}
    found = kinds(parse_with_microsofts_parser(model, tmp_path))
    assert {("CommandRequest", "arguments"), ("CommandResponse", "outputs"), ("Field", "Reason"),
            ("Field", "CountersReset"), ("Field", "PreviousTotal")} <= found


def test_connector_status_parses_as_a_read_only_property(tmp_path: Path) -> None:
    """`[hub] status_interval`: the reported `connectorStatus` (an Object with a Map of the
    PLC sessions and an Enum) is in the model, and Microsoft's parser takes it."""
    config = tmp_path / "line.toml"
    config.write_text(
        '[line]\nid = "line-h"\n\n[[plc]]\nid = "filler"\nendpoint = "opc.tcp://127.0.0.1:4840"\n\n'
        '  [[plc.group]]\n  name = "fast"\n  publishing_interval = "1s"\n'
        '  nodes = ["nsu=urn:x;s=Speed"]\n\n'
        '[hub]\ninsecure_endpoint = "127.0.0.1:1883"\nconnection_string_env = "HUB_CS"\n'
        'status_interval = "30s"\n',
        encoding="utf-8",
    )
    model, _ = dtdl(config, "--offline")
    check_shape(model)
    status = next(c for c in model["contents"] if c["name"] == "connectorStatus")
    assert status["@type"] == "Property" and status["writable"] is False
    found = kinds(parse_with_microsofts_parser(model, tmp_path))
    assert {("Property", "connectorStatus"), ("Field", "plcs"), ("Field", "backlog"),
            ("Field", "oldest_s")} <= found, found
