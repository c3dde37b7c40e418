#!/usr/bin/env python3
"""Generator of the bottling-line NodeSet2 model and its simulation profile.

Edit this file and rerun it (`python3 nodesets/tools/gen_bottling_line.py`) rather than
hand-editing the XML: python-asyncua reads compact one-line complex values as null, so the
layout matters. Writes, next to this folder:
  nodesets/bottling-line.NodeSet2.xml
  nodesets/bottling-line.sim.toml
Everything here is our own model; nothing is copied from published nodesets.
"""
import base64
import os
import hashlib
from xml.sax.saxutils import escape, quoteattr

NS_URI = "urn:opcua-connector:bottling-line"
NSU = f"nsu={NS_URI}"
_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_XML = os.path.join(_HERE, "bottling-line.NodeSet2.xml")
OUT_TOML = os.path.join(_HERE, "bottling-line.sim.toml")
INITIAL_TIME = "2025-01-01T06:00:00Z"

# ---------------------------------------------------------------- data types
DT = {  # name -> (numeric id, uax element)
    "Boolean": 1, "Int16": 4, "UInt16": 5, "Int32": 6, "UInt32": 7, "Int64": 8, "UInt64": 9,
    "Float": 10, "Double": 11, "String": 12, "DateTime": 13, "ByteString": 15,
    "LocalizedText": 21,
}
# Structure data types of the model (subtypes of Structure i=22, each with a <Definition> and a
# "Default Binary" encoding object): name -> (description, [(field, data type, value rank)]).
# A field's data type is a built-in alias or another structure of this list (by name).
STRUCTS = [
    ("FillerRecipe", "Recipe of a filling batch",
     [("Name", "String", -1), ("TargetVolume", "Double", -1)]),
    ("NozzleStatus", "State of one filling nozzle",
     [("Index", "UInt16", -1), ("FillLevel", "Double", -1), ("Ok", "Boolean", -1)]),
    ("FillerBatch", "The batch being filled: recipe and nozzle states",
     [("Id", "String", -1), ("Count", "UInt32", -1), ("Recipe", "FillerRecipe", -1),
      ("Nozzles", "NozzleStatus", 1)]),
]
STRUCT_NAMES = {name for name, _, _ in STRUCTS}


def struct_id(name):
    return f"ns=1;s={name}"


INTEGER = {"Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64"}
FLOATING = {"Float", "Double"}

# UN/CEFACT units: key -> (common code, display name, description)
UNITS = {
    "per_min": ("C94", "1/min", "per minute (bottles or revolutions per minute)"),
    "degC": ("CEL", "°C", "degree Celsius"),
    "bar": ("BAR", "bar", "bar (gauge pressure)"),
    "ml": ("MLT", "ml", "millilitre"),
    "percent": ("P1", "%", "percent"),
    "ampere": ("AMP", "A", "ampere"),
    "kwh": ("KWH", "kWh", "kilowatt hour"),
    "newton_metre": ("NU", "N·m", "newton metre"),
    "m_per_s": ("MTS", "m/s", "metre per second"),
    "newton": ("NEW", "N", "newton"),
    "metre": ("MTR", "m", "metre"),
    "mm": ("MMT", "mm", "millimetre"),
}


def unit_id(code: str) -> int:
    """OPC UA Part 8: UnitId = the common code's ASCII bytes packed big-endian."""
    uid = 0
    for ch in code:
        uid = (uid << 8) | ord(ch)
    return uid


def fingerprint(seed: str, n: int = 16) -> bytes:
    return hashlib.sha256(seed.encode()).digest()[:n]


# ---------------------------------------------------------------- variable table
class V:
    def __init__(self, name, dt, init, sim, group, desc, access=1, analog=None, arr=None,
                 status=None, spike=None):
        self.name, self.dt, self.init, self.sim, self.group = name, dt, init, sim, group
        self.desc, self.access, self.analog, self.arr, self.status = desc, access, analog, arr, status
        # scripted spike overlay of the profile (a dict of the `spike` keys), or None
        self.spike = spike


def common_vars(machine, serial, state_steps, status_texts, slow="slow"):
    m = machine.lower()
    return [
        V("State", "Int32", state_steps[0], {"kind": "steps", "values": state_steps}, slow,
          "Machine state code: 0 Stopped, 1 Starting, 2 Running, 3 Blocked, 4 Starved, 5 Faulted"),
        V("StatusText", "LocalizedText", status_texts[0], {"kind": "strings", "values": status_texts}, slow,
          "Human readable status of the machine"),
        V("LastChange", "DateTime", INITIAL_TIME, {"kind": "clock"}, slow,
          "Time of the last state evaluation"),
        V("Running", "Boolean", True, {"kind": "constant", "value": True}, "static",
          "True while the machine is started (set by the Start and Stop methods)"),
        V("SerialNumber", "String", serial, {"kind": "constant", "value": serial}, "static",
          "Manufacturer serial number"),
        V("Fingerprint", "ByteString", fingerprint(f"{m}-fingerprint"), {"kind": "bytes", "len": 16}, slow,
          "Controller program fingerprint (16 bytes)"),
    ]


MACHINES = {}

