"""The local engine's Argo semantics, on small workflows whose nodes are real Python processes."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from steps.errors import UserError
from workflows.engine import Engine, UnsupportedConstruct


def script(name: str, code: str, **extra: Any) -> dict[str, Any]:
    """A container template running `python -c CODE`; it may write /tmp/outputs/<name> files."""
    return {"name": name, "container": {"image": "python:3.11", "command": ["python", "-c", code]}, **extra}


def out_param(name: str, **value_from: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"path": f"/tmp/outputs/{name}", **value_from}}


WRITE = "import os,sys; os.makedirs('/tmp/outputs', exist_ok=True); open('/tmp/outputs/{n}','w').write({v!r})"


def workflow(tasks: list[dict[str, Any]], templates: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {"generateName": "test-"},
        "spec": {"entrypoint": "main", "templates": [{"name": "main", "dag": {"tasks": tasks}}, *templates], **spec},
    }


def run(manifest: dict[str, Any], tmp_path: Path, **params: str) -> Any:
    return Engine(manifest, tmp_path / "runs", params).execute()


def writer(name: str, param: str, value: str) -> dict[str, Any]:
    # The engine maps the container path /tmp/outputs to the node's own directory, in args too.
    code = f"import sys; open(sys.argv[1] + '/{param}', 'w').write({value!r})"
    return {
        "name": name,
        "container": {"image": "python:3.11", "command": ["python", "-c", code, "/tmp/outputs"]},
        "outputs": {"parameters": [out_param(param)]},
    }


def test_when_true_runs_and_when_false_skips(tmp_path: Path) -> None:
    manifest = workflow(
        [
            {"name": "decide", "template": "decide"},
            {
                "name": "yes",
                "template": "noop",
                "depends": "decide",
                "when": "{{tasks.decide.outputs.parameters.answer}} == promote",
            },
            {
                "name": "no",
                "template": "noop",
                "depends": "decide",
                "when": "{{tasks.decide.outputs.parameters.answer}} != promote",
            },
        ],
        [writer("decide", "answer", "promote"), script("noop", "pass")],
    )
    result = run(manifest, tmp_path)
    assert result.phase == "Succeeded"
    assert result.nodes["yes"].phase == "Succeeded"
    assert result.nodes["no"].phase == "Skipped"
    assert "promote != promote" in result.nodes["no"].message


def test_retries_until_success_with_backoff(tmp_path: Path) -> None:
    counter = tmp_path / "count"
    code = (
        "import pathlib,sys; p=pathlib.Path(sys.argv[1]); n=int(p.read_text()) if p.exists() else 0; "
        "p.write_text(str(n+1)); sys.exit(0 if n >= 2 else 3)"
    )
    flaky = script(
        "flaky", code, retryStrategy={"limit": 3, "retryPolicy": "Always", "backoff": {"duration": "0.1s", "factor": 2}}
    )
    flaky["container"]["command"].append(str(counter))
    result = run(workflow([{"name": "flaky", "template": "flaky"}], [flaky]), tmp_path)
    assert result.phase == "Succeeded"
    assert result.nodes["flaky"].attempts == 3
    assert counter.read_text() == "3"


def test_retries_exhausted_fails_the_workflow_and_omits_dependents(tmp_path: Path) -> None:
    broken = script("broken", "import sys; print('boom'); sys.exit(4)", retryStrategy={"limit": "2"})
    manifest = workflow(
        [{"name": "broken", "template": "broken"}, {"name": "after", "template": "noop", "depends": "broken"}],
        [broken, script("noop", "pass")],
    )
    result = run(manifest, tmp_path)
    assert result.phase == "Failed"
    node = result.nodes["broken"]
    assert node.phase == "Failed" and node.attempts == 3
    assert "exit code 4" in node.message and "boom" in node.message
    assert result.nodes["after"].phase == "Omitted"
    record = json.loads((result.directory / "workflow.json").read_text())
    assert record["phase"] == "Failed" and record["nodes"][0]["attempts"] == 3


def test_template_deadline_kills_the_step(tmp_path: Path) -> None:
    slow = script("slow", "import time; time.sleep(60)", activeDeadlineSeconds=1)
    started = time.monotonic()
    result = run(workflow([{"name": "slow", "template": "slow"}], [slow]), tmp_path)
    assert time.monotonic() - started < 45  # far below the step's 60 s: the deadline cut it short
    assert result.phase == "Failed"
    assert result.nodes["slow"].message == "Step exceeded its deadline"


def test_workflow_deadline_stops_the_run_and_the_exit_handler_still_runs(tmp_path: Path) -> None:
    marker = tmp_path / "exit-status"
    exit_handler = script("report", f"import sys; open({str(marker)!r},'w').write(sys.argv[1])")
    exit_handler["container"]["command"].append("{{workflow.status}}")
    manifest = workflow(
        [{"name": "slow", "template": "slow"}, {"name": "next", "template": "slow", "depends": "slow"}],
        [script("slow", "import time; time.sleep(60)"), exit_handler],
        activeDeadlineSeconds=1,
        onExit="report",
    )
    result = run(manifest, tmp_path)
    assert result.phase == "Failed"
    assert result.nodes["slow"].message == "Step exceeded its deadline"
    assert result.nodes["next"].phase == "Omitted"
    assert marker.read_text() == "Failed"


def test_outputs_of_a_skipped_task_are_read_through_their_default(tmp_path: Path) -> None:
    maybe = writer("maybe", "result", "ran")
    maybe["outputs"]["parameters"][0]["valueFrom"]["default"] = "skipped"
    echo = script(
        "echo",
        "import sys; open(sys.argv[1] + '/seen', 'w').write(sys.argv[2])",
        inputs={"parameters": [{"name": "value"}]},
        outputs={"parameters": [out_param("seen")]},
    )
    echo["container"]["command"] += ["/tmp/outputs", "{{inputs.parameters.value}}"]
    manifest = workflow(
        [
            {"name": "maybe", "template": "maybe", "when": "false"},
            {
                "name": "echo",
                "template": "echo",
                "depends": "maybe",
                "arguments": {"parameters": [{"name": "value", "value": "{{tasks.maybe.outputs.parameters.result}}"}]},
            },
        ],
        [maybe, echo],
    )
    result = run(manifest, tmp_path)
    assert result.nodes["maybe"].phase == "Skipped"
    assert result.nodes["echo"].outputs == {"seen": "skipped"}


def test_reading_a_skipped_output_without_default_is_an_error(tmp_path: Path) -> None:
    manifest = workflow(
        [
            {"name": "maybe", "template": "maybe", "when": "1 > 2"},
            {
                "name": "use",
                "template": "noop",
                "depends": "maybe",
                "arguments": {"parameters": [{"name": "v", "value": "{{tasks.maybe.outputs.parameters.result}}"}]},
            },
        ],
        [writer("maybe", "result", "x"), script("noop", "pass", inputs={"parameters": [{"name": "v"}]})],
    )
    result = run(manifest, tmp_path)
    assert result.phase == "Failed"
    assert "{{tasks.maybe.outputs.parameters.result}} does not resolve" in result.nodes["use"].message


def test_exit_handler_runs_after_success_with_workflow_variables(tmp_path: Path) -> None:
    marker = tmp_path / "exit"
    handler = script("report", f"import sys; open({str(marker)!r},'w').write(' '.join(sys.argv[1:]))")
    handler["container"]["command"] += ["{{workflow.status}}", "{{workflow.name}}", "{{workflow.parameters.colour}}"]
    manifest = workflow(
        [{"name": "ok", "template": "noop"}],
        [script("noop", "pass"), handler],
        onExit="report",
        arguments={"parameters": [{"name": "colour", "value": "blue", "enum": ["blue", "red"]}]},
    )
    result = run(manifest, tmp_path, colour="red")
    status, name, colour = marker.read_text().split()
    assert (status, name, colour) == ("Succeeded", result.name, "red")


def test_failure_branch_with_depends_result(tmp_path: Path) -> None:
    manifest = workflow(
        [
            {"name": "fail", "template": "fail"},
            {"name": "on-failure", "template": "noop", "depends": "fail.Failed"},
            {"name": "on-success", "template": "noop", "depends": "fail.Succeeded"},
        ],
        [script("fail", "raise SystemExit(1)"), script("noop", "pass")],
    )
    result = run(manifest, tmp_path)
    assert result.nodes["on-failure"].phase == "Succeeded"
    assert result.nodes["on-success"].phase == "Omitted"


def test_unsupported_constructs_are_refused_by_name_before_anything_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    manifest = workflow([{"name": "a", "template": "a"}], [script("a", f"open({str(marker)!r}, 'w')")])
    manifest["spec"]["templates"].append({"name": "legacy", "steps": [[{"name": "x", "template": "a"}]]})
    with pytest.raises(UnsupportedConstruct, match=r"templates\[legacy\].steps is not supported"):
        Engine(manifest, tmp_path / "runs").execute()
    manifest["spec"]["templates"].pop()
    manifest["spec"]["volumeClaimTemplates"] = []
    with pytest.raises(UnsupportedConstruct, match=r"spec.volumeClaimTemplates is not supported"):
        Engine(manifest, tmp_path / "runs")
    assert not marker.exists()


def test_parameters_are_checked_like_argo_submit(tmp_path: Path) -> None:
    manifest = workflow(
        [{"name": "a", "template": "noop"}],
        [script("noop", "pass")],
        arguments={
            "parameters": [
                {"name": "epochs", "value": "1"},
                {"name": "target", "value": "local", "enum": ["local", "kserve"]},
            ]
        },
    )
    with pytest.raises(UserError, match="unknown parameter epoch: the workflow takes epochs, target"):
        Engine(manifest, tmp_path / "runs", {"epoch": "3"})
    with pytest.raises(UserError, match="target='gke' must be one of local, kserve"):
        Engine(manifest, tmp_path / "runs", {"target": "gke"})


def test_a_cycle_is_reported(tmp_path: Path) -> None:
    manifest = workflow(
        [{"name": "a", "template": "noop", "depends": "b"}, {"name": "b", "template": "noop", "depends": "a"}],
        [script("noop", "pass")],
    )
    result = run(manifest, tmp_path)
    assert result.phase == "Error" and "cycle" in result.message


def test_node_logs_and_outputs_are_kept_per_attempt(tmp_path: Path) -> None:
    talk = writer("talk", "said", "hello")
    talk["container"]["command"][2] = "import sys; print('to the log'); " + talk["container"]["command"][2]
    result = run(workflow([{"name": "talk", "template": "talk"}], [talk]), tmp_path)
    node = result.nodes["talk"]
    assert Path(node.log).read_text().strip() == "to the log"
    assert node.outputs == {"said": "hello"}
    assert (result.directory / "talk" / "attempt-1" / "outputs" / "said").read_text() == "hello"
    assert sys.executable  # nodes run in this Python environment
