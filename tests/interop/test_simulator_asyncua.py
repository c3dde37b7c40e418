"""Independent-client interop: python-asyncua against the Rust `opcua-simulator` binary.

Every wait is a poll loop with a deadline; nothing sleeps a fixed time to synchronise.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto import security_policies

from conftest import Simulator, make_client
from interop_helpers import (
    COUNTERS,
    EXPECTED_TYPES,
    MACHINES,
    NS_URI,
    OPERATOR_PASSWORD,
    OPERATOR_USER,
    REQUIRED_BUILTIN_TYPES,
    DataTypeResolver,
    browse_variables,
    code_name,
    read_attribute_batched,
    sid,
    wait_until,
    write_status,
)

# A read-only variable answers BadNotWritable (not BadUserAccessDenied: no user may write it).
NOT_WRITABLE = ua.StatusCodes.BadNotWritable

MIN_GOOD_VARIABLES = 60
MAX_NON_GOOD_VARIABLES = 1  # the model has one node that cycles Uncertain/Bad by design


def test_stdout_carries_only_the_endpoint_line(simulator: Simulator) -> None:
    lines = list(simulator.stdout_lines)
    assert lines == [f"endpoint: {simulator.url}"], f"simulator stdout is {lines!r}; the contract is one endpoint line"


# --------------------------------------------------------------------------------------------
# Browse and read every variable
# --------------------------------------------------------------------------------------------


async def test_browse_and_read_every_variable(client: Client, ns: int) -> None:
    objects_children = {n.nodeid for n in await client.nodes.objects.get_children()}
    line = client.get_node(sid(ns, "BottlingLine"))
    assert line.nodeid in objects_children, "BottlingLine is not referenced from the Objects folder"
    line_children = {n.nodeid for n in await line.get_children()}
    for machine in MACHINES:
        assert sid(ns, machine) in line_children, f"{machine} is not a child of BottlingLine"

    variables, _methods = await browse_variables(line)
    data_vars = [v for v in variables if not v.is_property]
    assert len(data_vars) >= 64, f"browse found only {len(data_vars)} variables under BottlingLine"

    nodeids = [v.node.nodeid for v in variables]
    read = client.uaclient.read_attributes
    values = await read_attribute_batched(read, nodeids, ua.AttributeIds.Value)
    dtypes = await read_attribute_batched(read, nodeids, ua.AttributeIds.DataType)
    ranks = await read_attribute_batched(read, nodeids, ua.AttributeIds.ValueRank)
    assert len(values) == len(dtypes) == len(ranks) == len(variables)

    resolver = DataTypeResolver(client.get_node)
    good = 0
    non_good: list[str] = []
    mismatches: list[str] = []
    types_seen: set[ua.VariantType] = set()
    arrays_seen: list[str] = []
    for var, dv, dt_dv, rank_dv in zip(variables, values, dtypes, ranks, strict=True):
        assert dt_dv.StatusCode.is_good(), f"{var}: reading DataType gave {code_name(dt_dv.StatusCode)}"
        assert rank_dv.StatusCode.is_good(), f"{var}: reading ValueRank gave {code_name(rank_dv.StatusCode)}"
        status = dv.StatusCode or ua.StatusCode()
        if status.is_good():
            good += 1
        else:
            assert status.is_uncertain() or status.is_bad(), f"{var}: odd status {code_name(status)}"
            non_good.append(f"{var} -> {code_name(status)}")
        variant = dv.Value
        if variant is None or variant.VariantType == ua.VariantType.Null:
            if status.is_good():
                mismatches.append(f"{var}: Good status but a Null value")
            continue

        expected = await resolver.variant_type(dt_dv.Value.Value)
        if expected != ua.VariantType.Variant and variant.VariantType != expected:
            mismatches.append(
                f"{var}: DataType {dt_dv.Value.Value.to_string()} expects {expected.name}, "
                f"value is {variant.VariantType.name} {variant.Value!r}"
            )
        rank = rank_dv.Value.Value
        is_array = bool(variant.is_array)
        if rank >= 0 and not is_array:
            mismatches.append(f"{var}: ValueRank {rank} but the value is a scalar {variant.Value!r}")
        if rank == -1 and is_array:
            mismatches.append(f"{var}: ValueRank -1 (scalar) but the value is an array")
        if status.is_good() and not var.is_property:
            types_seen.add(variant.VariantType)
            if is_array:
                arrays_seen.append(var.browse_path)

    assert not mismatches, "value/DataType mismatches:\n" + "\n".join(mismatches)
    assert good >= MIN_GOOD_VARIABLES, f"only {good} of {len(variables)} variables read Good: {non_good}"
    assert len(non_good) <= MAX_NON_GOOD_VARIABLES, f"too many non-Good variables: {non_good}"
    missing = {t.name for t in REQUIRED_BUILTIN_TYPES - types_seen}
    assert not missing, f"no Good variable carries built-in type(s) {sorted(missing)}"
    assert arrays_seen, "no variable under BottlingLine holds an array value"

    for name, expected in EXPECTED_TYPES.items():
        dv = await client.get_node(sid(ns, name)).read_data_value()
        assert dv.StatusCode.is_good(), f"{name}: {code_name(dv.StatusCode)}"
        assert dv.Value.VariantType == expected, f"{name} is {dv.Value.VariantType.name}, expected {expected.name}"


# --------------------------------------------------------------------------------------------
# Subscription to the five counters
# --------------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.values: dict[ua.NodeId, list[Any]] = {}
        self.types: dict[ua.NodeId, set[ua.VariantType]] = {}
        self.bad: list[str] = []

    def datachange_notification(self, node, val, data) -> None:
        dv = data.monitored_item.Value
        self.values.setdefault(node.nodeid, []).append(val)
        if not dv.StatusCode.is_good():
            self.bad.append(f"{node}: {code_name(dv.StatusCode)}")
        self.types.setdefault(node.nodeid, set()).add(dv.Value.VariantType)

    def changes(self, nodeid: ua.NodeId) -> int:
        vals = self.values.get(nodeid, [])
        return sum(1 for a, b in zip(vals, vals[1:]) if a != b)


async def test_counter_subscription(client: Client, ns: int) -> None:
    running = await client.get_node(sid(ns, "Filler.Running")).read_value()
    assert running is True, f"Filler.Running is {running!r}; the line should run from start-up"

    recorder = Recorder()
    sub = await client.create_subscription(100, recorder)
    try:
        nodes = {name: client.get_node(sid(ns, name)) for name in COUNTERS}
        # sampling interval 0 = fastest the server supports, with a queue so that no
        # increment of BottlesFilled is dropped between two publish cycles.
        handles = await sub.subscribe_data_change(list(nodes.values()), sampling_interval=0, queuesize=100)
        for name, handle in zip(nodes, handles, strict=True):
            assert isinstance(handle, int), f"monitored item for {name} refused: {handle}"

        def enough() -> bool:
            return all(recorder.changes(n.nodeid) >= 3 for n in nodes.values())

        deadline = time.monotonic() + 30.0
        while not enough() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        counts = {name: recorder.changes(n.nodeid) for name, n in nodes.items()}
        assert enough(), f"counters did not each change 3 times within 30 s: {counts}"
    finally:
        await sub.delete()

    assert not recorder.bad, f"non-Good notifications: {recorder.bad}"
    for name, node in nodes.items():
        assert recorder.types[node.nodeid] == {COUNTERS[name]}, (
            f"{name} notified as {sorted(t.name for t in recorder.types[node.nodeid])}, "
            f"expected {COUNTERS[name].name}"
        )

    filled = recorder.values[nodes["Filler.BottlesFilled"].nodeid]
    gaps = [(a, b) for a, b in zip(filled, filled[1:]) if b != a + 1]
    assert not gaps, f"BottlesFilled notifications not contiguous (+1 each): gaps {gaps[:10]} in {filled}"


# --------------------------------------------------------------------------------------------
# Setpoint -> speed
# --------------------------------------------------------------------------------------------


async def test_speed_follows_setpoint(client: Client, ns: int) -> None:
    setpoint = client.get_node(sid(ns, "Filler.SpeedSetpoint"))
    speed = client.get_node(sid(ns, "Filler.Speed"))
    # First drive it to 300 so that reaching 900 afterwards is a real movement.
    for target in (300.0, 900.0):
        status = await write_status(setpoint, ua.Variant(target, ua.VariantType.Double))
        assert status.is_good(), f"writing SpeedSetpoint={target} returned {code_name(status)}"
        assert await setpoint.read_value() == target
        await wait_until(
            speed.read_value,
            lambda v, t=target: isinstance(v, float) and abs(v - t) <= 0.02 * t,
            timeout=20.0,
            what=f"Filler.Speed within 2 % of {target}",
        )


# --------------------------------------------------------------------------------------------
# Refused writes
# --------------------------------------------------------------------------------------------


async def test_refused_writes_keep_previous_value(client: Client, ns: int) -> None:
    setpoint = client.get_node(sid(ns, "Filler.SpeedSetpoint"))
    speed = client.get_node(sid(ns, "Filler.Speed"))
    serial = client.get_node(sid(ns, "Filler.SerialNumber"))
    recipe = client.get_node(sid(ns, "Filler.RecipeName"))

    async def expect(node, variant: ua.Variant, code: int) -> None:
        status = await write_status(node, variant)
        assert status.value == code, (
            f"writing {variant.VariantType.name} {variant.Value!r} to {node.nodeid.to_string()} "
            f"returned {code_name(status)}, expected {code_name(code)}"
        )

    # The range is inclusive: both ends are accepted.
    for edge in (1200.0, 0.0):
        status = await write_status(setpoint, ua.Variant(edge, ua.VariantType.Double))
        assert status.is_good(), f"writing SpeedSetpoint={edge} returned {code_name(status)}"
    previous = 450.0
    status = await write_status(setpoint, ua.Variant(previous, ua.VariantType.Double))
    assert status.is_good(), f"writing SpeedSetpoint={previous} returned {code_name(status)}"

    # Out of range.
    for bad in (1200.5, -1.0, 1.0e6):
        await expect(setpoint, ua.Variant(bad, ua.VariantType.Double), ua.StatusCodes.BadOutOfRange)
        assert await setpoint.read_value() == previous, f"SpeedSetpoint changed after refused {bad}"

    # Type mismatch.
    await expect(setpoint, ua.Variant(900, ua.VariantType.Int32), ua.StatusCodes.BadTypeMismatch)
    assert await setpoint.read_value() == previous, "SpeedSetpoint changed after refused Int32 write"
    await expect(setpoint, ua.Variant("900", ua.VariantType.String), ua.StatusCodes.BadTypeMismatch)
    assert await setpoint.read_value() == previous, "SpeedSetpoint changed after refused String write"

    recipe_before = "interop-recipe"
    status = await write_status(recipe, ua.Variant(recipe_before, ua.VariantType.String))
    assert status.is_good(), f"writing RecipeName returned {code_name(status)}"
    assert await recipe.read_value() == recipe_before
    await expect(recipe, ua.Variant(42, ua.VariantType.Int32), ua.StatusCodes.BadTypeMismatch)
    assert await recipe.read_value() == recipe_before, "RecipeName changed after refused Int32 write"

    # Not writable: a static String ...
    serial_before = await serial.read_value()
    assert isinstance(serial_before, str) and serial_before, f"SerialNumber is {serial_before!r}"
    await expect(serial, ua.Variant("TAMPERED", ua.VariantType.String), NOT_WRITABLE)
    assert await serial.read_value() == serial_before, "SerialNumber changed after refused write"

    # ... and the dynamic Speed: once settled at the setpoint it stays there.
    def near_setpoint(v: Any) -> bool:
        return isinstance(v, float) and abs(v - previous) <= 0.02 * previous

    await wait_until(speed.read_value, near_setpoint, 20.0, f"Filler.Speed within 2 % of {previous}")
    await expect(speed, ua.Variant(1111.0, ua.VariantType.Double), NOT_WRITABLE)
    after = await speed.read_value()
    assert near_setpoint(after), f"Filler.Speed is {after} after a refused write of 1111.0 (setpoint {previous})"


# --------------------------------------------------------------------------------------------
# Method call
# --------------------------------------------------------------------------------------------


async def test_reset_counters_method(client: Client, ns: int) -> None:
    filled = client.get_node(sid(ns, "Filler.BottlesFilled"))
    before, _ = await wait_until(filled.read_value, lambda v: v >= 30, 20.0, "BottlesFilled >= 30")

    request = ua.CallMethodRequest(
        ObjectId=sid(ns, "Filler"),
        MethodId=sid(ns, "Filler.ResetCounters"),
        InputArguments=[ua.Variant("interop test", ua.VariantType.String)],
    )
    [result] = await client.uaclient.call([request])

    assert result.StatusCode.is_good(), f"ResetCounters returned {code_name(result.StatusCode)}"
    bad_args = [code_name(c) for c in (result.InputArgumentResults or []) if not c.is_good()]
    assert not bad_args, f"ResetCounters rejected its input: {bad_args}"
    outputs = result.OutputArguments or []
    assert [o.VariantType for o in outputs] == [ua.VariantType.UInt32, ua.VariantType.UInt64], (
        f"ResetCounters outputs {[(o.VariantType.name, o.Value) for o in outputs]}, expected (UInt32, UInt64)"
    )
    counters_reset, previous_total = (o.Value for o in outputs)
    assert counters_reset >= 1, f"CountersReset={counters_reset}"
    assert previous_total >= before, f"PreviousTotal={previous_total} < BottlesFilled read before reset ({before})"
    # The counter keeps counting from 0, so it must read below its pre-reset value (polled: the
    # simulator may publish the reset value on its next 100 ms tick).
    await wait_until(filled.read_value, lambda v: v < before, 5.0, f"BottlesFilled < {before} after ResetCounters")


# --------------------------------------------------------------------------------------------
# Security
# --------------------------------------------------------------------------------------------

SECURE_POLICIES = [
    security_policies.SecurityPolicyBasic256Sha256,
    security_policies.SecurityPolicyAes128Sha256RsaOaep,
    security_policies.SecurityPolicyAes256Sha256RsaPss,
]


async def test_endpoints_offered(simulator: Simulator) -> None:
    endpoints = await make_client(simulator.url).connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints}
    expected = {(security_policies.SecurityPolicyNone.URI, ua.MessageSecurityMode.None_)}
    for policy in SECURE_POLICIES:
        for mode in (ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt):
            expected.add((policy.URI, mode))
    assert expected <= offered, f"endpoints missing: {sorted(str(x) for x in expected - offered)}"
    for e in endpoints:
        kinds = {t.TokenType for t in e.UserIdentityTokens}
        assert ua.UserTokenType.UserName in kinds, f"{e.SecurityPolicyUri} {e.SecurityMode} offers no UserName token"
        assert ua.UserTokenType.Anonymous in kinds, f"{e.SecurityPolicyUri} {e.SecurityMode} offers no Anonymous token"


async def _secure_client(url: str, cert_key, policy, user: str, password: str) -> Client:
    cert, key = cert_key
    c = make_client(url)
    c.set_user(user)
    c.set_password(password)
    await c.set_security(policy, str(cert), str(key), mode=ua.MessageSecurityMode.SignAndEncrypt)
    return c


@pytest.mark.parametrize("policy", SECURE_POLICIES, ids=lambda p: p.URI.rsplit("#", 1)[-1])
async def test_secure_user_session_reads_serial(simulator: Simulator, client_certificate, policy) -> None:
    c = await _secure_client(simulator.url, client_certificate, policy, OPERATOR_USER, OPERATOR_PASSWORD)
    async with c:
        assert c.security_policy.URI == policy.URI
        assert c.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        idx = await c.get_namespace_index(NS_URI)
        dv = await c.get_node(sid(idx, "Filler.SerialNumber")).read_data_value()
        assert dv.StatusCode.is_good(), f"SerialNumber read gave {code_name(dv.StatusCode)}"
        assert dv.Value.VariantType == ua.VariantType.String and dv.Value.Value, f"SerialNumber: {dv.Value!r}"


REFUSED_IDENTITY = {
    ua.StatusCodes.BadUserAccessDenied,
    ua.StatusCodes.BadIdentityTokenRejected,
    ua.StatusCodes.BadIdentityTokenInvalid,
}


@pytest.mark.parametrize(
    ("user", "password"),
    [(OPERATOR_USER, "not-the-password"), ("intruder", OPERATOR_PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
async def test_bad_credentials_refused(simulator: Simulator, client_certificate, user: str, password: str) -> None:
    policy = security_policies.SecurityPolicyBasic256Sha256
    c = await _secure_client(simulator.url, client_certificate, policy, user, password)
    with pytest.raises(ua.UaStatusCodeError) as refused:
        async with c:
            await c.get_namespace_index(NS_URI)
    assert refused.value.code in REFUSED_IDENTITY, f"refused with {code_name(refused.value.code)}"


async def test_no_anonymous_refuses_anonymous(launch_simulator, client_certificate) -> None:
    sim = launch_simulator("--no-anonymous", "--user", f"{OPERATOR_USER}:{OPERATOR_PASSWORD}")
    endpoints = await make_client(sim.url).connect_and_get_server_endpoints()
    for e in endpoints:
        kinds = {t.TokenType for t in e.UserIdentityTokens}
        assert ua.UserTokenType.Anonymous not in kinds, f"--no-anonymous still offers Anonymous on {e.EndpointUrl}"
    anonymous = make_client(sim.url)
    with pytest.raises(ua.UaStatusCodeError) as refused:
        async with anonymous:
            await anonymous.get_namespace_index(NS_URI)
    assert refused.value.code in REFUSED_IDENTITY, (
        f"anonymous session refused with {code_name(refused.value.code)}"
    )
    # ... while the operator still gets in.
    policy = security_policies.SecurityPolicyBasic256Sha256
    c = await _secure_client(sim.url, client_certificate, policy, OPERATOR_USER, OPERATOR_PASSWORD)
    async with c:
        idx = await c.get_namespace_index(NS_URI)
        assert isinstance(await c.get_node(sid(idx, "Filler.SerialNumber")).read_value(), str)
