"""Webhook retrains: the payload contract, the Sensor generated from it, and the Workflow it submits."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from conftest import REPO, SCHEMAS
from lua_harness import LUA, lua_value, run_lua

from steps.errors import UserError
from steps.gate import POLICY_FIELDS
from steps.model import ARCHITECTURES, AUTO
from steps.train import PRECISIONS
from workflows import pipeline, trigger
from workflows.arguments import ARGUMENTS
from workflows.render import rendered
from workflows.triggers import webhook_sensor
from workflows.triggers.payload import (
    DEFAULT_DATA_URL_PREFIXES,
    check_data_url_prefixes,
    data_url_problem,
    load_payload_schema,
    operator_arguments,
    payload_to_parameters,
    validate_payload,
)
from workflows.validate import lint_paths

TEMPLATE_DEFAULTS = {argument.name: argument.argo_default for argument in ARGUMENTS}

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
}
# Numbers whose JSON text is not what Python's str() gives: the Sensor (gjson) decides.
NUMBER_FORMS = {"event_id": "n-1", "epochs": 8.0, "learning_rate": 1e-05, "train_limit": 0.0, "seed": 4294967295}
VALID = [MINIMAL, EVERY_FIELD, NUMBER_FORMS]
# What an event once could say to push a worse model, and everything else that is the operator's.
WEAKENED_GATE = {"min_accuracy": 0, "min_class_recall": 0, "allow_equal": True, "tolerance": 1, "min_delta": -1}
OPERATOR_ONLY = {
    **WEAKENED_GATE,
    "alpha": 1,
    "first_run": "promote",
    "canary_percent": 100,
    "rollout_target": "local",
    "store": "file:///tmp/elsewhere",
    "s3_endpoint": "http://169.254.169.254",
    "trigger": '{"by":"schedule"}',
}
REFUSED_DATA_URLS = [
    "file:///etc/passwd",
    "file:///srv/drops/2026/",
    "http://169.254.169.254/latest/meta-data/",
    "http://mirror.local/fashion",
    "https://data.example.com/drops/../../secrets/",
    "https://data.example.com/drops/%2E%2E/x",
    "s3://bucket/drops/./x",
    "s3://bucket/drops/..",
    "https://data.example.com\\..\\x",
]

INVALID = [
    ({}, "event_id"),
    ({"event_id": "Drop_1"}, "event_id"),
    ({"event_id": "-drop"}, "event_id"),
    ({"event_id": "drop-"}, "event_id"),
    ({"event_id": "a" * 43}, "event_id"),
    ({"event_id": "drop\n"}, "event_id"),
    ({"event_id": 12}, "event_id"),
    ({"event_id": "x", "epochs": -1}, "epochs"),
    ({"event_id": "x", "train_budget_s": 0}, "train_budget_s"),
    ({"event_id": "x", "train_budget_s": 3001}, "train_budget_s"),
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
    ({"event_id": "x", "epochs": None}, "epochs"),
    ({"event_id": "x", "reason": "r" * 201}, "reason"),
    ({"event_id": "x", "data_url": "ftp://mirror/fashion"}, "data_url"),
    ({"event_id": "x", "data_url": "https://mirror/a b"}, "data_url"),
    ({"event_id": "x", "data_url": "https://mirror/\n"}, "data_url"),
    ({"event_id": "x", "epoch": 3}, "epoch"),
    *(({"event_id": "x", name: value}, name) for name, value in OPERATOR_ONLY.items()),
    *(({"event_id": "x", "data_url": url}, "data_url") for url in REFUSED_DATA_URLS),
]


def _arguments(workflow: dict[str, Any]) -> dict[str, str]:
    return {p["name"]: p["value"] for p in workflow["spec"]["arguments"]["parameters"]}


def _trigger(workflow: dict[str, Any]) -> dict[str, Any]:
    return json.loads(_arguments(workflow)["trigger"])


@pytest.mark.parametrize("payload", VALID, ids=["minimal", "every-field", "number-forms"])
def test_sensor_submits_the_arguments_the_local_receiver_runs_with(payload: dict[str, Any]) -> None:
    assert validate_payload(payload) == []
    workflow = webhook_sensor.sensor_workflow(payload)
    # Argo merges the Workflow's arguments with the template's by name: what is not set keeps its default.
    effective = {**TEMPLATE_DEFAULTS, **_arguments(workflow)}

    assert workflow["metadata"]["name"] == f"retrain-{payload['event_id']}"
    assert workflow["spec"]["workflowTemplateRef"] == {"name": pipeline.NAME}
    assert effective == {**TEMPLATE_DEFAULTS, **payload_to_parameters(payload), "trigger": effective["trigger"]}
    assert _trigger(workflow) == json.loads(trigger.summary("webhook", "sensor/fashion-retrain", payload=payload))


def test_sensor_sets_no_policy_so_the_workflow_template_decides_it() -> None:
    workflow = webhook_sensor.sensor_workflow(EVERY_FIELD)
    parameters = webhook_sensor.sensor()["spec"]["triggers"][0]["template"]["argoWorkflow"]["parameters"]
    payload_fields = set(load_payload_schema()["properties"]) - {"event_id"}

    assert set(_arguments(workflow)) == payload_fields | {"trigger"}
    assert not set(_arguments(workflow)) & set(operator_arguments()) - {"trigger"}
    assert not any(name in p["src"].get("dataKey", "") for p in parameters for name in WEAKENED_GATE)
    # dest indexes by position: the Workflow lists its arguments in the template's order.
    order = [argument.name for argument in ARGUMENTS]
    assert list(_arguments(workflow)) == sorted(_arguments(workflow), key=order.index)


def test_a_payload_smuggling_policy_into_the_sensor_is_dropped_by_its_filter() -> None:
    """Were the filter bypassed, the policy fields still reach no argument: the Sensor does not map them."""
    smuggled = {**EVERY_FIELD, **WEAKENED_GATE}
    arguments = _arguments(webhook_sensor.sensor_workflow(smuggled))

    assert not set(arguments) & set(WEAKENED_GATE)
    assert _trigger(webhook_sensor.sensor_workflow(smuggled))["payload"] == smuggled  # and the attempt is on record


def test_numbers_reach_the_workflow_as_the_steps_parse_them() -> None:
    arguments = _arguments(webhook_sensor.sensor_workflow(NUMBER_FORMS))

    assert arguments["epochs"] == "8"  # int("8.0") would fail in the train step
    assert arguments["learning_rate"] == "0.00001"
    assert arguments["seed"] == "4294967295"


def test_webhook_runs_say_why_they_ran() -> None:
    assert _arguments(webhook_sensor.sensor_workflow(MINIMAL))["reason"] == "webhook retrain"
    assert _arguments(webhook_sensor.sensor_workflow(EVERY_FIELD))["reason"] == EVERY_FIELD["reason"]


def test_redelivered_event_gets_the_same_workflow_name() -> None:
    first = webhook_sensor.sensor_workflow({"event_id": "drop-7", "epochs": 2})
    again = webhook_sensor.sensor_workflow({"event_id": "drop-7", "epochs": 2})

    assert first["metadata"]["name"] == again["metadata"]["name"] == "retrain-drop-7"
    assert "generateName" not in first["metadata"]


def test_sensor_cannot_submit_a_workflow_without_an_event_id() -> None:
    with pytest.raises(ValueError, match="event_id"):
        webhook_sensor.sensor_workflow({"epochs": 2})


@pytest.mark.parametrize(("payload", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
def test_contract_violations_are_refused_naming_the_field(payload: dict[str, Any], field: str) -> None:
    problems = validate_payload(payload)

    assert problems, f"{payload} was accepted"
    assert any(problem.startswith(f"{field}:") for problem in problems), problems


def test_misspelt_argument_is_refused_with_a_suggestion() -> None:
    assert validate_payload({"event_id": "x", "epoch": 3}) == ["epoch: unknown field (did you mean 'epochs'?)"]


def test_payload_that_is_not_an_object_is_refused() -> None:
    assert validate_payload(["event_id", "x"]) == ["the payload must be a JSON object, got list"]


def test_the_payload_choices_are_their_owners() -> None:
    properties = load_payload_schema()["properties"]

    assert tuple(properties["architecture"]["enum"]) == (AUTO, *ARCHITECTURES)
    assert tuple(properties["precision"]["enum"]) == tuple(PRECISIONS)


def test_no_gate_or_rollout_policy_field_is_part_of_the_contract() -> None:
    fields = set(load_payload_schema()["properties"])

    assert not fields & {*POLICY_FIELDS, "canary_percent", "rollout_target", "store", "s3_endpoint", "trigger"}
    assert set(OPERATOR_ONLY) <= set(operator_arguments())


@pytest.mark.parametrize("field", sorted(OPERATOR_ONLY))
def test_a_policy_field_is_refused_saying_the_operator_sets_it(field: str) -> None:
    [problem] = validate_payload({"event_id": "x", field: OPERATOR_ONLY[field]})

    assert problem.startswith(f"{field}: refused")
    assert "policy" in problem and "set by the operator" in problem and f"-p {field}=" in problem


@pytest.mark.parametrize("url", REFUSED_DATA_URLS)
def test_a_data_url_outside_the_allowlist_is_refused_naming_the_allowed_prefixes(url: str) -> None:
    problems = validate_payload({"event_id": "x", "data_url": url})

    assert len(problems) == 1 and problems[0].startswith("data_url:"), problems
    if not url.startswith(DEFAULT_DATA_URL_PREFIXES):
        assert "the allowed prefixes are https://, s3://" in problems[0]


def test_the_operator_widens_or_narrows_the_data_url_allowlist() -> None:
    drops = check_data_url_prefixes(["file:///srv/drops/", "https://data.example.com/"])
    drop = {"event_id": "x", "data_url": "file:///srv/drops/2026-11-27/"}

    assert validate_payload(drop, drops) == []
    assert payload_to_parameters(drop, drops)["data_url"] == "file:///srv/drops/2026-11-27/"
    assert validate_payload({"event_id": "x", "data_url": "https://data.example.com/d/"}, drops) == []
    # narrowed: the defaults are gone once the operator names a list
    assert validate_payload({"event_id": "x", "data_url": "s3://bucket/d/"}, drops) != []
    assert validate_payload({"event_id": "x", "data_url": "file:///etc/passwd"}, drops) != []
    assert validate_payload({"event_id": "x", "data_url": "https://data.example.com.evil.org/"}, drops) != []
    assert validate_payload({"event_id": "x", "data_url": "file:///srv/drops/../../etc/"}, drops) != []


@pytest.mark.parametrize(
    ("prefix", "complaint"),
    [
        ("ftp://mirror/", "not a URL prefix"),
        ("https://data.example.com", "end it with '/'"),
        ("s3://bucket", "end it with '/'"),
        ("file:///srv/drops/../", "no '.' or '..'"),
        ("/srv/drops/", "not a URL prefix"),
    ],
)
def test_an_allowlist_prefix_that_would_match_more_than_it_says_is_refused(prefix: str, complaint: str) -> None:
    with pytest.raises(UserError, match=re.escape(complaint)):
        check_data_url_prefixes([prefix])


def test_template_defaults_keep_the_contract() -> None:
    """A payload that spells out every default is valid: the schema's ranges contain the template's values."""
    schema = load_payload_schema()
    as_json: dict[str, Callable[[str], Any]] = {"integer": int, "number": float, "boolean": lambda text: text == "true"}
    payload: dict[str, Any] = {"event_id": "defaults"}
    for name, spec in schema["properties"].items():
        default = TEMPLATE_DEFAULTS.get(name)
        if name != "event_id" and default:
            payload[name] = as_json.get(spec.get("type"), str)(default)

    assert validate_payload(payload) == []


def _sensor() -> dict[str, Any]:
    return webhook_sensor.sensor()


def test_sensor_filters_check_the_event_id() -> None:
    dependency = _sensor()["spec"]["dependencies"][0]
    data = dependency["filters"]["data"]
    pattern = load_payload_schema()["properties"]["event_id"]["pattern"]

    assert {"path": "body.event_id", "type": "string", "value": [pattern]} in data
    assert 'body["event_id"]' in dependency["filters"]["script"]
    assert dependency["eventSourceName"] == webhook_sensor.EVENT_SOURCE
    assert dependency["eventName"] in webhook_sensor.event_source()["spec"]["webhook"]


def test_sensor_runs_under_its_own_service_account_with_a_rate_limit() -> None:
    spec = _sensor()["spec"]

    assert spec["template"]["serviceAccountName"] == "fashion-pipeline-sensor"
    assert spec["triggers"][0]["rateLimit"] == {"unit": "Minute", "requestsPerUnit": 10}
    assert spec["triggers"][0]["template"]["argoWorkflow"]["operation"] == "submit"


def test_webhook_needs_a_bearer_token_and_caps_the_payload() -> None:
    webhook = webhook_sensor.event_source()["spec"]["webhook"]["retrain"]

    assert webhook["authSecret"] == {"name": "fashion-pipeline-webhook", "key": "token"}
    assert (webhook["port"], webhook["endpoint"], webhook["method"]) == ("12000", "/retrain", "POST")
    assert webhook["maxPayloadSize"] == 65536


def test_event_bus_pins_a_jetstream_version_the_pinned_argo_events_release_offers() -> None:
    offered = yaml.safe_load((REPO / "tests" / "upstream" / "argo-events-v1.9.11-jetstream.yaml").read_text())
    cluster_up = (REPO / "scripts" / "cluster-up.sh").read_text()
    version = webhook_sensor.event_bus()["spec"]["jetstream"]["version"]

    assert f"ARGO_EVENTS_VERSION={offered['argoEvents']}" in cluster_up  # the list is the installed release's
    assert version in {entry["version"] for entry in offered["versions"]}
    assert version != "latest"  # pinned: `latest` changes with the release


# -- the Lua script filter, run by a real Lua 5.1 (gopher-lua implements Lua 5.1) ------------------

needs_lua = pytest.mark.skipif(
    LUA is None and not os.environ.get("CI"), reason="lua5.1 is not installed (apt-get install lua5.1)"
)


def _lua_filter_accepts(bodies: list[Any]) -> list[bool]:
    assert LUA is not None, "CI needs lua5.1 (apt-get install lua5.1)"
    script = webhook_sensor.lua_filter(load_payload_schema())
    cases = ",\n".join(f"{{header = {{}}, body = {lua_value(body)}}}" for body in bodies)
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
        *(payload for payload, _ in INVALID if isinstance(payload, dict) and None not in payload.values()),
        {"event_id": "x", "reason": "é" * 200},
        {"event_id": "x", "reason": "é" * 201},
        {"event_id": "a" * 42},
        {"event_id": "0"},
        {"event_id": "x", "data_url": "file:///srv/drops/2026"},
        {"event_id": "x", "data_url": "http://mirror.local/fashion"},
        {"event_id": "x", "data_url": "https://data.example.com/drops/2026-11-27/"},
        {"event_id": "x", "data_url": "s3://fashion-pipeline/drops/.well-known/x"},
        {"event_id": "x", "data_url": "S3://fashion-pipeline/drops/"},
        {"event_id": "x", "architecture": 3},
        {"event_id": "x", "epochs": [3]},
        ["event_id"],
        "event_id",
    ]
    expected = [isinstance(body, dict) and validate_payload(body) == [] for body in bodies]

    assert _lua_filter_accepts(bodies) == expected


@needs_lua
@pytest.mark.parametrize(
    "prefixes",
    [DEFAULT_DATA_URL_PREFIXES, ("file:///srv/drops/", "https://data.example.com/"), ("http://",), ()],
    ids=["default", "drops", "http", "none"],
)
def test_lua_data_url_check_matches_the_receivers(prefixes: tuple[str, ...]) -> None:
    samples = [
        *REFUSED_DATA_URLS,
        "https://data.example.com/drops/2026/",
        "https://data.example.com.evil.org/",
        "s3://fashion-pipeline/drops/x.gz",
        "file:///srv/drops/2026/",
        "file:///srv/drops/../x",
        "file:///srv/dropsX/",
        "http://mirror.local/.well-known/x",
        "https://h/a/.",
        "https://h/%2e",
        "https://h/é/",
    ]
    condition = webhook_sensor.lua_data_url_conditions(prefixes)
    program = "".join(
        f"do local v = {webhook_sensor.lua_string(s)}; print(tostring(({condition}) == true)) end\n" for s in samples
    )

    assert run_lua(program) == [data_url_problem(s, prefixes) is None for s in samples]


@needs_lua
@pytest.mark.parametrize("pattern", sorted(webhook_sensor.LUA_PATTERNS))
def test_lua_twin_of_each_pattern_matches_what_go_matches(pattern: str) -> None:
    samples = ["a", "ab", "a-b", "-a", "a-", "A", "a_b", "a" * 42, "a" * 43, "a\n", "", "\n"]
    samples += ["s3://b/k", "https://h/p", "http://h", "file:///x", "ftp://h", "s3://", "s3://a b", "https://x\n"]
    # Go's RE2 (the Sensor's data filter) anchors $ at the very end, unlike Python's re.
    go_like = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)
    lua_condition = webhook_sensor.LUA_PATTERNS[pattern]
    program = "".join(
        f"do local v = {webhook_sensor.lua_string(s)}; print(tostring(({lua_condition}) == true)) end\n"
        for s in samples
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
