"""Webhook retrains: the payload contract, the Sensor generated from it, and the Workflow it submits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from steps.gate import FIRST_RUN_POLICIES
from steps.model import ARCHITECTURES
from steps.train import PRECISIONS
from workflows import events, pipeline
from workflows.payload import load_payload_schema, payload_to_parameters, validate_payload
from workflows.render import rendered
from workflows.validate import lint_paths

REPO = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("FASHION_PIPELINE_SCHEMAS", REPO.parent / "shared" / "schemas"))
TEMPLATE_DEFAULTS = {argument.name: argument.default for argument in pipeline.ARGUMENTS}

MINIMAL = {"event_id": "drop-1"}
EVERY_FIELD = {
    "event_id": "drop-2026-11-27",
    "reason": "new labelled drop from the shop floor",
    "data_url": "s3://fashion-pipeline/drops/2026-11-27/",
    "epochs": 3,
    "batch_size": 256,
    "learning_rate": 0.002,
    "seed": 7,
    "architecture": "fast-cnn",
    "train_limit": 5000,
    "precision": "float32",
    "min_accuracy": 0.85,
    "min_class_recall": 0.5,
    "min_delta": -0.01,
    "alpha": 0.1,
    "allow_equal": True,
    "tolerance": 0.01,
    "first_run": "reject",
    "canary_percent": 25,
}
BOOLEANS = {"event_id": "b", "allow_equal": False}
# Numbers whose JSON text is not what Python's str() gives: the Sensor (gjson) decides.
NUMBER_FORMS = {"event_id": "n-1", "epochs": 8.0, "learning_rate": 1e-05, "min_delta": 0.0, "seed": 4294967295}
VALID = [MINIMAL, EVERY_FIELD, BOOLEANS, NUMBER_FORMS]

INVALID = [
    ({}, "event_id"),
    ({"event_id": "Drop_1"}, "event_id"),
    ({"event_id": "-drop"}, "event_id"),
    ({"event_id": "drop-"}, "event_id"),
    ({"event_id": "a" * 43}, "event_id"),
    ({"event_id": "drop\n"}, "event_id"),
    ({"event_id": 12}, "event_id"),
    ({"event_id": "x", "epochs": 0}, "epochs"),
    ({"event_id": "x", "epochs": 201}, "epochs"),
    ({"event_id": "x", "epochs": 2.5}, "epochs"),
    ({"event_id": "x", "epochs": "3"}, "epochs"),
    ({"event_id": "x", "batch_size": 4097}, "batch_size"),
    ({"event_id": "x", "learning_rate": 0}, "learning_rate"),
    ({"event_id": "x", "learning_rate": 1.5}, "learning_rate"),
    ({"event_id": "x", "seed": -1}, "seed"),
    ({"event_id": "x", "seed": 2**32}, "seed"),
    ({"event_id": "x", "architecture": "resnet"}, "architecture"),
    ({"event_id": "x", "train_limit": -5}, "train_limit"),
    ({"event_id": "x", "precision": "float16"}, "precision"),
    ({"event_id": "x", "min_accuracy": 1.01}, "min_accuracy"),
    ({"event_id": "x", "min_class_recall": -0.1}, "min_class_recall"),
    ({"event_id": "x", "min_delta": -2}, "min_delta"),
    ({"event_id": "x", "alpha": 0}, "alpha"),
    ({"event_id": "x", "allow_equal": "true"}, "allow_equal"),
    ({"event_id": "x", "allow_equal": 1}, "allow_equal"),
    ({"event_id": "x", "tolerance": 2}, "tolerance"),
    ({"event_id": "x", "first_run": "maybe"}, "first_run"),
    ({"event_id": "x", "canary_percent": 101}, "canary_percent"),
    ({"event_id": "x", "canary_percent": None}, "canary_percent"),
    ({"event_id": "x", "reason": "r" * 201}, "reason"),
    ({"event_id": "x", "data_url": "ftp://mirror/fashion"}, "data_url"),
    ({"event_id": "x", "data_url": "https://mirror/a b"}, "data_url"),
    ({"event_id": "x", "data_url": "https://mirror/\n"}, "data_url"),
    ({"event_id": "x", "epoch": 3}, "epoch"),
    ({"event_id": "x", "store": "s3://elsewhere"}, "store"),
]


def _arguments(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


@pytest.mark.parametrize("payload", VALID, ids=["minimal", "every-field", "booleans", "number-forms"])
def test_sensor_submits_the_arguments_the_local_receiver_runs_with(payload: dict[str, Any]) -> None:
    assert validate_payload(payload) == []
    workflow = events.sensor_workflow(payload)

    assert workflow["metadata"]["name"] == f"retrain-{payload['event_id']}"
    assert workflow["spec"]["workflowTemplateRef"] == {"name": pipeline.NAME}
    assert _arguments(workflow) == {**TEMPLATE_DEFAULTS, **payload_to_parameters(payload)}
    assert list(_arguments(workflow)) == [argument.name for argument in pipeline.ARGUMENTS]


def test_numbers_reach_the_workflow_as_the_steps_parse_them() -> None:
    arguments = _arguments(events.sensor_workflow(NUMBER_FORMS))

    assert arguments["epochs"] == "8"  # int("8.0") would fail in the train step
    assert arguments["learning_rate"] == "0.00001"
    assert arguments["seed"] == "4294967295"


def test_webhook_runs_say_why_they_ran() -> None:
    assert _arguments(events.sensor_workflow(MINIMAL))["reason"] == "webhook retrain"
    assert _arguments(events.sensor_workflow(EVERY_FIELD))["reason"] == EVERY_FIELD["reason"]


def test_redelivered_event_gets_the_same_workflow_name() -> None:
    first = events.sensor_workflow({"event_id": "drop-7", "epochs": 2})
    again = events.sensor_workflow({"event_id": "drop-7", "epochs": 2})

    assert first["metadata"]["name"] == again["metadata"]["name"] == "retrain-drop-7"
    assert "generateName" not in first["metadata"]


def test_sensor_cannot_submit_a_workflow_without_an_event_id() -> None:
    with pytest.raises(ValueError, match="event_id"):
        events.sensor_workflow({"epochs": 2})


@pytest.mark.parametrize(("payload", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_contract_violations_are_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    problems = validate_payload(payload)

    assert problems, f"{payload} was accepted"
    assert any(problem.startswith(f"{field}:") for problem in problems), problems


def test_misspelt_argument_is_refused_with_a_suggestion() -> None:
    assert validate_payload({"event_id": "x", "epoch": 3}) == ["epoch: unknown field (did you mean 'epochs'?)"]


def test_payload_that_is_not_an_object_is_refused() -> None:
    assert validate_payload(["event_id", "x"]) == ["the payload must be a JSON object, got list"]


def test_every_payload_field_is_a_workflow_argument_with_the_same_choices() -> None:
    schema = load_payload_schema()
    arguments = {argument.name: argument for argument in pipeline.ARGUMENTS}

    for name, spec in schema["properties"].items():
        if name == "event_id":
            continue
        assert name in arguments, f"payload field {name} is no argument of {pipeline.NAME}"
        if arguments[name].enum and spec.get("type") != "boolean":
            assert tuple(spec["enum"]) == arguments[name].enum, name
    assert tuple(schema["properties"]["architecture"]["enum"]) == tuple(ARCHITECTURES)
    assert tuple(schema["properties"]["precision"]["enum"]) == tuple(PRECISIONS)
    assert tuple(schema["properties"]["first_run"]["enum"]) == tuple(FIRST_RUN_POLICIES)


def test_template_defaults_keep_the_contract() -> None:
    """A payload that spells out every default is valid: the schema's ranges contain the template's values."""
    schema = load_payload_schema()
    as_json = {"integer": int, "number": float, "boolean": lambda text: text == "true"}
    payload: dict[str, Any] = {"event_id": "defaults"}
    for name, spec in schema["properties"].items():
        default = TEMPLATE_DEFAULTS.get(name)
        if name != "event_id" and default:
            payload[name] = as_json.get(spec.get("type"), str)(default)

    assert validate_payload(payload) == []


def _sensor() -> dict[str, Any]:
    return events.sensor()


def test_sensor_filters_check_the_event_id() -> None:
    dependency = _sensor()["spec"]["dependencies"][0]
    data = dependency["filters"]["data"]
    pattern = load_payload_schema()["properties"]["event_id"]["pattern"]

    assert {"path": "body.event_id", "type": "string", "value": [pattern]} in data
    assert 'body["event_id"]' in dependency["filters"]["script"]
    assert dependency["eventSourceName"] == events.EVENT_SOURCE
    assert dependency["eventName"] in events.event_source()["spec"]["webhook"]


def test_sensor_runs_under_its_own_service_account_with_a_rate_limit() -> None:
    spec = _sensor()["spec"]

    assert spec["template"]["serviceAccountName"] == "fashion-pipeline-sensor"
    assert spec["triggers"][0]["rateLimit"] == {"unit": "Minute", "requestsPerUnit": 10}
    assert spec["triggers"][0]["template"]["argoWorkflow"]["operation"] == "submit"


def test_webhook_needs_a_bearer_token_and_caps_the_payload() -> None:
    webhook = events.event_source()["spec"]["webhook"]["retrain"]

    assert webhook["authSecret"] == {"name": "fashion-pipeline-webhook", "key": "token"}
    assert (webhook["port"], webhook["endpoint"], webhook["method"]) == ("12000", "/retrain", "POST")
    assert webhook["maxPayloadSize"] == 65536


def test_event_bus_pins_a_jetstream_version_the_pinned_argo_events_release_offers() -> None:
    offered = yaml.safe_load((Path(__file__).parent / "upstream" / "argo-events-v1.9.11-jetstream.yaml").read_text())
    cluster_up = (Path(__file__).parent.parent / "scripts" / "cluster-up.sh").read_text()
    version = events.event_bus()["spec"]["jetstream"]["version"]

    assert f"ARGO_EVENTS_VERSION={offered['argoEvents']}" in cluster_up  # the list is the installed release's
    assert version in {entry["version"] for entry in offered["versions"]}
    assert version != "latest"  # pinned: `latest` changes with the release


# -- the Lua script filter, run by a real Lua 5.1 (gopher-lua implements Lua 5.1) ------------------

LUA = shutil.which("lua5.1") or shutil.which("lua")
needs_lua = pytest.mark.skipif(
    LUA is None and not os.environ.get("CI"), reason="lua5.1 is not installed (apt-get install lua5.1)"
)


def _lua_value(value: Any) -> str:
    """A Lua literal of a decoded JSON value, as Argo Events builds the script's `event` table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, str):
        return events.lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(_lua_value(v) for v in value) + "}"
    # Objects: Argo Events drops nil values (mapToTable has no case for them).
    items = (f"[{events.lua_string(k)}] = {_lua_value(v)}" for k, v in value.items() if v is not None)
    return "{" + ", ".join(items) + "}"


