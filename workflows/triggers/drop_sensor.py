"""Argo Events objects for data drops: a `minio` EventSource on the store's bucket and the Sensor it feeds.

The EventSource listens to MinIO bucket notifications (Argo Events v1.9.11 calls MinIO's
ListenBucketNotification, pkg/eventsources/sources/minio/start.go: no notification target to set
up in MinIO) for `s3:ObjectCreated:*` on keys `incoming/.../drop.json`, and sends each
notification as `{"notification": [<MinIO event record>], "metadata": ...}`.

A Sensor sees only that record, not the object. MinIO copies the object's user metadata into it
(`s3.object.userMetadata`, header names in Go's canonical form), so the uploader writes drop.json's
content again as the metadata `fashion-drop` (workflows/triggers/drops.py). The Sensor's Lua filter decodes
it and checks the same contract as the local watcher, generated from the same schema, plus that the
object is `incoming/<drop_id>/drop.json` of that very drop; the trigger submits `drop-<drop_id>` with
the drop's folder as `data_url` and the drop's fields, read with gjson's `@fromstr`.
`drop_sensor_workflow` applies the parameters as the Sensor does, so a test can hold the Workflow
a drop creates on the cluster against the arguments the local watcher runs with.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from steps.lineage import DROP_MANIFEST
from workflows import arguments, pipeline, trigger
from workflows.arguments import DEFAULT_S3_ENDPOINT, DEFAULT_STORE, argo_string
from workflows.triggers import base, webhook_sensor
from workflows.triggers.base import LABELS, submit_sensor
from workflows.triggers.drops import (
    CREATED,
    DROP_ID,
    INCOMING,
    METADATA,
    RUN_PREFIX,
    load_drop_schema,
)
from workflows.triggers.payload import DATA_URL

EVENT_SOURCE = "fashion-drops"
EVENT_NAME = "drop"
SENSOR = "fashion-drops"
DEPENDENCY = "drop"
TRIGGER = "drop"
# Own accounts (argo/rbac.yaml): the EventSource reads its credentials from mounted Secrets and elects a
# leader over the EventBus (JetStream), so it needs no API access; the Sensor may only submit Workflows.
EVENT_SOURCE_SERVICE_ACCOUNT = "fashion-pipeline-drop-eventsource"
SENSOR_SERVICE_ACCOUNT = "fashion-pipeline-drop-sensor"
EVENTS = ["s3:ObjectCreated:*"]
CREATED_EVENT_PREFIX = "s3:ObjectCreated:"
TRIGGER_VIA = f"sensor/{SENSOR}"


def metadata_header(name: str = METADATA) -> str:
    """A user-metadata name as MinIO keeps it, and so names it in a notification (Go's canonical header form)."""
    return "-".join(part.capitalize() for part in f"x-amz-meta-{name}".split("-"))


MANIFEST_PATH = f"notification.0.s3.object.userMetadata.{metadata_header()}"


def _bucket_and_prefix(store_uri: str) -> tuple[str, str]:
    parsed = urlparse(store_uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"data drops on a cluster need an s3:// store, not {store_uri!r}")
    prefix = parsed.path.strip("/")
    return parsed.netloc, f"{prefix}/{INCOMING}/" if prefix else f"{INCOMING}/"


def event_source(store_uri: str = DEFAULT_STORE, endpoint: str = DEFAULT_S3_ENDPOINT) -> dict[str, Any]:
    """MinIO notifications of a drop.json written under the store's incoming/, with the store's credentials."""
    bucket, incoming = _bucket_and_prefix(store_uri)
    parsed = urlparse(endpoint)
    secret = {"name": "fashion-pipeline-s3"}
    source = {
        "bucket": {"name": bucket},
        "endpoint": parsed.netloc,
        "insecure": parsed.scheme == "http",
        "events": list(EVENTS),
        "filter": {"prefix": incoming, "suffix": DROP_MANIFEST},
        "accessKey": {**secret, "key": "AWS_ACCESS_KEY_ID"},
        "secretKey": {**secret, "key": "AWS_SECRET_ACCESS_KEY"},
    }
    return base.event_source(EVENT_SOURCE, EVENT_SOURCE_SERVICE_ACCOUNT, minio={EVENT_NAME: source})


def sensor(store_uri: str = DEFAULT_STORE) -> dict[str, Any]:
    """Submit `drop-<drop_id>` from the WorkflowTemplate for each drop whose manifest keeps the contract."""
    schema = load_drop_schema()
    filters = {"script": lua_filter(schema, store_uri)}
    dependency = {"name": DEPENDENCY, "eventSourceName": EVENT_SOURCE, "eventName": EVENT_NAME, "filters": filters}
    workflow = drop_workflow(store_uri, schema)
    return submit_sensor(SENSOR, SENSOR_SERVICE_ACCOUNT, dependency, TRIGGER, workflow, _parameters(store_uri, schema))


def manifests() -> list[dict[str, Any]]:
    return [event_source(), sensor()]


def _fields(schema: dict[str, Any]) -> set[str]:
    """The drop's fields that are workflow arguments (its id names the run; `created` is lineage only)."""
    return set(schema["properties"]) - {DROP_ID, CREATED}


def _argument_defaults(store_uri: str, schema: dict[str, Any]) -> dict[str, str]:
    """The arguments the Sensor sets, in `ARGUMENTS` order: the drop's fields, `data_url`, `trigger`."""
    fields = _fields(schema)
    unknown = fields - {argument.name for argument in arguments.ARGUMENTS}
    if unknown:
        raise ValueError(f"drop field(s) {sorted(unknown)} are no arguments of {pipeline.NAME}")
    bucket, incoming = _bucket_and_prefix(store_uri)
    defaults = {}
    for argument in arguments.ARGUMENTS:
        if argument.name in fields:
            spec = schema["properties"][argument.name]
            defaults[argument.name] = argo_string(spec["default"]) if "default" in spec else argument.argo_default
        elif argument.name == DATA_URL:
            defaults[argument.name] = f"s3://{bucket}/{incoming}"  # completed by the drop's id
        elif argument.name == trigger.ARGUMENT:
            defaults[argument.name] = trigger.summary("drop", TRIGGER_VIA)
    return defaults


def drop_workflow(store_uri: str = DEFAULT_STORE, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """The embedded Workflow; `dest` indexes its arguments by position (Argo merges them with the template's)."""
    defaults = _argument_defaults(store_uri, schema or load_drop_schema())
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "name": RUN_PREFIX,  # completed by the drop's id (operation append); never submitted as is
            "namespace": pipeline.NAMESPACE,
            "labels": {**LABELS, "fashion-pipeline/trigger": "drop"},
        },
        "spec": {
            "workflowTemplateRef": {"name": pipeline.NAME},
            "arguments": {"parameters": [{"name": name, "value": value} for name, value in defaults.items()]},
        },
    }


