"""Argo Events objects for webhook retrains: the EventBus, the webhook EventSource and the Sensor.

Written as plain dicts: `hera.events.models` drops webhook fields. The Sensor's filters and its
trigger parameters are generated from the payload contract (retrain-payload.schema.json) and the
default `data_url` allowlist, and `sensor_workflow` applies those parameters the way the sensor
does, so a test can hold the Workflow a webhook creates on the cluster against the arguments the
local receiver runs with. The Workflow sets only what an event decides, plus `trigger`; the policy
comes from the WorkflowTemplate's defaults.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import numpy as np

from workflows import arguments, pipeline, trigger
from workflows.arguments import argo_string
from workflows.triggers import base
from workflows.triggers.base import EVENT_BUS, LABELS, metadata, submit_sensor
from workflows.triggers.drops import CREATED_PATTERN
from workflows.triggers.payload import (
    DATA_URL,
    DEFAULT_DATA_URL_PREFIXES,
    EVENT_ID,
    load_payload_schema,
)

NAMESPACE = pipeline.NAMESPACE
# One of the versions Argo Events v1.9.11's controller config offers (tests/upstream/ keeps that list):
# an EventBus asking for any other never deploys. Pinned, not `latest`, which moves with the release.
JETSTREAM_VERSION = "2.10.29"
EVENT_SOURCE = "fashion-retrain"
EVENT_NAME = "retrain"
WEBHOOK_PORT = 12000
WEBHOOK_ENDPOINT = "/retrain"
MAX_PAYLOAD_BYTES = 64 * 1024
WEBHOOK_SECRET = "fashion-pipeline-webhook"
WEBHOOK_SECRET_KEY = "token"
SENSOR = "fashion-retrain"
SENSOR_SERVICE_ACCOUNT = "fashion-pipeline-sensor"
# No API access: the webhook reads its authSecret from a mounted volume and, not being a Recreate-type
# source, runs no leader election (argo-events v1.9.11 pkg/eventsources/eventing.go Start).
EVENT_SOURCE_SERVICE_ACCOUNT = "fashion-pipeline-eventsource"
DEPENDENCY = "retrain"
TRIGGER = "retrain"
WORKFLOW_NAME_PREFIX = "retrain-"


def webhook_url(namespace: str = NAMESPACE) -> str:
    """The EventSource's Service inside the cluster (Argo Events names it `<name>-eventsource-svc`)."""
    return f"http://{EVENT_SOURCE}-eventsource-svc.{namespace}.svc.cluster.local:{WEBHOOK_PORT}{WEBHOOK_ENDPOINT}"


def event_bus() -> dict[str, Any]:
    """JetStream, pinned: `latest` would change under a running cluster."""
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "EventBus",
        "metadata": metadata(EVENT_BUS),
        "spec": {"jetstream": {"version": JETSTREAM_VERSION}},
    }


def event_source() -> dict[str, Any]:
    """The webhook: bearer token from a Secret, a payload cap, and a Service `<name>-eventsource-svc`."""
    webhook = {
        "port": str(WEBHOOK_PORT),
        "endpoint": WEBHOOK_ENDPOINT,
        "method": "POST",
        "authSecret": {"name": WEBHOOK_SECRET, "key": WEBHOOK_SECRET_KEY},
        "maxPayloadSize": MAX_PAYLOAD_BYTES,
    }
    service = {"ports": [{"name": "webhook", "port": WEBHOOK_PORT, "targetPort": WEBHOOK_PORT}]}
    return base.event_source(EVENT_SOURCE, EVENT_SOURCE_SERVICE_ACCOUNT, service=service, webhook={EVENT_NAME: webhook})


def sensor() -> dict[str, Any]:
    """Submit `retrain-<event_id>` from the WorkflowTemplate for each payload that keeps the contract."""
    schema = load_payload_schema()
    dependency = {
        "name": DEPENDENCY,
        "eventSourceName": EVENT_SOURCE,
        "eventName": EVENT_NAME,
        "filters": _filters(schema),
    }
    return submit_sensor(
        SENSOR, SENSOR_SERVICE_ACCOUNT, dependency, TRIGGER, retrain_workflow(schema), _parameters(schema)
    )


def manifests() -> list[dict[str, Any]]:
    return [event_bus(), event_source(), sensor()]


# ---------------------------------------------------------------------------------------------
# The Workflow the trigger submits, and the parameters that fill it in
# ---------------------------------------------------------------------------------------------