MACHINES["Filler"] = dict(
    type_name="FillerType", type_id=1001, child_base=1200,
    desc="Rotary filler that fills bottles with product",
    rates={"fast": "100ms", "process": "500ms", "slow": "2s", "setpoints": "1s", "static": "10s"},
    vars=common_vars("Filler", "FIL-2024-000417", [2, 2, 2, 2, 3, 2, 2, 4, 2, 2],
                     ["Running", "Running", "Running", "Blocked by capper", "Running", "Starved: low bottle supply"]) + [
        V("SpeedSetpoint", "Double", 600.0, {"kind": "setpoint", "value": 600.0, "min": 0.0, "max": 1200.0},
          "setpoints", "Filling speed setpoint in bottles per minute", access=3, analog=(0.0, 1200.0, "per_min")),
        V("Speed", "Double", 600.0,
          {"kind": "follow", "source": "Filler.SpeedSetpoint", "time_constant": "1s", "noise": 2.0},
          "fast", "Actual filling speed in bottles per minute (follows SpeedSetpoint)",
          analog=(0.0, 1200.0, "per_min")),
        V("BottlesFilled", "UInt64", 0, {"kind": "counter", "start": 0, "step": 1}, "fast",
          "Total bottles filled"),
        V("BottlesRejected", "UInt32", 0, {"kind": "counter", "start": 0, "step": 1}, "fast",
          "Total bottles rejected by the fill level inspection"),
        V("RecipeName", "String", "Still water 0.5 l PET",
          {"kind": "constant", "value": "Still water 0.5 l PET"}, "static",
          "Active product recipe", access=3),
        V("ProductTemperature", "Float", 12.5,
          {"kind": "sine", "amplitude": 0.8, "offset": 12.5, "period": "120s", "noise": 0.05}, "slow",
          "Product temperature at the filler bowl", analog=(-10.0, 60.0, "degC"),
          spike={"every": "120s", "at": "60s", "add": 6.0, "length": "20s", "noise": 0.4}),
        V("FillVolume", "Double", 500.0,
          {"kind": "random_walk", "start": 500.0, "step": 0.2, "min": 495.0, "max": 505.0}, "process",
          "Measured fill volume of the last bottle", analog=(0.0, 1000.0, "ml")),
        V("FillPressure", "Double", 2.5,
          {"kind": "sine", "amplitude": 0.15, "offset": 2.5, "period": "5s", "noise": 0.01}, "process",
          "Product pressure in the filler bowl", analog=(0.0, 6.0, "bar")),
        V("TankLevel", "Double", 20.0, {"kind": "ramp", "from": 20.0, "to": 95.0, "period": "300s"}, "process",
          "Buffer tank level", analog=(0.0, 100.0, "percent")),
        V("ActiveNozzles", "Int16", 24, {"kind": "steps", "values": [24, 24, 23, 24, 22, 24]}, "slow",
          "Number of filling nozzles in service"),
        V("NozzleFillLevels", "Double", [500.0 + i for i in range(8)],
          {"kind": "sine", "amplitude": 1.5, "offset": 500.0, "period": "4s"}, "process",
          "Fill volume per nozzle in ml (element i = value + i)", arr=8),
        V("NozzleCycleCounts", "Int32", [0 + i for i in range(8)],
          {"kind": "counter", "start": 0, "step": 1}, "fast",
          "Fill cycles per nozzle (element i = value + i)", arr=8),
        V("MotorCurrent", "Float", 12.0,
          {"kind": "random_walk", "start": 12.0, "step": 0.3, "min": 8.0, "max": 18.0}, "process",
          "Main drive motor current", analog=(0.0, 40.0, "ampere")),
        V("EnergyConsumed", "Double", 0.0, {"kind": "ramp", "from": 0.0, "to": 250.0, "period": "3600s"},
          "process", "Energy consumed in the current shift", analog=(0.0, 1000.0, "kwh")),
        V("Batch", struct_id("FillerBatch"), None, {"kind": "batch"}, "process",
          "Current batch (structure FillerBatch; no value until the first update)"),
        V("NozzleStatus", struct_id("NozzleStatus"), None, {"kind": "nozzle_status"}, "process",
          "State of the first four nozzles (array of structure NozzleStatus)", arr=4),
        V("TemperatureLimit", "Float", 80.0,
          {"kind": "setpoint", "value": 80.0, "min": -50.0, "max": 1000.0}, "setpoints",
          "Alarm limit of ProductTemperature: TemperatureHigh is active while the temperature is above it",
          access=3, analog=(-50.0, 1000.0, "degC")),
        V("CoolingValve", "Boolean", False, {"kind": "constant", "value": False}, "setpoints",
          "Cooling valve of the product line: true = open", access=3),
    ],
    # alarm conditions: (name, description); the simulator drives them (see docs/simulator.md)
    conditions=[("TemperatureHigh", "Active while ProductTemperature is above TemperatureLimit")],
)

