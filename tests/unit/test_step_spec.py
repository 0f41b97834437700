"""Each step is declared once (workflows/spec.py): its template and its command are derived from the spec."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer

from workflows.arguments import ARGUMENTS
from workflows.cli import app
from workflows.cli.steps import step_command
from workflows.pipeline import manifest
from workflows.spec import BY_COMMAND, REPORT, STEPS, Step


def _commands() -> MutableMapping[str, Any]:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    return group.commands


@pytest.mark.parametrize("step", [*STEPS, REPORT], ids=lambda step: step.name)
def test_the_command_line_of_every_template_parses_with_its_command(step: Step) -> None:
    [template] = [t for t in manifest()["spec"]["templates"] if t["name"] == step.name]
    command, *args = template["container"]["args"]
    assert command == step.command and template["container"]["command"] == ["fashion-pipeline"]
    # What Argo substitutes: an argument's own default, anything else (a version, a URI, a status) a word.
    defaults = {a.input_name: a.argo_default for a in ARGUMENTS}
    filled = [re.sub(r"\{\{inputs\.parameters\.(\w+)\}\}", lambda m: defaults.get(m[1], "x"), a) for a in args]
    filled = [re.sub(r"\{\{[^}]*\}\}", "x", a) for a in filled]

    context = _commands()[step.command].make_context(step.command, filled)

    passed = {name.replace("-", "_") for name in step.flags()}
    assert passed <= set(context.params), passed - set(context.params)
    if step.outputs:
        assert context.params["out"] == Path("/tmp/outputs")


@pytest.mark.parametrize("step", [*STEPS, REPORT], ids=lambda step: step.name)
def test_a_command_run_by_hand_writes_its_outputs_under_outputs_and_its_name(step: Step) -> None:
    out = next(p for p in _commands()[step.command].params if p.name == "out")
    assert out.default == Path("outputs") / step.command


def test_a_command_that_lacks_an_option_its_template_passes_fails_at_import() -> None:
    def evaluate(dataset: str = "", *, out: Annotated[Path, typer.Option()]) -> None:  # no --model, no --champion
        pass

    with pytest.raises(TypeError, match="evaluate lacks options its template passes: --model, --champion"):
        step_command("evaluate")(evaluate)


def test_every_step_with_outputs_has_a_command_and_every_command_is_a_step() -> None:
    assert set(BY_COMMAND) <= set(_commands())
    assert [step.name for step in STEPS] == ["fetch-dataset", "train", "evaluate", "gate", "rollout"]