# The run's `trigger` argument, built by gjson from the event (a multipath with literals, gjson >= 1.12;
# Argo Events v1.9.11 has 1.17): the same object as `trigger.summary("webhook", VIA, payload=body)`.
TRIGGER_VIA = f"sensor/{SENSOR}"


def trigger_data_key() -> str:
    fixed = json.loads(trigger.summary("webhook", TRIGGER_VIA))
    literals = ",".join(f"{json.dumps(key)}:!{json.dumps(value)}" for key, value in fixed.items())
    return f'{{{literals},"payload":body}}'


def _argument_defaults(schema: dict[str, Any]) -> dict[str, str]:
    """The arguments the Sensor sets, in `ARGUMENTS` order, with their values when the payload leaves them out.

    Those are the payload's fields (the contract's default, else the template's) and `trigger`; every
    other argument, the gate and rollout policy first, is left to the WorkflowTemplate's default.
    """
    fields = set(schema["properties"]) - {EVENT_ID}
    unknown = fields - {argument.name for argument in arguments.ARGUMENTS}
    if unknown:
        raise ValueError(f"payload field(s) {sorted(unknown)} are no arguments of {pipeline.NAME}")
    defaults = {}
    for argument in arguments.ARGUMENTS:
        if argument.name in fields:
            spec = schema["properties"][argument.name]
            defaults[argument.name] = argo_string(spec["default"]) if "default" in spec else argument.argo_default
        elif argument.name == trigger.ARGUMENT:
            defaults[argument.name] = trigger.summary("webhook", TRIGGER_VIA)
    return defaults


def retrain_workflow(schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The embedded Workflow; `dest` indexes its arguments by position (Argo merges them with the template's)."""
    defaults = _argument_defaults(schema or load_payload_schema())
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            # Completed by the event id (operation append); never submitted as is.
            "name": WORKFLOW_NAME_PREFIX,
            "namespace": NAMESPACE,
            "labels": {**LABELS, "fashion-pipeline/trigger": "webhook"},
        },
        "spec": {
            "workflowTemplateRef": {"name": pipeline.NAME},
            "arguments": {"parameters": [{"name": name, "value": value} for name, value in defaults.items()]},
        },
    }


def _parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    defaults = _argument_defaults(schema)
    positions = {name: i for i, name in enumerate(defaults)}
    # No default for the event id: without one the trigger fails rather than submit `retrain-`.
    parameters: list[dict[str, Any]] = [
        {
            "src": {"dependencyName": DEPENDENCY, "dataKey": f"body.{EVENT_ID}"},
            "dest": "metadata.name",
            "operation": "append",
        }
    ]
    for name in defaults:
        if name == trigger.ARGUMENT:
            src = {"dependencyName": DEPENDENCY, "dataKey": trigger_data_key()}
        else:
            src = {"dependencyName": DEPENDENCY, "dataKey": f"body.{name}", "value": defaults[name]}
        parameters.append({"src": src, "dest": f"spec.arguments.parameters.{positions[name]}.value"})
    return parameters


# ---------------------------------------------------------------------------------------------
# Filters
#
# Data filters fail on a path that is missing ("any kind of error is considered as false"), so
# they can only check required fields: the event id's pattern is one. The Lua `script` filter sees
# the decoded body and checks the whole contract, optional fields included: unknown fields, types,
# integer-ness, ranges, enums, lengths and the patterns below. What the filters cannot express:
#   - a JSON null: Argo Events drops nil values when it builds the Lua table, so `"epochs": null`
#     looks absent to the script while the parameter then reads the literal null. The workflow's
#     parameter enums reject it for enum arguments, and the steps' own checks for numbers.
#   - a repeated key: the script sees the last value, the parameter (gjson) the first one; the
#     steps' checks (epochs >= 1, 0 <= canary_percent <= 100, ...) are the only guard there.
#   - regular expressions in general: each schema pattern needs a hand-written Lua twin below,
#     and rendering fails on a pattern without one.
# The `data_url` allowlist (payload.DEFAULT_DATA_URL_PREFIXES) is checked after the contract, as the
# receiver does: a prefix test and the Lua twin of payload.UNSAFE_URL.
# ---------------------------------------------------------------------------------------------