MACHINES["Capper"] = dict(
    type_name="CapperType", type_id=1002, child_base=1300,
    desc="Rotary capper that screws caps on filled bottles",
    rates={"fast": "100ms", "process": "250ms", "slow": "5s", "setpoints": "1s", "static": "10s"},
    vars=common_vars("Capper", "CAP-2023-001982", [2, 2, 2, 3, 2, 2, 2, 2],
                     ["Running", "Running", "Waiting for bottles", "Running"]) + [
        V("CapsApplied", "UInt32", 0, {"kind": "counter", "start": 0, "step": 1}, "fast",
          "Total caps applied"),
        V("CapsRejected", "UInt32", 0, {"kind": "counter", "start": 0, "step": 1, "max": 999}, "fast",
          "Caps rejected by the torque check (wraps after 999)"),
        V("TorqueSetpoint", "Double", 2.2, {"kind": "setpoint", "value": 2.2, "min": 0.5, "max": 6.0},
          "setpoints", "Capping torque setpoint", access=3, analog=(0.0, 10.0, "newton_metre")),
        V("Torque", "Double", 2.2,
          {"kind": "follow", "source": "Capper.TorqueSetpoint", "time_constant": "500ms", "noise": 0.05},
          "fast", "Measured capping torque (follows TorqueSetpoint)", analog=(0.0, 10.0, "newton_metre")),
        V("HeadSpeed", "Double", 120.0,
          {"kind": "sine", "amplitude": 5.0, "offset": 120.0, "period": "10s", "noise": 0.5}, "process",
          "Capping turret speed", analog=(0.0, 300.0, "per_min")),
        V("HeadTemperature", "Float", 38.0,
          {"kind": "sine", "amplitude": 2.0, "offset": 38.0, "period": "300s", "noise": 0.1}, "slow",
          "Capping head gearbox temperature", analog=(0.0, 120.0, "degC")),
        V("CapHopperLevel", "Int16", 70, {"kind": "random_walk", "start": 70, "step": 2, "min": 10, "max": 100},
          "process", "Cap hopper fill level in percent"),
        V("HeadTorques", "Double", [2.0 + i for i in range(6)],
          {"kind": "sine", "amplitude": 0.2, "offset": 2.0, "period": "3s"}, "process",
          "Last torque per capping head in N·m (element i = value + i)", arr=6),
        V("CapChuteEmpty", "Boolean", False, {"kind": "toggle"}, "slow",
          "Cap chute empty sensor"),
        V("CapType", "String", "38mm PCO 1881", {"kind": "constant", "value": "38mm PCO 1881"}, "static",
          "Cap format in use"),
        V("VacuumPressure", "Double", -0.65,
          {"kind": "sine", "amplitude": 0.05, "offset": -0.65, "period": "8s", "noise": 0.005}, "process",
          "Cap pick-up vacuum", analog=(-1.0, 0.0, "bar")),
    ],
)

MACHINES["Labeler"] = dict(
    type_name="LabelerType", type_id=1003, child_base=1400,
    desc="Wrap-around labeler with hot-melt glue station",
    rates={"fast": "100ms", "process": "1s", "slow": "1s", "static": "10s"},
    vars=common_vars("Labeler", "LAB-2022-000733", [2, 2, 2, 2, 2, 5, 1, 2],
                     ["Running", "Running", "Label roll splice", "Running", "Glue temperature low"]) + [
        V("LabelsApplied", "Int64", 0, {"kind": "counter", "start": 0, "step": 1}, "fast",
          "Total labels applied"),
        V("LabelsWasted", "UInt32", 0, {"kind": "counter", "start": 0, "step": 1, "max": 4999}, "fast",
          "Labels wasted at splices and rejects (wraps after 4999)"),
        V("GlueTemperature", "Float", 160.0,
          {"kind": "sine", "amplitude": 1.5, "offset": 160.0, "period": "60s", "noise": 0.1}, "slow",
          "Hot-melt glue temperature (status cycles Good/Uncertain/Bad)", analog=(0.0, 200.0, "degC"),
          status=["Good", "Good", "UncertainLastUsableValue", "BadNoCommunication"]),
        V("LabelRollRemaining", "Double", 100.0, {"kind": "ramp", "from": 100.0, "to": 0.0, "period": "600s"},
          "process", "Remaining label roll", analog=(0.0, 100.0, "percent")),
        V("WebTension", "Double", 35.0,
          {"kind": "random_walk", "start": 35.0, "step": 0.5, "min": 25.0, "max": 45.0}, "process",
          "Label web tension", analog=(0.0, 100.0, "newton")),
        V("LabelPositionOffset", "Int16", 0, {"kind": "steps", "values": [0, 1, 2, 1, 0, -1, -2, -1]}, "process",
          "Label position correction in mm"),
        V("RegistrationErrors", "Int32", [0 + i for i in range(4)],
          {"kind": "steps", "values": [0, 1, 0, -1]}, "process",
          "Registration error per print mark sensor in 0.1 mm (element i = value + i)", arr=4),
        V("ActiveStation", "String", "Station A", {"kind": "strings", "values": ["Station A", "Station B"]},
          "slow", "Label unwind station in use"),
        V("DrumSpeed", "Double", 450.0,
          {"kind": "sine", "amplitude": 10.0, "offset": 450.0, "period": "20s", "noise": 1.0}, "process",
          "Vacuum drum speed", analog=(0.0, 1000.0, "per_min")),
        V("GlueLevelLow", "Boolean", False, {"kind": "toggle"}, "slow",
          "Glue tank level low warning"),
        V("LabelsPerRoll", "UInt32", 5000, {"kind": "constant", "value": 5000}, "static",
          "Labels on a full roll"),
    ],
)