def trigger_data_key() -> str:
    """The run's `trigger`: the same object as `trigger.summary("drop", VIA, payload=manifest, object=key)`."""
    return (
        f'{{"by":!"drop","via":!"{TRIGGER_VIA}","object":notification.0.s3.object.key,'
        f'"payload":{MANIFEST_PATH}|{webhook_sensor.FROM_STRING}}}'
    )


def _field(name: str) -> str:
    return f"{MANIFEST_PATH}|{webhook_sensor.FROM_STRING}|{name}"


def _parameters(store_uri: str, schema: dict[str, Any]) -> list[dict[str, Any]]:
    defaults = _argument_defaults(store_uri, schema)
    positions = {name: i for i, name in enumerate(defaults)}
    # No default for the drop's id: without one the trigger fails rather than submit `drop-`.
    parameters: list[dict[str, Any]] = [
        {
            "src": {"dependencyName": DEPENDENCY, "dataKey": _field(DROP_ID)},
            "dest": "metadata.name",
            "operation": "append",
        }
    ]
    for name in defaults:
        dest = f"spec.arguments.parameters.{positions[name]}.value"
        if name == trigger.ARGUMENT:
            parameters.append({"src": {"dependencyName": DEPENDENCY, "dataKey": trigger_data_key()}, "dest": dest})
        elif name == DATA_URL:
            src = {"dependencyName": DEPENDENCY, "dataKey": _field(DROP_ID)}
            parameters.append({"src": src, "dest": dest, "operation": "append"})
        else:
            src = {"dependencyName": DEPENDENCY, "dataKey": _field(name), "value": defaults[name]}
            parameters.append({"src": src, "dest": dest})
    return parameters