# JSON Schema pattern -> Lua condition on the string `v`, with the same meaning (tested with lua5.1).
LUA_PATTERNS = {
    "^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$": (
        '#v <= 42 and (v:find("^[a-z0-9]$") ~= nil or v:find("^[a-z0-9][a-z0-9%-]*[a-z0-9]$") ~= nil)'
    ),
    "^(https?|s3|file)://[^\\t\\n\\r ]+$": (
        '(v:find("^https?://[^\\t\\n\\r ]+$") ~= nil or v:find("^s3://[^\\t\\n\\r ]+$") ~= nil'
        ' or v:find("^file://[^\\t\\n\\r ]+$") ~= nil)'
    ),
    "\\n": 'v:find("\\n", 1, true) ~= nil',
    # A data drop's `created` (workflows/triggers/drops.py): Lua patterns have no alternation, hence four of them.
    CREATED_PATTERN: "("
    + " or ".join(
        f'v:find("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d{fraction}{zone}$") ~= nil'
        for fraction in ("", "%.%d+")
        for zone in ("Z", "[+-]%d%d:%d%d")
    )
    + ")",
}
_ANNOTATIONS = frozenset({"description", "default", "title", "$comment", "examples"})
_FIELD_KEYWORDS = frozenset(
    {"type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength"}
    | {"pattern", "not"}
)


def _filters(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "data": [{"path": f"body.{EVENT_ID}", "type": "string", "value": [schema["properties"][EVENT_ID]["pattern"]]}],
        "script": lua_filter(schema, DEFAULT_DATA_URL_PREFIXES),
    }


def lua_string(text: str) -> str:
    """A Lua string literal: plain ASCII as is, every other byte as a decimal escape.

    Always three digits: `\\37` followed by a `2` would read as the escape `\\372`.
    """
    safe = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./: ")
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in text.encode()) + '"'