MACHINES["Conveyor"] = dict(
    type_name="ConveyorType", type_id=1004, child_base=1500,
    desc="Bottle conveyor linking filler, capper and labeler",
    rates={"fast": "100ms", "process": "200ms", "slow": "3s", "setpoints": "1s", "static": "10s"},
    vars=common_vars("Conveyor", "CNV-2021-004410", [2, 2, 3, 2, 2, 2],
                     ["Running", "Accumulating", "Running", "Jam cleared"]) + [
        V("ItemsTransported", "Int32", 0, {"kind": "counter", "start": 0, "step": 1}, "fast",
          "Bottles transported"),
        V("BeltSpeedSetpoint", "Double", 1.2, {"kind": "setpoint", "value": 1.2, "min": 0.0, "max": 3.0},
          "setpoints", "Belt speed setpoint", access=3, analog=(0.0, 3.0, "m_per_s")),
        V("BeltSpeed", "Double", 1.2,
          {"kind": "follow", "source": "Conveyor.BeltSpeedSetpoint", "time_constant": "1s", "noise": 0.005},
          "fast", "Actual belt speed (follows BeltSpeedSetpoint)", analog=(0.0, 3.0, "m_per_s")),
        V("MotorTemperature", "Float", 45.0,
          {"kind": "sine", "amplitude": 3.0, "offset": 45.0, "period": "600s", "noise": 0.1}, "slow",
          "Drive motor winding temperature", analog=(0.0, 150.0, "degC")),
        V("MotorCurrent", "Float", 4.5,
          {"kind": "random_walk", "start": 4.5, "step": 0.1, "min": 3.0, "max": 7.0}, "process",
          "Drive motor current", analog=(0.0, 20.0, "ampere")),
        V("Accumulation", "Int16", 12, {"kind": "random_walk", "start": 12, "step": 1, "min": 0, "max": 40},
          "process", "Bottles accumulated in the buffer zone"),
        V("ZoneOccupancy", "Int32", [0 + i for i in range(4)], {"kind": "steps", "values": [0, 1, 2, 1]},
          "process", "Bottles per conveyor zone (element i = value + i)", arr=4),
        V("JamDetected", "Boolean", False, {"kind": "toggle"}, "slow", "Jam detection"),
        V("PhotoEyeBlocked", "Boolean", False, {"kind": "toggle"}, "process",
          "Infeed photo eye blocked"),
        V("BeltLength", "Double", 24.5, {"kind": "constant", "value": 24.5}, "static",
          "Belt length", analog=(0.0, 100.0, "metre")),
        V("EncoderPosition", "Int64", 0, {"kind": "counter", "start": 0, "step": 25}, "fast",
          "Belt encoder position in mm"),
        V("GuideRailWidth", "UInt32", 68, {"kind": "constant", "value": 68}, "static",
          "Guide rail width in mm"),
    ],
)

MACHINE_ORDER = ["Filler", "Capper", "Labeler", "Conveyor"]

METHODS = [  # (name, description, input args, output args)
    ("Start", "Start the machine: resume its simulated groups and set Running", [], []),
    ("Stop", "Stop the machine: freeze its simulated groups and clear Running", [], []),
    ("ResetCounters", "Reset the production counters of the machine to their start values",
     [("Reason", "String", "Why the counters are reset (logged)")],
     [("CountersReset", "UInt32", "Number of counter variables that were reset"),
      ("PreviousTotal", "UInt64", "Sum of the counter values before the reset")]),
]

# ---------------------------------------------------------------- XML helpers

UAX = "http://opcfoundation.org/UA/2008/02/Types.xsd"


def pretty(fragment, ind):
    """Re-indent a compact uax:* fragment: every element with element children gets its
    children on their own lines (python asyncua reads an element-only value without
    whitespace text as null)."""
    import xml.etree.ElementTree as ET
    root = ET.fromstring(f'<w xmlns:uax="{UAX}">{fragment}</w>')
    lines = []

    def name(el):
        return "uax:" + el.tag.split("}", 1)[1]

    def rec(el, depth):
        pad = ind + "  " * depth
        kids = list(el)
        if kids:
            lines.append(f"{pad}<{name(el)}>")
            for k in kids:
                rec(k, depth + 1)
            lines.append(f"{pad}</{name(el)}>")
        elif el.text:
            lines.append(f"{pad}<{name(el)}>{escape(el.text)}</{name(el)}>")
        else:
            lines.append(f"{pad}<{name(el)} />")

    for el in root:
        rec(el, 0)
    return lines


def value_block(fragment, ind="    "):
    return [f"{ind}<Value>", *pretty(fragment, ind + "  "), f"{ind}</Value>"]

out = []


def w(line=""):
    out.append(line)


def lt(text, locale="en"):
    return f"<uax:Locale>{locale}</uax:Locale><uax:Text>{escape(text)}</uax:Text>"


def scalar_xml(dt, v):
    if dt == "Boolean":
        return f"<uax:Boolean>{'true' if v else 'false'}</uax:Boolean>"
    if dt == "LocalizedText":
        return f"<uax:LocalizedText>{lt(v)}</uax:LocalizedText>"
    if dt == "ByteString":
        return f"<uax:ByteString>{base64.b64encode(v).decode()}</uax:ByteString>"
    if dt in FLOATING:
        return f"<uax:{dt}>{float(v)!r}</uax:{dt}>"
    return f"<uax:{dt}>{escape(str(v))}</uax:{dt}>"


