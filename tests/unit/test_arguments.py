"""The workflow's arguments are declared once (workflows/arguments.py); everything that names one follows the table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from steps.errors import UserError
from steps.gate import POLICY_FIELDS, GatePolicy
from steps.parameters import Spec, specs
from steps.rollout import RolloutPolicy
from steps.train import TrainParams
from workflows import arguments
from workflows.arguments import Argument, step_arguments
from workflows.cli import app
from workflows.pipeline import manifest
from workflows.render import render, stale
from workflows.triggers import drops, payload

STEPS = ("fetch", "train", "gate", "rollout")
# The command-line defaults that are the laptop's, not the cluster's.
CLI_DEFAULTS = {("rollout", "rollout_target"): "local", ("rollout", "reason"): "rollout"}


def _options(step: str) -> dict[str, Any]:
    """The options of the command `step`, by parameter name, as the CLI parses them."""
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    command = group.commands[step]
    return {option.name: option for option in command.params}


def _template(step: str) -> dict[str, Any]:
    name = "fetch-dataset" if step == "fetch" else step
    [template] = [t for t in manifest()["spec"]["templates"] if t["name"] == name]
    return template


def _task(step: str) -> dict[str, Any]:
    dag = next(t for t in manifest()["spec"]["templates"] if "dag" in t)
    return next(t for t in dag["dag"]["tasks"] if t["template"] == _template(step)["name"])


@pytest.mark.parametrize("step", STEPS)
def test_every_argument_of_a_step_is_a_workflow_argument_a_template_input_and_an_option(step: str) -> None:
    declared = {p["name"]: p for p in manifest()["spec"]["arguments"]["parameters"]}
    inputs = [p["name"] for p in _template(step)["inputs"]["parameters"]]
    passed = {p["name"]: p["value"] for p in _task(step)["arguments"]["parameters"]}
    options = _options(step)

    assert step_arguments(step)
    for argument in step_arguments(step):
        name = argument.input_name
        assert declared[argument.name]["value"] == argument.argo_default
        assert declared[argument.name]["description"] == argument.spec.description
        assert name in inputs and passed[name] == f"{{{{workflow.parameters.{argument.name}}}}}"
        assert f"--{name.replace('_', '-')}" in _template(step)["container"]["args"]
        default = CLI_DEFAULTS.get((step, argument.name), argument.default)
        assert options[name].default == (argument.argo_default if isinstance(default, bool) else default), name


def test_the_workflow_declares_the_table_in_its_order_with_the_choices() -> None:
    declared = manifest()["spec"]["arguments"]["parameters"]

    assert [p["name"] for p in declared] == [a.name for a in arguments.ARGUMENTS]
    assert {p["name"]: tuple(p.get("enum", ())) for p in declared} == {
        a.name: a.argo_choices for a in arguments.ARGUMENTS
    }


@pytest.mark.parametrize(("step", "params"), [("train", TrainParams), ("gate", GatePolicy), ("rollout", RolloutPolicy)])
def test_a_steps_parameters_are_its_arguments_with_their_defaults(step: str, params: type) -> None:
    declared = specs(params)
    taken = {a.name: a for a in step_arguments(step) if a.name in declared}

    assert list(taken) == list(declared)
    assert all(taken[name].default == default for name, (default, _) in declared.items())


def test_the_gate_policy_the_record_attributes_is_the_gates_arguments() -> None:
    assert POLICY_FIELDS == tuple(a.name for a in step_arguments("gate"))


def test_the_payload_schema_has_a_field_for_every_argument_an_event_may_set() -> None:
    properties = payload.load_payload_schema()["properties"]

    assert list(properties) == ["event_id", *(a.name for a in arguments.ARGUMENTS if a.event)]
    assert set(payload.operator_arguments()) == {a.name for a in arguments.ARGUMENTS if not a.event}
    assert properties["epochs"] == {
        "description": "Passes over the training split, exactly; 0 trains for train_budget_s instead.",
        "type": "integer",
        "minimum": 0,
        "maximum": 200,
    }
    assert properties["train_budget_s"]["type"] == "number"
    assert (properties["train_budget_s"]["minimum"], properties["train_budget_s"]["maximum"]) == (10, 3000)
    assert properties["learning_rate"]["exclusiveMinimum"] == 0 and "minimum" not in properties["learning_rate"]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (TrainParams(epochs=-1), "epochs must be between 0 and 200 (got -1)"),
        (TrainParams(train_budget_s=0), "train_budget_s must be between 10 and 3000 (got 0)"),
        (TrainParams(train_budget_s=-5), "train_budget_s must be between 10 and 3000 (got -5)"),
        (TrainParams(learning_rate=0.0), "learning_rate must be in (0, 1] (got 0.0)"),
        (TrainParams(train_limit=-1), "train_limit must be at least 0 (got -1)"),
        (TrainParams(precision="fp8"), "unknown precision 'fp8': choose one of auto, float32, mixed_bfloat16"),
        (GatePolicy(min_delta=-2), "min_delta must be between -1 and 1 (got -2)"),
        (GatePolicy(first_run="maybe"), "unknown first_run 'maybe': choose one of promote, reject"),
        (RolloutPolicy(canary_percent=101), "canary_percent must be between 0 and 100 (got 101)"),
    ],
)
def test_a_value_out_of_its_declared_bounds_is_refused_naming_them(params: Any, message: str) -> None:
    with pytest.raises(UserError) as refused:
        params.check()

    assert str(refused.value) == message


# The payload and drop schemas are built once per process, from the table as it was then.
SCHEMA_CACHES = (payload._schema, payload._validator, drops._drop_schema)


@pytest.fixture
def fresh_schemas() -> Iterator[None]:
    yield
    for cache in SCHEMA_CACHES:
        cache.cache_clear()


def test_an_argument_added_to_the_table_reaches_every_generated_file_and_render_check_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_schemas: None
) -> None:
    out, schema = tmp_path / "argo", tmp_path / "retrain-payload.schema.json"
    render(out, schema)
    assert stale(out, schema) == []

    smoothing = Argument(
        "label_smoothing", 0.0, Spec("Label smoothing of the loss", minimum=0, maximum=0.5), step="train", event=True
    )
    monkeypatch.setattr(arguments, "ARGUMENTS", (*arguments.ARGUMENTS, smoothing))
    for cache in SCHEMA_CACHES:
        cache.cache_clear()

    generated = ("workflow-template.yaml", "events.yaml", "drop-events.yaml")
    assert sorted(stale(out, schema)) == sorted([str(schema), *(str(out / name) for name in generated)])
    render(out, schema)
    assert "--label-smoothing" in (out / "workflow-template.yaml").read_text()
    assert '"label_smoothing"' in schema.read_text()
    assert stale(out, schema) == []