def _lua_filter_accepts(bodies: list[Any]) -> list[bool]:
    assert LUA is not None, "CI needs lua5.1 (apt-get install lua5.1)"
    script = events.lua_filter(load_payload_schema())
    cases = ",\n".join(f"{{header = {{}}, body = {_lua_value(body)}}}" for body in bodies)
    program = (
        f"local function filter()\n{script}end\n"
        f"local cases = {{\n{cases}\n}}\n"
        "for i = 1, #cases do event = cases[i]; print(tostring(filter() == true)) end\n"
    )
    result = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, timeout=30, check=True)
    return [line == "true" for line in result.stdout.split()]


@needs_lua
def test_lua_filter_accepts_exactly_what_the_schema_accepts() -> None:
    bodies: list[Any] = [
        *VALID,
        *(payload for payload, _ in INVALID if None not in payload.values()),
        {"event_id": "x", "reason": "é" * 200},
        {"event_id": "x", "reason": "é" * 201},
        {"event_id": "a" * 42},
        {"event_id": "0"},
        {"event_id": "x", "data_url": "file:///srv/drops/2026"},
        {"event_id": "x", "data_url": "http://mirror.local/fashion"},
        {"event_id": "x", "architecture": 3},
        {"event_id": "x", "epochs": [3]},
        ["event_id"],
        "event_id",
    ]
    expected = [isinstance(body, dict) and validate_payload(body) == [] for body in bodies]

    assert _lua_filter_accepts(bodies) == expected