def value_xml(dt, v, ind):
    if isinstance(v, list):
        items = "".join(scalar_xml(dt, x) for x in v)
        return value_block(f"<uax:ListOf{dt}>{items}</uax:ListOf{dt}>", ind)
    return value_block(scalar_xml(dt, v), ind)


def argument_xml(name, dt, desc):
    return ("<uax:ExtensionObject><uax:TypeId><uax:Identifier>i=297</uax:Identifier></uax:TypeId>"
            f"<uax:Body><uax:Argument><uax:Name>{name}</uax:Name>"
            f"<uax:DataType><uax:Identifier>i={DT[dt]}</uax:Identifier></uax:DataType>"
            "<uax:ValueRank>-1</uax:ValueRank><uax:ArrayDimensions />"
            f"<uax:Description>{lt(desc)}</uax:Description>"
            "</uax:Argument></uax:Body></uax:ExtensionObject>")


def range_xml(low, high):
    # TypeId i=885 = Range_Encoding_DefaultXml (the XML encoding; i=886 is DefaultBinary)
    return ("<uax:ExtensionObject><uax:TypeId><uax:Identifier>i=885</uax:Identifier></uax:TypeId>"
            f"<uax:Body><uax:Range><uax:Low>{float(low)!r}</uax:Low><uax:High>{float(high)!r}</uax:High>"
            "</uax:Range></uax:Body></uax:ExtensionObject>")


def eu_xml(key):
    code, disp, desc = UNITS[key]
    return ("<uax:ExtensionObject><uax:TypeId><uax:Identifier>i=888</uax:Identifier></uax:TypeId>"
            "<uax:Body><uax:EUInformation>"
            "<uax:NamespaceUri>http://www.opcfoundation.org/UA/units/un/cefact</uax:NamespaceUri>"
            f"<uax:UnitId>{unit_id(code)}</uax:UnitId>"
            f"<uax:DisplayName>{lt(disp)}</uax:DisplayName>"
            f"<uax:Description>{lt(desc)}</uax:Description>"
            "</uax:EUInformation></uax:Body></uax:ExtensionObject>")


def refs_block(refs, ind):
    lines = [f"{ind}<References>"]
    for rtype, target, fwd in refs:
        inv = "" if fwd else ' IsForward="false"'
        lines.append(f'{ind}  <Reference ReferenceType="{rtype}"{inv}>{target}</Reference>')
    lines.append(f"{ind}</References>")
    return lines


def node_open(tag, nodeid, browse, parent=None, extra=""):
    p = f' ParentNodeId="{parent}"' if parent else ""
    return f'  <{tag} NodeId="{nodeid}" BrowseName="{browse}"{p}{extra}>'


def emit_node(tag, nodeid, browse, display, desc, refs, parent=None, extra="", value_lines=None):
    w(node_open(tag, nodeid, browse, parent, extra))
    w(f"    <DisplayName>{escape(display)}</DisplayName>")
    if desc:
        w(f"    <Description>{escape(desc)}</Description>")
    out.extend(refs_block(refs, "    "))
    if value_lines:
        out.extend(value_lines)
    w(f"  </{tag}>")


def var_attrs(dt, access, arr, rank_override=None):
    rank = rank_override if rank_override is not None else (1 if arr else -1)
    s = f' DataType="{dt}" ValueRank="{rank}"'
    if arr:
        s += f' ArrayDimensions="{arr}"'
    s += f' AccessLevel="{access}" UserAccessLevel="{access}"'
    return s


# ---------------------------------------------------------------- node emitters
def emit_property(nodeid, browse, parent, dt, value_lines, rule, arr=None, desc=None):
    refs = [("HasTypeDefinition", "i=68", True)]
    if rule:
        refs.append(("HasModellingRule", "i=78", True))
    refs.append(("HasProperty", parent, False))
    emit_node("UAVariable", nodeid, browse, browse, desc, refs, parent,
              var_attrs(dt, 1, arr, rank_override=1 if arr else -1), value_lines)


def emit_variable(nodeid, bname, parent, v, rule, ids_for_props, with_value):
    analog = v.analog is not None
    refs = [("HasTypeDefinition", "i=2368" if analog else "i=63", True)]
    if rule:
        refs.append(("HasModellingRule", "i=78", True))
    props = []
    if analog:
        props = [ids_for_props("EURange"), ids_for_props("EngineeringUnits")]
        refs += [("HasProperty", p, True) for p in props]
    refs.append(("HasComponent", parent, False))
    vals = value_xml(v.dt, v.init, "    ") if with_value and v.init is not None else None
    emit_node("UAVariable", nodeid, bname, v.name, v.desc, refs, parent,
              var_attrs(v.dt, v.access, v.arr), vals)
    if analog:
        low, high, unit = v.analog
        emit_property(props[0], "EURange", nodeid, "Range", value_block(range_xml(low, high)), rule)
        emit_property(props[1], "EngineeringUnits", nodeid, "EUInformation",
                      value_block(eu_xml(unit)), rule)


