"""End to end: `fashion-pipeline run` executes the compiled WorkflowTemplate on real data."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import CLI, PROMOTED_PHASES, REPO

from steps.registry import Registry
from steps.storage import open_store
from workflows.pipeline import NAME, manifest
from workflows.render import rendered, stale

QUICK = ["-p", "train_limit=3000", "-p", "epochs=1", "-p", "min_accuracy=0.5", "-p", "min_class_recall=0"]


def fashion(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FASHION_PIPELINE_STORE": str(cwd / "store")}
    return subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def record(cwd: Path, name: str) -> dict[str, Any]:
    return json.loads((cwd / "runs" / name / "workflow.json").read_text())


def phases(run: dict[str, Any]) -> dict[str, str]:
    return {node["name"]: node["phase"] for node in run["nodes"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> Path:
    return tmp_path_factory.mktemp("embedded")


def test_run_promotes_a_first_model_then_rejects_a_worse_one(workdir: Path) -> None:
    first = fashion(workdir, "run", *QUICK, "--name", "first")
    assert first.returncode == 0, first.stderr
    run = record(workdir, "first")
    assert run["phase"] == "Succeeded"
    assert phases(run) == PROMOTED_PHASES
    registry = Registry(open_store(str(workdir / "store")))
    production = registry.alias("production")
    assert production is not None and production["version"] == run["outputs"]["parameters"]["model_version"]
    assert run["outputs"]["parameters"]["decision"] == "promote"
    assert run["parameters"]["rollout_target"] == "local"
    summary = next(n for n in run["nodes"] if n["name"] == "onExit")["outputs"]["artifacts"]["summary"]
    assert "first: Succeeded" in Path(summary).read_text()
    # What the user sees: the train row's progress while it runs, then the result on stdout.
    assert "first train: Running: epoch 1.0/1.0, val accuracy 0." in first.stderr
    version, accuracy = production["version"], float(run["outputs"]["parameters"]["accuracy"])
    assert first.stdout.splitlines()[0].startswith("first Succeeded in ")
    assert f"  model       {version}: test accuracy {accuracy:.4f}\n" in first.stdout
    assert "  champion    none in production\n  gate        promote\n" in first.stdout
    assert re.search(r"\n    ✓ min_accuracy +value 0\.\d{4} +threshold 0\.5000\n", first.stdout), first.stdout
    assert "  rollout     promoted" in first.stdout and f"  production  {version}\n" in first.stdout
    assert f"  records     {workdir / 'runs' / 'first' / 'workflow.json'}, " in first.stdout
    _outputs_are_what_the_templates_declare(workdir / "runs" / "first", run)

    second = fashion(workdir, "run", *QUICK, "-p", "min_accuracy=0.99", "-p", "seed=3", "--name", "second")
    assert second.returncode == 0, second.stderr  # a rejection is a successful run
    run = record(workdir, "second")
    assert phases(run)["gate"] == "Succeeded" and phases(run)["rollout"] == "Skipped"
    gate = next(n for n in run["nodes"] if n["name"] == "gate")
    decision = json.loads(Path(gate["outputs"]["artifacts"]["decision"]).read_text())
    assert decision["decision"] == "reject"
    assert decision["champion"] == production["version"]
    assert any("< floor 0.9900" in reason for reason in decision["reasons"])
    [gate_line] = [line for line in second.stdout.splitlines() if line.startswith("  gate ")]
    assert re.match(r"  gate        reject: accuracy 0\.\d{4} < floor 0\.9900(; |$)", gate_line), gate_line
    assert f"  champion    {production['version']}: accuracy 0." in second.stdout
    assert "    ✗ min_accuracy " in second.stdout and "  rollout     skipped" in second.stdout
    assert f"  production  {production['version']}\n" in second.stdout
    assert registry.alias("production")["version"] == production["version"]  # type: ignore[index]
    assert len(registry.history("production")) == 1
    _outputs_are_what_the_templates_declare(workdir / "runs" / "second", run)


def _outputs_are_what_the_templates_declare(run_dir: Path, run: dict[str, Any]) -> None:
    """Each node wrote exactly its template's outputs: on Argo an undeclared one is dropped unseen."""
    templates = {t["name"]: t.get("outputs", {}) for t in manifest()["spec"]["templates"]}
    for node in run["nodes"]:
        if node["phase"] != "Succeeded":
            continue
        declared = templates[node["template"]]
        parameters = {p["name"] for p in declared.get("parameters", [])}
        files = {a["path"].rpartition("/")[2] for a in declared.get("artifacts", [])}
        [written_dir] = list((run_dir / node["name"]).glob("attempt-*/outputs"))
        written = {path.name for path in written_dir.iterdir()}
        assert written == parameters | files, (node["name"], written ^ (parameters | files))