def _lua_number(value: int | float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _lua_pattern(pattern: str) -> str:
    if pattern not in LUA_PATTERNS:
        raise ValueError(f"the Sensor filter has no Lua twin of the pattern {pattern!r}: add one to LUA_PATTERNS")
    return LUA_PATTERNS[pattern]


def _lua_conditions(name: str, spec: dict[str, Any]) -> list[str]:
    """Lua conditions on `v`, the field's value, that hold exactly when `spec` accepts it."""
    unknown = set(spec) - _ANNOTATIONS - _FIELD_KEYWORDS
    if unknown:
        raise ValueError(f"the Sensor filter cannot express {sorted(unknown)} of payload field {name!r}")
    kind = spec.get("type")
    conditions = {
        "string": ['type(v) == "string"'],
        "integer": ["integer(v)"],
        "number": ['type(v) == "number"'],
        "boolean": ['type(v) == "boolean"'],
        None: [],
    }.get(kind)
    if conditions is None:
        raise ValueError(f"the Sensor filter cannot express type {kind!r} of payload field {name!r}")
    if "enum" in spec:
        choices = ", ".join(f"[{lua_string(str(c))}] = true" for c in spec["enum"])
        if not all(isinstance(c, str) for c in spec["enum"]):
            raise ValueError(f"the Sensor filter only knows string enums (payload field {name!r})")
        conditions.append(f"({{{choices}}})[v] == true")
    for keyword, operator in (
        ("minimum", ">="),
        ("maximum", "<="),
        ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<"),
    ):
        if keyword in spec:
            conditions.append(f"v {operator} {_lua_number(spec[keyword])}")
    if "minLength" in spec:
        conditions.append(f"length(v) >= {spec['minLength']}")
    if "maxLength" in spec:
        conditions.append(f"length(v) <= {spec['maxLength']}")
    if "pattern" in spec:
        conditions.append(_lua_pattern(spec["pattern"]))
    if "not" in spec:
        if set(spec["not"]) != {"pattern"}:
            raise ValueError(f"the Sensor filter only knows `not: {{pattern}}` (payload field {name!r})")
        conditions.append(f"not ({_lua_pattern(spec['not']['pattern'])})")
    return conditions


# payload.UNSAFE_URL as Lua conditions on the string `v` (tested with lua5.1 against the Python check).
LUA_UNSAFE_URL = (
    'v:find("/%.%.?/") ~= nil or v:find("/%.%.?$") ~= nil or string.lower(v):find("%2e", 1, true) ~= nil'
    ' or v:find("\\\\", 1, true) ~= nil'
)


def lua_data_url_conditions(prefixes: tuple[str, ...]) -> str:
    """A Lua condition on the string `v` that holds when an event may name it (payload.data_url_problem is None)."""
    starts = " or ".join(f"v:sub(1, {len(p.encode())}) == {lua_string(p)}" for p in prefixes) or "false"
    return f"({starts}) and not ({LUA_UNSAFE_URL})"


def lua_filter(schema: dict[str, Any], data_url_prefixes: tuple[str, ...] = DEFAULT_DATA_URL_PREFIXES) -> str:
    """A Lua script filter that is true exactly for the bodies `schema` and the allowlist accept (nulls aside)."""
    lines = [
        "-- Generated from workflows/triggers/retrain-payload.schema.json by workflows/triggers/webhook_sensor.py.",
        "local body = event.body",
        *lua_checks(schema, data_url_prefixes),
    ]
    return "\n".join(lines) + "\n"


def lua_checks(schema: dict[str, Any], data_url_prefixes: tuple[str, ...] = DEFAULT_DATA_URL_PREFIXES) -> list[str]:
    """Lua lines that `return false` unless the table `body` keeps `schema` (and the allowlist); then `return true`."""
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        raise ValueError("the payload schema must be a closed object (additionalProperties: false)")
    extra = set(schema) - _ANNOTATIONS - {"$schema", "$id", "type", "required", "additionalProperties", "properties"}
    if extra:
        raise ValueError(f"the Sensor filter cannot express {sorted(extra)} of the payload schema")
    known = ", ".join(f"[{lua_string(name)}] = true" for name in schema["properties"])
    lines = [
        'if type(body) ~= "table" then return false end',
        f"local known = {{{known}}}",
        "for key in pairs(body) do",
        "  if not known[key] then return false end",
        "end",
        'local function integer(v) return type(v) == "number" and v == math.floor(v) end',
        "local function length(s)",
        "  local n = 0",
        "  for i = 1, #s do",
        "    local c = string.byte(s, i)",
        "    if c < 128 or c >= 192 then n = n + 1 end",
        "  end",
        "  return n",
        "end",
        "local v",
    ]
    required = set(schema.get("required", []))
    for name, spec in schema["properties"].items():
        check = " and ".join(_lua_conditions(name, spec)) or "true"
        lines.append(f"v = body[{lua_string(name)}]")
        if name in required:
            lines.append(f"if v == nil or not ({check}) then return false end")
        else:
            lines.append(f"if v ~= nil and not ({check}) then return false end")
    if DATA_URL in schema["properties"]:
        lines.append(f"v = body[{lua_string(DATA_URL)}]")
        lines.append(f"if v ~= nil and not ({lua_data_url_conditions(data_url_prefixes)}) then return false end")
    lines.append("return true")
    return lines


# ---------------------------------------------------------------------------------------------
# The sensor's parameter application, for tests and for reading the Sensor
# ---------------------------------------------------------------------------------------------


class _RawNumber(str):
    """A JSON number kept as its source text, as gjson sees it."""


class _RawJson(str):
    """A JSON document gjson built (a multipath result), used as its text."""


_MISSING = object()


def sensor_workflow(payload: dict[str, Any], sensor_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Workflow the Sensor submits for this webhook body.

    As Argo Events v1.9 does it (pkg/sensors/triggers/params.go): the event data is
    `{"header": ..., "body": <payload>}`; each parameter's `src.dataKey` is a gjson path into it,
    falling back to `src.value` when missing; the result is a string set at `dest` (sjson), after
    `append`/`prepend` joined it with the value already there.
    """
    return apply_trigger(sensor_manifest or sensor(), {"header": {}, "body": payload})


def apply_trigger(sensor_manifest: dict[str, Any], event_data: dict[str, Any]) -> dict[str, Any]:
    """The resource the Sensor's first trigger submits for an event whose data is `event_data`."""
    trigger = sensor_manifest["spec"]["triggers"][0]["template"]["argoWorkflow"]
    dependency = sensor_manifest["spec"]["dependencies"][0]["name"]
    resource = copy.deepcopy(trigger["source"]["resource"])
    event = json.loads(json.dumps(event_data), parse_int=_RawNumber, parse_float=_RawNumber)
    for parameter in trigger.get("parameters", []):
        value = _resolve(parameter["src"], event, dependency)
        operation = parameter.get("operation", "")
        if operation in ("append", "prepend"):
            current = _gjson_get(resource, parameter["dest"])
            if current is not _MISSING:
                current_text = _gjson_string(current)
                value = current_text + value if operation == "append" else value + current_text
        elif operation not in ("", "overwrite"):
            raise ValueError(f"unsupported trigger parameter operation {operation!r}")
        _sjson_set(resource, parameter["dest"], value)
    return resource


def _resolve(src: dict[str, Any], event: dict[str, Any], dependency: str = DEPENDENCY) -> str:
    if src.get("dependencyName") != dependency:
        raise ValueError(f"parameter source depends on {src.get('dependencyName')!r}, not {dependency!r}")
    found = _gjson_get(event, src["dataKey"]) if "dataKey" in src else _MISSING
    if found is not _MISSING:
        return _gjson_string(found)
    if "value" in src:
        return src["value"]
    raise ValueError(f"unable to resolve parameter: no {src.get('dataKey')!r} in the event and no default")


def _path(path: str) -> list[str]:
    if re.search(r"[*?\\#@|]", path):
        raise ValueError(f"gjson path {path!r} uses syntax this emulation does not cover")
    return path.split(".")


FROM_STRING = "@fromstr"


def _gjson_get(document: Any, path: str) -> Any:
    if path.startswith("{") and path.endswith("}"):
        return _gjson_multipath(document, path)
    if "|" in path:
        return _gjson_pipe(document, path)
    node = document
    for part in _path(path):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _gjson_pipe(document: Any, path: str) -> Any:
    """`path|@fromstr[|rest]`: a string holding JSON, decoded (gjson >= 1.14, Argo Events v1.9.11 has 1.19)."""
    head, _, tail = path.partition("|")
    modifier, _, rest = tail.partition("|")
    if modifier != FROM_STRING:
        raise ValueError(f"gjson path {path!r} uses syntax this emulation does not cover")
    text = _gjson_get(document, head)
    if not isinstance(text, str) or isinstance(text, _RawNumber | _RawJson):
        return _MISSING
    try:
        decoded = json.loads(text, parse_int=_RawNumber, parse_float=_RawNumber)
    except json.JSONDecodeError:
        return _MISSING
    if not rest:
        return _RawJson(text) if isinstance(decoded, dict | list) else decoded
    return _gjson_get(decoded, rest)


def _gjson_multipath(document: Any, path: str) -> _RawJson:
    """`{"key":path,"key":!literal,...}`, the gjson multipaths we emit: a new object, missing paths left out."""
    decoder = json.JSONDecoder()
    members = []
    for selector in _top_level_split(path[1:-1]):
        try:
            key, end = decoder.raw_decode(selector)
        except json.JSONDecodeError as exc:
            raise ValueError(f'gjson multipath {path!r}: name every member ("key":path)') from exc
        if not isinstance(key, str) or selector[end : end + 1] != ":":
            raise ValueError(f'gjson multipath {path!r}: name every member ("key":path)')
        sub = selector[end + 1 :]
        if sub.startswith("!"):
            raw = _gjson_raw(json.loads(sub[1:]))
        else:
            found = _gjson_get(document, sub)
            if found is _MISSING:
                continue
            raw = _gjson_raw(found)
        members.append(f"{json.dumps(key)}:{raw}")
    return _RawJson("{" + ",".join(members) + "}")


def _top_level_split(text: str) -> list[str]:
    parts, depth, start, quoted, escaped = [], 0, 0, False, False
    for i, char in enumerate(text):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            quoted = True
        elif char in "{[":
            depth += 1
        elif char in "}]":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def _gjson_raw(value: Any) -> str:
    """A decoded value as compact JSON, numbers in their source text (gjson's Raw of a compact document)."""
    if isinstance(value, _RawNumber | _RawJson):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_gjson_raw(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_gjson_raw(v) for v in value) + "]"
    return json.dumps(value)


def _gjson_string(value: Any) -> str:
    """gjson's Result.String() for scalars; objects and arrays come back as raw JSON (as Argo Events returns them)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, _RawNumber):
        digits = value[1:] if value.startswith("-") else value
        if digits.isdigit():
            return str(value)
        return str(np.format_float_positional(float(value), unique=True, trim="-"))
    if isinstance(value, str):
        return value
    return _gjson_raw(value)


def _sjson_set(document: dict[str, Any], path: str, value: str) -> None:
    parts = _path(path)
    node: Any = document
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise ValueError(f"dest {path!r}: index {part} is outside a list of {len(node)}")
            index = int(part)
            if index == len(node):
                node.append(value if last else {})
            elif last:
                node[index] = value
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ValueError(f"dest {path!r}: cannot set a key inside a {type(node).__name__}")