def emit_method(nodeid, parent, name, desc, ins, outs, rule, ids_for_args, decl=None):
    refs = []
    if rule:
        refs.append(("HasModellingRule", "i=78", True))
    arg_ids = []
    if ins:
        arg_ids.append(("InputArguments", ids_for_args("InputArguments"), ins))
    if outs:
        arg_ids.append(("OutputArguments", ids_for_args("OutputArguments"), outs))
    refs += [("HasProperty", aid, True) for _, aid, _ in arg_ids]
    refs.append(("HasComponent", parent, False))
    extra = ' Executable="true" UserExecutable="true"'
    if decl:
        extra += f' MethodDeclarationId="{decl}"'
    emit_node("UAMethod", nodeid, f"1:{name}", name, desc, refs, parent, extra)
    for bname, aid, args in arg_ids:
        items = "".join(argument_xml(*a) for a in args)
        emit_property(aid, bname, nodeid, "Argument",
                      value_block(f"<uax:ListOfExtensionObject>{items}</uax:ListOfExtensionObject>"),
                      rule, arr=str(len(args)))


def emit_struct(name, desc, fields):
    """A structure DataType (subtype of Structure) with its Definition and its "Default Binary"
    encoding object. async-opcua's importer finds the encoding by the literal BrowseName
    "Default Binary" and HasTypeDefinition i=76, so both are written exactly so."""
    tid, enc = struct_id(name), f"{struct_id(name)}.DefaultBinary"
    w(node_open("UADataType", tid, f"1:{name}"))
    w(f"    <DisplayName>{escape(name)}</DisplayName>")
    w(f"    <Description>{escape(desc)}</Description>")
    out.extend(refs_block([("HasSubtype", "i=22", False), ("HasEncoding", enc, True)], "    "))
    w(f'    <Definition Name="1:{name}">')
    for fname, fdt, rank in fields:
        # numeric ids for built-in field types (the variables' DataType attributes use aliases)
        dt = struct_id(fdt) if fdt in STRUCT_NAMES else f"i={DT[fdt]}"
        r = f' ValueRank="{rank}"' if rank != -1 else ""
        w(f'      <Field Name="{fname}" DataType="{dt}"{r} />')
    w("    </Definition>")
    w("  </UADataType>")
    emit_node("UAObject", enc, "Default Binary", "Default Binary", None,
              [("HasTypeDefinition", "i=76", True), ("HasEncoding", tid, False)],
              extra=' SymbolicName="DefaultBinary"')


class Ids:
    def __init__(self, base):
        self.next = base

    def take(self):
        nid = f"ns=1;i={self.next}"
        self.next += 1
        return nid


def emit_type(type_name, type_id, super_id, desc, vars_, methods, child_base, is_abstract=False):
    ids = Ids(child_base)
    children = []
    planned = []
    for v in vars_:
        vid = ids.take()
        props = {}
        if v.analog:
            props = {"EURange": ids.take(), "EngineeringUnits": ids.take()}
        planned.append(("var", v, vid, props))
        children.append(vid)
    mplanned = []
    for (name, mdesc, ins, outs) in methods:
        mid = ids.take()
        args = {}
        if ins:
            args["InputArguments"] = ids.take()
        if outs:
            args["OutputArguments"] = ids.take()
        mplanned.append((name, mdesc, ins, outs, mid, args))
        children.append(mid)
    tid = f"ns=1;i={type_id}"
    refs = [("HasSubtype", super_id, False)] + [("HasComponent", c, True) for c in children]
    extra = ' IsAbstract="true"' if is_abstract else ""
    w(f"  <!-- {type_name} -->")
    emit_node("UAObjectType", tid, f"1:{type_name}", type_name, desc, refs, None, extra)
    for _, v, vid, props in planned:
        emit_variable(vid, f"1:{v.name}", tid, v, True, lambda k, p=props: p[k], with_value=False)
    for name, mdesc, ins, outs, mid, args in mplanned:
        emit_method(mid, tid, name, mdesc, ins, outs, True, lambda k, a=args: a[k])
    return {name: mid for name, _, _, _, mid, _ in mplanned}