@needs_lua
@pytest.mark.parametrize("pattern", sorted(events.LUA_PATTERNS))
def test_lua_twin_of_each_pattern_matches_what_go_matches(pattern: str) -> None:
    samples = ["a", "ab", "a-b", "-a", "a-", "A", "a_b", "a" * 42, "a" * 43, "a\n", "", "\n"]
    samples += ["s3://b/k", "https://h/p", "http://h", "file:///x", "ftp://h", "s3://", "s3://a b", "https://x\n"]
    # Go's RE2 (the Sensor's data filter) anchors $ at the very end, unlike Python's re.
    go_like = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)
    lua_condition = events.LUA_PATTERNS[pattern]
    program = "".join(
        f"do local v = {events.lua_string(s)}; print(tostring(({lua_condition}) == true)) end\n" for s in samples
    )
    assert LUA is not None
    result = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, timeout=30, check=True)

    assert [line == "true" for line in result.stdout.split()] == [bool(go_like.search(s)) for s in samples]


# -- the rendered manifests -----------------------------------------------------------------------


def test_rendered_events_are_current() -> None:
    assert (REPO / "argo" / "events.yaml").read_text() == rendered()["events.yaml"]


@pytest.mark.skipif(not SCHEMAS.is_dir() and not os.environ.get("CI"), reason=f"no schemas at {SCHEMAS}")
def test_rendered_events_lint_clean() -> None:
    assert lint_paths([REPO / "argo" / "events.yaml"], SCHEMAS) == []