def test_a_step_killed_mid_way_leaves_the_store_consistent_and_a_rerun_succeeds(workdir: Path) -> None:
    registry = Registry(open_store(str(workdir / "store")))
    before = registry.versions()
    crashing = manifest()
    train = next(t for t in crashing["spec"]["templates"] if t["name"] == "train")
    train["activeDeadlineSeconds"] = 8  # killed while fitting
    (workdir / "crashing.yaml").write_text(yaml.safe_dump(crashing))
    crashed = fashion(
        workdir, "run", "--file", "crashing.yaml", "-p", "train_limit=30000", "-p", "epochs=5", "--name", "crashed"
    )
    assert crashed.returncode == 1
    run = record(workdir, "crashed")
    assert run["phase"] == "Failed" and phases(run)["train"] == "Failed" and phases(run)["onExit"] == "Succeeded"
    assert registry.versions() == before
    assert not list((workdir / "store").rglob(".tmp-*"))

    rerun = fashion(workdir, "run", *QUICK, "-p", "allow_equal=true", "-p", "tolerance=1", "--name", "rerun")
    assert rerun.returncode == 0, rerun.stderr
    assert len(registry.versions()) == len(before) + 1


def test_run_refuses_unknown_parameters_listing_the_valid_ones(tmp_path: Path) -> None:
    proc = fashion(tmp_path, "run", "-p", "epoch=3")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "unknown parameter epoch: the workflow takes epochs, batch_size" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_committed_argo_manifests_are_up_to_date() -> None:
    assert stale(REPO / "argo") == []
    text = rendered()["workflow-template.yaml"]
    assert text.startswith("# Generated by `fashion-pipeline render`")
    assert rendered() == rendered()  # deterministic


def test_committed_argo_manifests_pass_lint() -> None:
    schemas = Path(os.environ.get("FASHION_PIPELINE_SCHEMAS", REPO.parent / "shared" / "schemas"))
    proc = subprocess.run([CLI, "lint", "--schemas", str(schemas)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "argo: no problems"


def test_render_check_names_the_stale_file(tmp_path: Path) -> None:
    shutil.copytree(REPO / "argo", tmp_path / "argo")
    (tmp_path / "argo" / "cron-workflow.yaml").write_text("# hand-edited\n")
    proc = fashion(tmp_path, "render", "--check")
    assert proc.returncode != 0
    assert "argo/cron-workflow.yaml is stale" in proc.stderr
    assert fashion(tmp_path, "render").returncode == 0
    assert fashion(tmp_path, "render", "--check").returncode == 0


def test_compiled_template_shape() -> None:
    spec = manifest()["spec"]
    assert manifest()["metadata"]["name"] == NAME
    templates = {t["name"]: t for t in spec["templates"]}
    tasks = {t["name"]: t for t in templates["train-deploy"]["dag"]["tasks"]}
    assert tasks["rollout"]["when"] == "{{tasks.gate.outputs.parameters.decision}} == promote"
    assert spec["onExit"] == "report"
    assert templates["rollout"]["synchronization"] == {"mutexes": [{"name": "fashion-mnist-rollout"}]}
    assert all(p["valueFrom"].get("default") is not None for p in templates["rollout"]["outputs"]["parameters"])
    assert templates["fetch-dataset"]["retryStrategy"]["backoff"]["factor"] == 2
    for name in ("fetch-dataset", "train", "evaluate", "gate", "rollout", "report"):
        container = templates[name]["container"]
        assert container["command"] == ["fashion-pipeline"]
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["limits"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["serviceAccountName"] != "default"


def test_the_serving_runtime_is_chosen_per_run_and_reaches_the_rollout_command() -> None:
    spec = manifest()["spec"]
    arguments = spec["arguments"]["parameters"]
    templates = {t["name"]: t for t in spec["templates"]}
    tasks = {t["name"]: t for t in templates["train-deploy"]["dag"]["tasks"]}
    passed = {p["name"]: p["value"] for p in tasks["rollout"]["arguments"]["parameters"]}
    args = templates["rollout"]["container"]["args"]

    # Appended: the retrain Sensor maps its parameters by position.
    assert (arguments[-1]["name"], arguments[-1]["value"], arguments[-1]["enum"]) == (
        "serving_runtime",
        "tensorflow",
        ["tensorflow", "custom"],
    )
    assert passed["serving_runtime"] == "{{workflow.parameters.serving_runtime}}"
    assert args[args.index("--serving-runtime") + 1] == "{{inputs.parameters.serving_runtime}}"