# ---------------------------------------------------------------- build the XML
def build_xml():
    w('<?xml version="1.0" encoding="utf-8"?>')
    w("<!--")
    w("  Bottling line model for the opcua-connector simulator (our own model).")
    w("  Types use numeric ids (ns=1;i=1000..); instances use string ids ns=1;s=<Machine>.<Variable>.")
    w("  Behaviour of every instance variable: bottling-line.sim.toml next to this file.")
    w("-->")
    w('<UANodeSet xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
      ' xmlns:uax="http://opcfoundation.org/UA/2008/02/Types.xsd"'
      ' xmlns="http://opcfoundation.org/UA/2011/03/UANodeSet.xsd"'
      ' LastModified="2025-01-01T00:00:00Z">')
    w("  <NamespaceUris>")
    w(f"    <Uri>{NS_URI}</Uri>")
    w("  </NamespaceUris>")
    w("  <Models>")
    w(f'    <Model ModelUri="{NS_URI}" Version="1.0.0" PublicationDate="2025-01-01T00:00:00Z">')
    w('      <RequiredModel ModelUri="http://opcfoundation.org/UA/" Version="1.04.0"'
      ' PublicationDate="2019-05-01T00:00:00Z" />')
    w("    </Model>")
    w("  </Models>")
    w("  <Aliases>")
    aliases = [(k, f"i={v}") for k, v in DT.items()] + [
        ("Argument", "i=296"), ("Range", "i=884"), ("EUInformation", "i=887"),
        ("Organizes", "i=35"), ("HasModellingRule", "i=37"), ("HasTypeDefinition", "i=40"),
        ("HasSubtype", "i=45"), ("HasProperty", "i=46"), ("HasComponent", "i=47"),
        ("HasEncoding", "i=38"), ("HasNotifier", "i=48"), ("HasCondition", "i=9006"),
    ]
    for a, nid in aliases:
        w(f'    <Alias Alias="{a}">{nid}</Alias>')
    w("  </Aliases>")

    # --- structure data types
    w("")
    w("  <!-- ============================ Structure data types ============================ -->")
    for name, desc, fields in STRUCTS:
        emit_struct(name, desc, fields)

    # --- types
    common = MACHINES["Filler"]["vars"][:6]  # identical declarations on every machine
    w("")
    w("  <!-- ============================ Object types ============================ -->")
    type_methods = emit_type("MachineType", 1000, "i=58",
                             "Common base type of every machine of the bottling line",
                             common, METHODS, 1100, is_abstract=True)
    for mname in MACHINE_ORDER:
        m = MACHINES[mname]
        own = m["vars"][6:]
        emit_type(m["type_name"], m["type_id"], "ns=1;i=1000", m["desc"], own, [], m["child_base"])

    # --- instances
    w("")
    w("  <!-- ============================ Instances ============================ -->")
    machine_ids = [f"ns=1;s={m}" for m in MACHINE_ORDER]
    emit_node("UAObject", "ns=1;s=BottlingLine", "1:BottlingLine", "BottlingLine",
              "Bottling line: filler, capper, labeler and conveyor",
              [("HasTypeDefinition", "i=61", True), ("Organizes", "i=85", False)]
              + [("Organizes", mid, True) for mid in machine_ids])
    for mname in MACHINE_ORDER:
        m = MACHINES[mname]
        oid = f"ns=1;s={mname}"
        conds = [f"{oid}.{c}" for c, _ in m.get("conditions", [])]
        kids = [f"{oid}.{v.name}" for v in m["vars"]] + [f"{oid}.{n}" for n, *_ in METHODS] + conds
        w(f"  <!-- {mname} -->")
        # A machine with conditions is an event notifier (Server HasNotifier it) and their source.
        events = [("HasNotifier", "i=2253", False)] + [("HasCondition", c, True) for c in conds]
        emit_node("UAObject", oid, f"1:{mname}", mname, m["desc"],
                  [("HasTypeDefinition", f"ns=1;i={m['type_id']}", True),
                   ("Organizes", "ns=1;s=BottlingLine", False)]
                  + [("HasComponent", k, True) for k in kids] + (events if conds else []),
                  "ns=1;s=BottlingLine", ' EventNotifier="1"' if conds else "")
        for v in m["vars"]:
            vid = f"{oid}.{v.name}"
            emit_variable(vid, f"1:{v.name}", oid, v, False, lambda k, vid=vid: f"{vid}.{k}", with_value=True)
        for name, mdesc, ins, outs in METHODS:
            mid = f"{oid}.{name}"
            emit_method(mid, oid, name, mdesc, ins, outs, False, lambda k, mid=mid: f"{mid}.{k}",
                        decl=type_methods[name])
        for cname, cdesc in m.get("conditions", []):
            # AlarmConditionType (i=2915) instance without its child variables: the state is in
            # the events (clients read conditions through events and ConditionRefresh).
            emit_node("UAObject", f"{oid}.{cname}", f"1:{cname}", cname, cdesc,
                      [("HasTypeDefinition", "i=2915", True), ("HasComponent", oid, False),
                       ("HasCondition", oid, False)], oid)
    w("</UANodeSet>")
    with open(OUT_XML, "w", encoding="utf-8") as f:
        f.write("\n".join(out) + "\n")


# ---------------------------------------------------------------- build the TOML
def toml_val(v, dt=None):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_val(x, dt) for x in v) + "]"
    if dt in FLOATING:
        return repr(float(v))
    return str(v)


DURATION_KEYS = {"period", "time_constant"}
NO_RESET = {"EncoderPosition"}


def sim_inline(v):
    parts = []
    for k, x in v.sim.items():
        if k == "source":
            x = f"{NSU};s={x}"
        if k in ("kind",) or k in DURATION_KEYS or k == "source":
            parts.append(f"{k} = {toml_val(x)}")
        elif k == "len":
            parts.append(f"{k} = {x}")
        else:
            parts.append(f"{k} = {toml_val(x, v.dt)}")
    return "{ " + ", ".join(parts) + " }"


def spike_inline(spike):
    parts = []
    for k, x in spike.items():
        parts.append(f"{k} = {toml_val(x, 'Double' if k in ('add', 'noise') else None)}")
    return "{ " + ", ".join(parts) + " }"


GROUP_NOTES = {
    "fast": "counters and fast process values (followers track their setpoint here)",
    "process": "process values: sine, random walk, ramps, arrays",
    "slow": "slow values: temperatures, states, status texts, fingerprints",
    "setpoints": "writable setpoints and actuators (clients write them; setpoint writes outside min..max\n# are refused, a constant holds what is written)",
    "static": "constants: serial numbers, recipe, Running flag (set by Start/Stop)",
}
GROUP_ORDER = ["fast", "process", "slow", "setpoints", "static"]


