"""Argo's expression grammars, shared by the local engine and the linter.

Each rule names the upstream file it comes from (argoproj/argo-workflows, tag v4.1.2). The engine
and the linter are both asked about the same `depends`, so they cannot drift apart again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import SCHEMAS, dag_workflow

from steps.errors import UserError
from workflows.argo_expressions import (
    BinOp,
    TaskRef,
    evaluate_depends,
    evaluate_when,
    parse_depends,
    replace_tags,
    tags,
    task_condition,
    task_results,
)
from workflows.engine import Engine
from workflows.validate import Validator

needs_schemas = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"no schemas at {SCHEMAS}")


def runs(depends: str, **phases: str) -> bool:
    return evaluate_depends(parse_depends(depends), {task: task_results(phase) for task, phase in phases.items()})


def dag(*tasks: dict[str, Any]) -> dict[str, Any]:
    """A Workflow whose DAG tasks each run `python -c pass` (a real process under the engine)."""
    noop = {"name": "noop", "container": {"image": "python:3.11", "command": ["python", "-c", "pass"]}}
    return dag_workflow("expr-", [{"template": "noop", **t} for t in tasks], noop)


def lint(manifest: dict[str, Any]) -> list[str]:
    return [f"{p.path}: {p.message}" for p in Validator(SCHEMAS).validate(manifest)]


# -- workflow/common/ancestry.go expandDependency: a bare name ------------------------------------
@pytest.mark.parametrize(
    ("phase", "daemoned", "expected"),
    [
        ("Succeeded", False, True),
        ("Skipped", False, True),
        ("Failed", False, False),
        ("Error", False, False),
        ("Omitted", False, False),
        ("Running", True, True),  # a daemon its dependents see while it keeps running
        ("Pending", True, False),  # dag.go: Daemoned only once the daemon is not Pending
    ],
)
def test_a_bare_name_means_succeeded_skipped_or_daemoned(phase: str, daemoned: bool, expected: bool) -> None:
    results = {"server": task_results(phase, daemoned=daemoned)}
    assert evaluate_depends(parse_depends("server"), results) is expected
    dependencies = task_condition({"dependencies": ["server"]})
    assert dependencies is not None and evaluate_depends(dependencies, results) is expected


# -- workflow/controller/dag.go evaluateDependsLogic: one result per phase, Daemoned as a flag ---
def test_daemoned_is_a_flag_beside_the_phase_not_a_phase() -> None:
    assert task_results("Succeeded", daemoned=True) == {"Succeeded", "Daemoned"}
    assert task_results("Succeeded") == {"Succeeded"}
    assert task_results("Error") == {"Errored"}
    assert not runs("a.Daemoned", a="Succeeded")
    assert runs("a.Succeeded && !a.Daemoned", a="Succeeded")


def test_results_and_boolean_logic() -> None:
    phases = {"a": "Succeeded", "b-2": "Skipped", "c": "Failed", "d": "Error"}
    assert runs("a && b-2", **phases)
    assert runs("c.Failed && !c.Succeeded", **phases)
    assert not runs("a && c", **phases)
    assert runs("(a.Succeeded || a.Skipped) && b-2.Skipped", **phases)
    assert runs("d.Errored && !d.Failed", **phases)
    assert not runs("a.Skipped || b-2.Succeeded", **phases)


def test_any_succeeded_and_all_failed_come_from_a_task_groups_children() -> None:
    assert task_results("Failed", children=["Succeeded", "Failed"]) == {"Failed", "AnySucceeded"}
    assert task_results("Failed", children=["Failed", "Failed"]) == {"Failed", "AllFailed"}
    assert task_results("Succeeded", children=[]) == {"Succeeded"}
    assert task_results("Succeeded") == {"Succeeded"}  # not a task group: neither result holds


def test_depends_wins_over_dependencies_and_dependencies_join_with_and() -> None:
    assert task_condition({"dependencies": ["a", "b"]}) == BinOp("&&", TaskRef("a", None), TaskRef("b", None))
    assert task_condition({"depends": "a.Failed", "dependencies": ["b"]}) == TaskRef("a", "Failed")
    assert task_condition({"name": "first"}) is None


# -- ancestry.go ValidateTaskResults: the results there are --------------------------------------
@pytest.mark.parametrize(
    ("expression", "error"),
    [
        ("a.Completed", "unknown task result '.Completed'"),
        ("a.Succeded", "unknown task result '.Succeded'"),
        ("(a || b", "missing ')'"),
        ("a == b", "unexpected '== b'"),
        ("a &&", "expression ends early"),
    ],
)
def test_a_depends_that_argo_refuses_does_not_parse(expression: str, error: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(error)}"):
        parse_depends(expression)


# -- the engine and the linter read `depends` the same way ----------------------------------------
def test_the_engine_runs_what_depends_on_daemoned_says(tmp_path: Path) -> None:
    """The engine used to refuse `.Daemoned` mid-run (an unknown result) while the linter accepted it."""
    manifest = dag(
        {"name": "a"},
        {"name": "b", "depends": "a.Succeeded && !a.Daemoned"},
        {"name": "c", "depends": "a.Daemoned"},
    )
    result = Engine(manifest, tmp_path / "runs").execute()
    assert result.phase == "Succeeded", result.message
    assert {n: result.nodes[n].phase for n in "abc"} == {"a": "Succeeded", "b": "Succeeded", "c": "Omitted"}


@needs_schemas
def test_engine_and_linter_accept_daemoned(tmp_path: Path) -> None:
    manifest = dag({"name": "a"}, {"name": "b", "depends": "a || a.Daemoned"})
    assert lint(manifest) == []
    Engine(manifest, tmp_path / "runs")  # refused constructs raise here, before anything runs


@needs_schemas
@pytest.mark.parametrize(
    ("depends", "problem"),
    [
        ("a.Completed", "unknown task result '.Completed'"),  # both accepted it; Argo does not
        ("a == b", "unexpected '== b'"),  # the engine used to evaluate this as govaluate
        ("ghost", "task 'b' depends on 'ghost', no such task"),
        ("a.AnySucceeded", "task 'b' depends on 'a.AnySucceeded', but 'a' has no items to loop over"),
    ],
)
def test_engine_and_linter_refuse_the_same_depends(tmp_path: Path, depends: str, problem: str) -> None:
    manifest = dag({"name": "a"}, {"name": "b", "depends": depends})
    assert any(problem in message for message in lint(manifest)), lint(manifest)
    with pytest.raises(UserError, match=re.escape(problem)):
        Engine(manifest, tmp_path / "runs")


@needs_schemas
def test_items_results_of_a_task_with_items_lint_clean() -> None:
    manifest = dag({"name": "a", "withItems": [1, 2]}, {"name": "b", "depends": "a.AnySucceeded || a.AllFailed"})
    assert lint(manifest) == []


# -- util/template/template.go and simple_template.go: tags ---------------------------------------
def test_tags_are_trimmed_and_end_at_the_first_closing_braces() -> None:
    text = "{{ workflow.name }}-{{inputs.parameters.x}}\n{{=sprig.trim(x)}} {{ a {{b}} }}"
    assert list(tags(text)) == ["workflow.name", "inputs.parameters.x", "=sprig.trim(x)", "a {{b"]
    assert replace_tags("{{ a }}/{{b}}", str.upper) == "A/B"


# -- workflow/controller/operator.go shouldExecute: when ------------------------------------------
def test_when_combines_comparisons_with_boolean_logic() -> None:
    assert evaluate_when("'a b' != 'a c' && (2 >= 1.5 || false)")
    assert not evaluate_when("!(true)")
