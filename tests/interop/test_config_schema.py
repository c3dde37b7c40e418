"""The config schema (configs/opcua-connector.schema.json) through an independent validator.

The schema is generated from the connector's config types (`opcua-connector schema`) and
editors (Taplo / Even Better TOML) validate against it. Here python-jsonschema's Draft7Validator
checks that it is a valid draft-07 schema, that every file in configs/ follows it (parsed with
tomllib, as an editor sees it), and that typos in keys and section names and wrong values of a
fixed set are refused with an error that names them.

`OPCUA_CONNECTOR_EXTRA_CONFIGS` (colon-separated paths) names more files to validate, e.g. the
example config a package installs (/etc/opcua-connector/example.toml). Nothing is skipped: a
named file that does not exist fails its test.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from jsonschema.exceptions import ValidationError

from interop_helpers import REPO_ROOT

SCHEMA_PATH = REPO_ROOT / "configs" / "opcua-connector.schema.json"
SCHEMA_LINE = "#:schema ./opcua-connector.schema.json\n"
DEMO = REPO_ROOT / "configs" / "demo.toml"
EXTRA_ENV = "OPCUA_CONNECTOR_EXTRA_CONFIGS"
REGENERATE = "cargo run -p connector -- schema > configs/opcua-connector.schema.json"


def repo_configs() -> list[Path]:
    """configs/*.toml, and the example line the .deb installs as /etc/opcua-connector/example.toml."""
    packaged = REPO_ROOT / "connector" / "debian" / "example.toml"
    return sorted((REPO_ROOT / "configs").glob("*.toml")) + [packaged]


def extra_configs() -> list[Path]:
    return [Path(p) for p in os.environ.get(EXTRA_ENV, "").split(":") if p.strip()]


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


def where(error: ValidationError) -> str:
    """The TOML key path of an error: `plc[0].group[1].publishing_interval`."""
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def problems(validator: Draft7Validator, doc: dict[str, Any]) -> list[str]:
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{where(e)}: {e.message}" for e in errors]


def demo_with(old: str, new: str) -> dict[str, Any]:
    """configs/demo.toml with the first `old` replaced by `new`, as a user would mistype it."""
    text = DEMO.read_text(encoding="utf-8")
    assert old in text, f"{old!r} is not in {DEMO}"
    return tomllib.loads(text.replace(old, new, 1))


def with_interval(value: str) -> dict[str, Any]:
    """demo.toml with the first group's publishing_interval written as `value` (TOML)."""
    return demo_with('publishing_interval = "100ms"', f"publishing_interval = {value}")


def with_parquet(line: str) -> dict[str, Any]:
    """demo.toml with one more line in [sink.parquet]."""
    return demo_with('dir = "data/demo"', f'dir = "data/demo"\n{line}')


def test_schema_is_a_draft7_schema_naming_the_product() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft7Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert "opcua-connector" in schema["$id"] and "opcua-connector" in schema["title"]
    assert schema["additionalProperties"] is False
    assert SCHEMA_PATH.read_text(encoding="utf-8").endswith("}\n"), f"regenerate: {REGENERATE}"


def test_configs_has_the_demo_and_an_example_line() -> None:
    names = [p.name for p in repo_configs()]
    assert "demo.toml" in names and len(names) >= 2, names


def config_id(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


@pytest.mark.parametrize("path", repo_configs() + extra_configs(), ids=config_id)
def test_config_follows_the_schema(validator: Draft7Validator, path: Path) -> None:
    assert path.is_file(), f"{path} does not exist (named in {EXTRA_ENV}?)"
    text = path.read_text(encoding="utf-8")
    if path.parent == REPO_ROOT / "configs":
        assert text.startswith(SCHEMA_LINE), f"{path}: the first line is {SCHEMA_LINE.strip()!r}"
    if path.name == "example.toml":
        # Installed beside no schema: it names the copy the package installs.
        installed = "#:schema /usr/share/opcua-connector/opcua-connector.schema.json\n"
        assert text.startswith(installed), f"{path}: the first line is {installed.strip()!r}"
    found = problems(validator, tomllib.loads(text))
    assert not found, f"{path} does not follow {SCHEMA_PATH.name}:\n" + "\n".join(found)


def test_a_typo_in_a_group_key_is_refused_and_named(validator: Draft7Validator) -> None:
    doc = demo_with("publishing_interval =", "publishing_intervall =")
    found = problems(validator, doc)
    unexpected = "'publishing_intervall' was unexpected"
    assert any(p.startswith("plc[0].group[0]: ") and unexpected in p for p in found), found
    # The key it replaced is required, so that is said too.
    assert any("'publishing_interval' is a required property" in p for p in found), found


def test_a_typo_in_a_section_name_is_refused_and_named(validator: Draft7Validator) -> None:
    not_allowed = "Additional properties are not allowed"
    found = problems(validator, demo_with("[sink.parquet]", "[sink.parquett]"))
    assert found == [f"sink: {not_allowed} ('parquett' was unexpected)"], found
    found = problems(validator, demo_with("[sink.parquet]", "[sinks.parquet]"))
    assert found == [f"(top level): {not_allowed} ('sinks' was unexpected)"], found
    found = problems(validator, demo_with("[[method]]", "[[methods]]"))
    assert any("'methods' was unexpected" in p for p in found), found


def test_a_typo_in_an_inline_table_is_refused_and_named(validator: Draft7Validator) -> None:
    found = problems(validator, demo_with("recursive = true", "recursiv = true"))
    assert any(
        p.startswith("plc[0].group[1].browse[0]: ") and "'recursiv' was unexpected" in p for p in found
    ), found


def test_values_outside_a_fixed_set_are_refused(validator: Draft7Validator) -> None:
    cases = {
        'security_mode = "None"': ('security_mode = "Encrypt"', "plc[0].security_mode"),
        'type = "Double"': ('type = "double"', "write[0].type"),
        'dir = "data/demo"': ('dir = "data/demo"\ncompression = "lz4"', "sink.parquet.compression"),
    }
    for old, (new, key) in cases.items():
        found = problems(validator, demo_with(old, new))
        assert len(found) == 1 and found[0].startswith(f"{key}: "), (new, found)
        assert "is not one of" in found[0] or "is not valid under any of the given schemas" in found[0], found


def test_a_hub_model_id_must_be_a_versioned_dtmi(validator: Draft7Validator) -> None:
    hub = '\n[hub]\nconnection_string_env = "CS"\ninsecure_endpoint = "127.0.0.1:1883"\nmodel_id = "{}"\n'
    taken = {"dtmi:com:example:BottlingLine;1": True, "dtmi:com:example:X;1.2": True,
             "dtmi:com:example:BottlingLine": False, "dtmi:com:ex-ample:X;1": False,
             "dtmi:com:example_:X;1": False, "dtmi:com:example:X;0": False,
             f"dtmi:{'a' * 130};1": False}
    for value, ok in taken.items():
        doc = tomllib.loads(DEMO.read_text(encoding="utf-8") + hub.format(value))
        found = problems(validator, doc)
        assert (not found) == ok, (value, found)
        assert ok or all(p.startswith("hub.model_id: ") for p in found), found


def test_zstd_levels_and_the_fixed_compressions_are_taken(validator: Draft7Validator) -> None:
    taken = {"zstd": True, "zstd:1": True, "zstd:22": True, "none": True, "zstd:0": False, "zstd:23": False}
    for value, ok in taken.items():
        found = problems(validator, with_parquet(f'compression = "{value}"'))
        assert (not found) == ok, (value, found)


def test_bare_numbers_and_inline_secrets_are_refused(validator: Draft7Validator) -> None:
    key = "plc[0].group[0].publishing_interval"
    found = problems(validator, with_interval("100"))
    assert found == [f"{key}: 100 is not of type 'string'"], found
    found = problems(validator, with_interval('"100"'))
    assert len(found) == 1 and found[0].startswith(f"{key}: '100' does not match"), found
    password = 'auth = { username = "u", password = "secret" }'
    found = problems(validator, demo_with("# auth: anonymous (the default)", password))
    assert any(p.startswith("plc[0].auth") for p in found), found


def test_durations_and_sizes_the_loader_takes_are_taken(validator: Draft7Validator) -> None:
    """The same patterns through python's regex engine (the Rust test uses the regex crate)."""
    for duration in ["250ms", "5s", "1h 30m", "1.5h", " 5 s ", "0ms", "2days", "1µs", "10y"]:
        found = problems(validator, with_interval(f'"{duration}"'))
        assert not found, (duration, found)
    for size in ['"64MiB"', '"1.5GiB"', '"512 KiB"', '"100B"', '"1kb"', "1048576", "0"]:
        found = problems(validator, with_parquet(f"max_bytes = {size}"))
        assert not found, (size, found)
    for size in ['"1024"', '"64 parsecs"', "-1", "1.5"]:
        found = problems(validator, with_parquet(f"max_bytes = {size}"))
        assert found and found[0].startswith("sink.parquet.max_bytes: "), (size, found)