# A JSON decoder for the manifest in the notification (gopher-lua has none): a flat object of strings,
# numbers, booleans and nulls, as the contract's fields are; anything else (nesting, a repeated key,
# trailing text) is nil, and so refused. Python's side refuses the same (drops.parse_manifest).
LUA_DECODER = r"""
local NULL = {}
local function decode(s)
  local i = 1
  local function ws() i = s:find("[^ \t\r\n]", i) or (#s + 1) end
  local function utf8(cp)
    if cp < 0x80 then return string.char(cp) end
    if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40) end
    if cp < 0x10000 then
      return string.char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
    end
    return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
      0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  local escapes = {['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"}
  local function str()
    local out = {}
    i = i + 1
    while true do
      local c = s:sub(i, i)
      if c == "" or c:byte() < 32 then return nil end
      if c == '"' then i = i + 1; return table.concat(out) end
      if c ~= "\\" then
        out[#out + 1] = c
        i = i + 1
      else
        local e = s:sub(i + 1, i + 1)
        if escapes[e] then
          out[#out + 1] = escapes[e]
          i = i + 2
        elseif e == "u" and s:sub(i + 2, i + 5):find("^%x%x%x%x$") then
          local cp = tonumber(s:sub(i + 2, i + 5), 16)
          i = i + 6
          if cp >= 0xD800 and cp <= 0xDBFF then
            if not s:sub(i, i + 5):find("^\\u[dD][c-fC-F]%x%x$") then return nil end
            cp = 0x10000 + (cp - 0xD800) * 0x400 + tonumber(s:sub(i + 2, i + 5), 16) - 0xDC00
            i = i + 6
          elseif cp >= 0xDC00 and cp <= 0xDFFF then
            return nil
          end
          out[#out + 1] = utf8(cp)
        else
          return nil
        end
      end
    end
  end
  local function digits() i = s:find("[^0-9]", i) or (#s + 1) end
  local function num()
    local start = i
    if s:sub(i, i) == "-" then i = i + 1 end
    if s:sub(i, i) == "0" then
      i = i + 1
    elseif s:sub(i, i):find("^[1-9]$") then
      digits()
    else
      return nil
    end
    if s:sub(i, i) == "." then
      i = i + 1
      if not s:sub(i, i):find("^[0-9]$") then return nil end
      digits()
    end
    if s:sub(i, i):find("^[eE]$") then
      i = i + 1
      if s:sub(i, i):find("^[-+]$") then i = i + 1 end
      if not s:sub(i, i):find("^[0-9]$") then return nil end
      digits()
    end
    return tonumber(s:sub(start, i - 1))
  end
  local function value()
    ws()
    local c = s:sub(i, i)
    if c == '"' then return str() end
    if c == "-" or c:find("^[0-9]$") then return num() end
    for word, v in pairs({["true"] = true, ["false"] = false, null = NULL}) do
      if s:sub(i, i + #word - 1) == word then i = i + #word; return v end
    end
    return nil
  end
  local obj = {}
  ws()
  if s:sub(i, i) ~= "{" then return nil end
  i = i + 1
  ws()
  if s:sub(i, i) == "}" then
    i = i + 1
  else
    while true do
      ws()
      if s:sub(i, i) ~= '"' then return nil end
      local k = str()
      if k == nil or obj[k] ~= nil then return nil end
      ws()
      if s:sub(i, i) ~= ":" then return nil end
      i = i + 1
      local v = value()
      if v == nil then return nil end
      obj[k] = v
      ws()
      local c = s:sub(i, i)
      i = i + 1
      if c == "}" then break end
      if c ~= "," then return nil end
    end
  end
  ws()
  if i <= #s then return nil end
  return obj
end
"""


def lua_filter(schema: dict[str, Any] | None = None, store_uri: str = DEFAULT_STORE) -> str:
    """True exactly for a drop.json creation in the store's incoming/ whose manifest keeps the contract."""
    schema = schema or load_drop_schema()
    bucket, incoming = _bucket_and_prefix(store_uri)
    header = webhook_sensor.lua_string(metadata_header())
    lines = [
        "-- Generated from the data-drop contract (workflows/triggers/drops.py) by workflows/triggers/drop_sensor.py.",
        "local records = event.notification",
        'if type(records) ~= "table" or #records ~= 1 then return false end',
        "local record = records[1]",
        'if type(record) ~= "table" or type(record.s3) ~= "table" then return false end',
        "local name, s3 = record.eventName, record.s3",
        f'if type(name) ~= "string" or name:sub(1, {len(CREATED_EVENT_PREFIX)}) ~= '
        f"{webhook_sensor.lua_string(CREATED_EVENT_PREFIX)} then return false end",
        f'if type(s3.bucket) ~= "table" or s3.bucket.name ~= {webhook_sensor.lua_string(bucket)} then return false end',
        'if type(s3.object) ~= "table" or type(s3.object.userMetadata) ~= "table" then return false end',
        f"local key, text = s3.object.key, s3.object.userMetadata[{header}]",
        'if type(key) ~= "string" or type(text) ~= "string" then return false end',
        *LUA_DECODER.strip("\n").split("\n"),
        "local body = decode(text)",
        "if body == nil then return false end",
        f'if type(body.{DROP_ID}) ~= "string" or key ~= {webhook_sensor.lua_string(incoming)} .. body.{DROP_ID} .. '
        f"{webhook_sensor.lua_string('/' + DROP_MANIFEST)} then return false end",
        *webhook_sensor.lua_checks(schema, ()),
    ]
    return "\n".join(lines) + "\n"


def drop_sensor_workflow(notification: dict[str, Any], sensor_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The Workflow the Sensor submits for one MinIO event record (what the EventSource puts in `notification`)."""
    return webhook_sensor.apply_trigger(sensor_manifest or sensor(), {"notification": [notification], "metadata": None})