def build_toml():
    L = []
    L.append("# Simulation profile for bottling-line.NodeSet2.xml (namespace urn:opcua-connector:bottling-line).")
    L.append("# Every instance variable of the model appears exactly once below, in one group.")
    L.append("# Groups share an update rate; the Start/Stop methods pause and resume whole groups.")
    L.append("# Per machine: <m>-fast (100ms: counters, followers), <m>-process (200ms..1s: sine, random walk,")
    L.append("# ramps, arrays), <m>-slow (1s..5s: temperatures, states, texts), <m>-setpoints (writable:")
    L.append("# setpoints, kind setpoint, and actuators, a writable kind constant such as Filler.CoolingValve),")
    L.append("# <m>-static (10s: constants). Start/Stop act on fast+process+slow only, so setpoints and")
    L.append("# actuators stay writable and constants keep their value while a machine is stopped.")
    L.append("# Array variables: element i gets the behaviour value + i.")
    L.append("# Every kind = \"counter\" node is historized (HistoryRead of the last --history-window).")
    L.append("# Alarm Filler.TemperatureHigh (AlarmConditionType): active while Filler.ProductTemperature >")
    L.append("# Filler.TemperatureLimit (setpoint, 80.0), evaluated at each update of either; events on s=Filler.")
    L.append("# Spikes: Filler.ProductTemperature (sine 12.5 +- 0.8) gets + 6.0 +- 0.4 for 20 s every 120 s from")
    L.append("# t = 60 s (t = time since the simulator's start): about 18.5 during a spike, far below the")
    L.append("# alarm limit. Filler.CoolingValve (Boolean, writable, false = closed) is what a local rule opens.")
    L.append("# Structures (kinds batch, nozzle_status; n = the node's update number 0, 1, 2, ...):")
    L.append("#   nozzle_status: NozzleStatus[4], N(i) = { Index: i, FillLevel: 500.0 + i + (n % 10) * 0.25,")
    L.append("#     Ok: (n + i) % 7 != 0 }")
    L.append('#   batch: FillerBatch { Id: "B-" + 5-digit n / 100, Count: n, Recipe: { Name: "Cola 0.5 l",')
    L.append("#     TargetVolume: 500.0 }, Nozzles: [N(0), N(1), N(2), N(3)] }")
    L.append("# Machine state codes (State variables): 0 Stopped, 1 Starting, 2 Running, 3 Blocked, 4 Starved, 5 Faulted.")
    L.append("")
    L.append("seed = 42                 # RNG seed for noise, random walks and jitter")
    L.append('scan_jitter = "3ms"       # source timestamps get a seeded jitter in [0, scan_jitter)')
    for mname in MACHINE_ORDER:
        m = MACHINES[mname]
        L.append("")
        L.append(f"# {'=' * 30} {mname} {'=' * 30}")
        for g in GROUP_ORDER:
            members = [v for v in m["vars"] if v.group == g]
            if not members:
                continue
            L.append("")
            L.append(f"# {GROUP_NOTES[g]}")
            L.append("[[group]]")
            L.append(f'name = "{mname.lower()}-{g}"')
            L.append(f'rate = "{m["rates"][g]}"')
            for v in members:
                L.append("")
                L.append("  [[group.node]]")
                L.append(f'  node = "{NSU};s={mname}.{v.name}"')
                L.append(f"  sim = {sim_inline(v)}")
                if v.spike:
                    L.append(f"  spike = {spike_inline(v.spike)}")
                if v.status:
                    L.append(f"  status = {toml_val(v.status)}   # cycles one per update")
    L.append("")
    L.append(f"# {'=' * 30} Methods {'=' * 30}")
    L.append("# reset_counters: sets the listed counters back to their start value;")
    L.append("# start/stop: resume/pause the listed groups and set the Running flag true/false.")
    for mname in MACHINE_ORDER:
        m = MACHINES[mname]
        prefix = mname.lower()
        # production counters only (scalar); per-nozzle cycle counts and encoder positions are not reset
        counters = [f"{NSU};s={mname}.{v.name}" for v in m["vars"]
                    if v.sim["kind"] == "counter" and not v.arr and v.name not in NO_RESET]
        groups = [f"{prefix}-{g}" for g in ("fast", "process", "slow") if any(v.group == g for v in m["vars"])]
        L.append("")
        L.append("[[method]]")
        L.append(f'node = "{NSU};s={mname}.ResetCounters"')
        L.append('action = "reset_counters"')
        L.append("counters = [")
        for c in counters:
            L.append(f'  "{c}",')
        L.append("]")
        for action in ("start", "stop"):
            L.append("")
            L.append("[[method]]")
            L.append(f'node = "{NSU};s={mname}.{action.capitalize()}"')
            L.append(f'action = "{action}"')
            L.append(f"groups = {toml_val(groups)}")
            L.append(f'running = "{NSU};s={mname}.Running"')
    with open(OUT_TOML, "w", encoding="utf-8") as f:
        f.write("\n".join(L) + "\n")


if __name__ == "__main__":
    build_xml()
    build_toml()
    n = sum(len(m["vars"]) for m in MACHINES.values())
    print(f"wrote {OUT_XML} and {OUT_TOML}: {n} instance variables")
