"""What the local engine passes to nodes is byte for byte what Argo Workflows v4.1.2 passes.

Each row names the upstream file the behaviour comes from (argoproj/argo-workflows, tag v4.1.2).
The nodes are real processes; each writes what it received into an output file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from steps.errors import UserError
from steps.registry import Registry
from steps.report import run_summary
from steps.storage import open_store
from workflows.argo_expressions import evaluate_when
from workflows.engine import Engine

RECORD = "import sys; open(sys.argv[1] + '/got', 'w').write(sys.argv[2])"


def recorder(name: str, value: str) -> dict[str, Any]:
    """A template that writes the substituted `value` into its output parameter `got`, unchanged."""
    return {
        "name": name,
        "container": {"image": "python:3.11", "command": ["python", "-c", RECORD, "/tmp/outputs", value]},
        "outputs": {"parameters": [{"name": "got", "valueFrom": {"path": "/tmp/outputs/got"}}]},
    }


def py(name: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "container": {"image": "python:3.11", "command": ["python", "-c", code]}, **extra}


def workflow(tasks: list[dict[str, Any]], templates: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "conf-", "namespace": "fashion"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates], **spec},
    }


def execute(manifest: dict[str, Any], tmp_path: Path) -> Any:
    return Engine(manifest, tmp_path / "runs").execute()


def exit_value(tmp_path: Path, fail: bool, variable: str) -> tuple[Any, str]:
    """Run one task (failing or not) and an exit handler that records `variable`."""
    code = "import sys; sys.exit(3)" if fail else "pass"
    manifest = workflow(
        [{"name": "work", "template": "work"}],
        [py("work", code), recorder("report", variable)],
        onExit="report",
    )
    result = execute(manifest, tmp_path)
    # The raw file, not the parameter: parameters trim a trailing newline.
    got = Path(result.nodes["onExit"].record()["log"]).parent / "outputs" / "got"
    return result, got.read_text()


# -- workflow/controller/operator.go (operate: globalParams before the exit handler) ----------------
def test_workflow_failures_is_the_quoted_string_null_when_nothing_failed(tmp_path: Path) -> None:
    result, got = exit_value(tmp_path, fail=False, variable="{{workflow.failures}}")
    assert got == '"null"'  # 6 characters: strconv.Quote of json.Marshal(nil slice)
    assert result.phase == "Succeeded"


def test_workflow_failures_is_a_json_list_quoted_as_a_json_string(tmp_path: Path) -> None:
    result, got = exit_value(tmp_path, fail=True, variable="{{workflow.failures}}")
    assert got.startswith('"[{\\"') and got.endswith('}]"')
    failures = json.loads(json.loads(got))  # decoded twice, as the report step must
    by_name = {f["displayName"]: f for f in failures}
    assert set(by_name) == {"work", result.name}  # the failed task and the DAG node it failed
    work = by_name["work"]
    assert set(work) == {"displayName", "message", "templateName", "phase", "podName", "finishedAt"}
    assert (work["templateName"], work["phase"]) == ("work", "Failed")
    assert work["message"].startswith("Error (exit code 3)")
    assert work["podName"].startswith(f"{result.name}-work-")  # pod name v2: <wf>-<template>-<fnv32a>
    assert by_name[result.name]["podName"] == result.name


def test_workflow_status_is_the_entry_nodes_phase(tmp_path: Path) -> None:
    _, ok = exit_value(tmp_path / "ok", fail=False, variable="{{workflow.status}}")
    _, failed = exit_value(tmp_path / "failed", fail=True, variable="{{workflow.status}}")
    assert (ok, failed) == ("Succeeded", "Failed")


# -- workflow/controller/operator.go (setGlobalParameters) ------------------------------------------
def test_workflow_name_and_namespace(tmp_path: Path) -> None:
    manifest = workflow([{"name": "a", "template": "a"}], [recorder("a", "{{workflow.name}}/{{workflow.namespace}}")])
    result = execute(manifest, tmp_path)
    assert result.nodes["a"].outputs["got"] == f"{result.name}/fashion"


# -- workflow/controller/operator.go (operate: a failed exit handler fails a Succeeded workflow) ----
def test_a_failed_exit_handler_turns_a_succeeded_workflow_into_failed(tmp_path: Path) -> None:
    manifest = workflow(
        [{"name": "work", "template": "work"}],
        [py("work", "pass"), py("report", "import sys; print('report broke'); sys.exit(1)")],
        onExit="report",
    )
    result = execute(manifest, tmp_path)
    assert result.nodes["work"].phase == "Succeeded"
    assert result.phase == "Failed"
    assert result.message.startswith("Error (exit code 1)")


# -- workflow/executor/executor.go (SaveParameters: one trailing newline trimmed) ------------------
@pytest.mark.parametrize(
    ("written", "value"),
    [("abc\n", "abc"), ("abc\n\n", "abc\n"), ("  abc  ", "  abc  "), ("", ""), ("a\nb", "a\nb")],
)
def test_output_parameters_lose_exactly_one_trailing_newline(tmp_path: Path, written: str, value: str) -> None:
    manifest = workflow([{"name": "a", "template": "a"}], [recorder("a", written)])
    assert execute(manifest, tmp_path).nodes["a"].outputs["got"] == value


# -- cmd/argoexec/commands/emissary.go saveParameter + executor.go SaveParameters ------------------
def test_an_output_parameter_the_step_does_not_write_fails_the_node_with_argos_message(tmp_path: Path) -> None:
    silent = py("a", "pass", outputs={"parameters": [{"name": "x", "valueFrom": {"path": "/tmp/outputs/x"}}]})
    result = execute(workflow([{"name": "a", "template": "a"}], [silent]), tmp_path)
    assert result.nodes["a"].phase == "Error"
    assert result.nodes["a"].message == "open /var/run/argo/outputs/parameters/tmp/outputs/x: no such file or directory"
    assert result.phase == "Failed"


# -- workflow/controller/operator.go shouldExecute (govaluate, variables read as strings) -----------
@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("promote == promote", True),
        ("reject == promote", False),
        ("promote != reject", True),
        ("1 == 1.0", True),
        ("'1' == 1", False),  # DeepEqual: a string never equals a number
        ("true == True", False),  # `True` is a bare word, so a string
        ("true && !false", True),
        ("b > a", True),  # strings compare lexically
        ("2 >= 10", False),
    ],
)
def test_when_is_govaluate_with_bare_words_as_strings(expression: str, expected: bool) -> None:
    assert evaluate_when(expression) is expected


@pytest.mark.parametrize("expression", ["promote", "1 + 1", "yes && true", "2 > b"])
def test_when_that_is_not_a_boolean_comparison_is_an_error(expression: str) -> None:
    with pytest.raises(UserError):
        evaluate_when(expression)


# -- the report step reads Argo's real values --------------------------------------------------------
def test_report_reads_argos_failures_for_a_clean_and_a_failed_run(tmp_path: Path) -> None:
    registry = Registry(open_store(str(tmp_path / "store")))
    clean = run_summary(registry, "wf-1", "Succeeded", '"null"')
    assert "## Failures" not in clean and "Production: no model yet" in clean
    listed = json.dumps([{"displayName": "train", "message": "Error (exit code 1): out of memory", "phase": "Failed"}])
    failed = run_summary(registry, "wf-2", "Failed", json.dumps(listed))
    assert "- train (Failed): Error (exit code 1): out of memory" in failed
