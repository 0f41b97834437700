"""The train step as a node runs it, on real data: the budget spent and recorded, exact epochs, AVX2, mirroring."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steps import hardware
from steps.model import build_model, export_saved_model, load_serving_function
from steps.storage import open_store
from steps.train import CALIBRATION_STEPS

pytestmark = pytest.mark.slow

CLI = shutil.which("fashion-pipeline", path=str(Path(sys.executable).parent)) or "fashion-pipeline"
AS_AVX2 = Path(__file__).resolve().parents[2] / "scripts" / "as-avx2.sh"
TF_NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IWEF]\d{4} \d\d:\d\d:\d\d)", re.M)
FIT_RECORD = {
    "budget_s", "architecture", "precision", "mirror", "dropout", "label_smoothing", "cpu_tier", "cpu_model",
    "onednn", "threads", "batch_size", "steps", "calibrated_steps", "epochs", "fit_s", "seconds_per_step",
    "images_per_s", "gflops",
}  # fmt: skip


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("budget")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    env["FASHION_PIPELINE_STORE"] = str(root / "store")
    fetched = subprocess.run(
        [CLI, "fetch", "--data-url", str(real_mirror), "--out", str(root / "fetch")], env=env, capture_output=True
    )
    assert fetched.returncode == 0, fetched.stderr
    return {"root": str(root), "dataset": (root / "fetch" / "dataset_uri").read_text(), **env}


def train_node(store: dict[str, str], out: Path, *args: str, prefix: tuple[str, ...] = ()) -> Any:
    env = {k: v for k, v in store.items() if k not in ("root", "dataset")}
    env["ARGO_PROGRESS_FILE"] = str(out / "progress")
    out.mkdir(parents=True)
    argv = [*prefix, CLI, "train", "--dataset", store["dataset"], "--train-limit", "6000", *args, "--out", str(out)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)


def card(store: dict[str, str], out: Path) -> dict[str, Any]:
    version = (out / "model_version").read_text()
    path = f"models/fashion-mnist/versions/{version}/model-card.json"
    result: dict[str, Any] = open_store(store["FASHION_PIPELINE_STORE"]).read_json(path)
    return result


def test_a_budget_is_spent_on_fitting_and_the_card_and_outputs_say_how(store: dict[str, str], tmp_path: Path) -> None:
    done = train_node(store, tmp_path / "t", "--train-budget-s", "10")
    assert done.returncode == 0, done.stderr
    fit = json.loads((tmp_path / "t" / "training").read_text())
    assert set(fit) == FIT_RECORD
    assert fit["budget_s"] == 10
    assert fit["fit_s"] <= 10 + 3  # the last step and the last validation may end just past it
    assert fit["steps"] > 1 + CALIBRATION_STEPS and fit["calibrated_steps"] > 0
    assert fit["epochs"] == pytest.approx(fit["steps"] / (5700 // fit["batch_size"]), abs=1e-3)
    assert fit["images_per_s"] > 0 and fit["gflops"] > 0 and fit["seconds_per_step"] > 0
    assert card(store, tmp_path / "t")["training"]["steps"] == fit["steps"]
    # Progress as Argo reads it: a status line, then k/N; it ends at N, the horizon as last fitted.
    status, steps = (tmp_path / "t" / "progress").read_text().splitlines()
    assert steps == f"{fit['steps']}/{fit['steps']}"
    assert re.fullmatch(r"epoch \d+\.\d/\d+\.\d, val accuracy 0\.\d{4}", status), status
    assert "calibrated:" in done.stderr
    assert not TF_NATIVE_LOG.search(done.stderr), done.stderr


def test_explicit_epochs_train_exactly_that_many_with_no_budget(store: dict[str, str], tmp_path: Path) -> None:
    done = train_node(store, tmp_path / "t", "--epochs", "2", "--batch-size", "500", "--architecture", "small-cnn")
    assert done.returncode == 0, done.stderr
    fit = json.loads((tmp_path / "t" / "training").read_text())
    assert fit["budget_s"] is None and fit["calibrated_steps"] is None
    assert fit["steps"] == 2 * (5700 // 500) and fit["epochs"] == 2
    history = json.loads((tmp_path / "t" / "history.json").read_text())
    assert len(history["loss"]) == 2


def test_a_budget_below_the_minimum_is_one_line_before_any_work(store: dict[str, str], tmp_path: Path) -> None:
    for budget in ("0", "-3", "5"):
        done = train_node(store, tmp_path / f"t{budget}", "--train-budget-s", budget)
        assert done.returncode != 0
        [line] = done.stderr.strip().splitlines()
        assert "'--train-budget-s'" in line and "greater than or equal to 10" in line, line
        assert not (tmp_path / f"t{budget}" / "model_version").exists()


def avx2_emulation_works() -> bool:
    probe = subprocess.run([str(AS_AVX2), "true"], capture_output=True)
    return probe.returncode == 0


def as_avx2() -> tuple[str, ...]:
    """The command prefix that runs a command as on an AVX2-only CPU (none on one)."""
    if hardware.cpu_tier() == hardware.AVX2:  # an AVX2 CPU, real or emulated, runs it as it is
        return ()
    if not avx2_emulation_works():
        if os.environ.get("CI"):
            pytest.fail("scripts/as-avx2.sh cannot run here (unshare -m and mount need root)")
        pytest.skip("scripts/as-avx2.sh needs root (unshare -m and mount)")
    return (str(AS_AVX2),)


def test_the_train_step_on_an_emulated_avx2_cpu_trains_float32_with_onednn_and_quiet_logs(
    store: dict[str, str], tmp_path: Path
) -> None:
    prefix = as_avx2()
    done = train_node(store, tmp_path / "t", "--train-budget-s", "10", prefix=prefix)
    assert done.returncode == 0, done.stderr
    fit = json.loads((tmp_path / "t" / "training").read_text())
    assert (fit["cpu_tier"], fit["precision"], fit["onednn"]) == ("avx2", "float32", "1")
    assert fit["fit_s"] <= 10 + 3
    assert not TF_NATIVE_LOG.search(done.stderr), done.stderr


def test_bfloat16_on_an_avx2_cpu_is_a_one_line_error_before_any_work(store: dict[str, str], tmp_path: Path) -> None:
    """oneDNN, which the project turns on there, has no bfloat16 convolution: TensorFlow would fail mid-fit."""
    prefix = as_avx2()
    done = train_node(store, tmp_path / "t", "--precision", "mixed_bfloat16", prefix=prefix)
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "fashion-pipeline: error: precision mixed_bfloat16: oneDNN has no bfloat16 convolutions on this CPU (tier "
        "avx2; they need AVX-512 or AMX): train in float32 (precision auto or float32), or set "
        "TF_ENABLE_ONEDNN_OPTS=0 for TensorFlow's own bfloat16, about 5x slower than float32 there"
    ]
    assert not (tmp_path / "t" / "model_version").exists()

    argv = [*prefix, CLI, "serve", "--storage-uri", "file:///nowhere", "--precision", "bfloat16", "--port", "0"]
    served = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert served.returncode == 1 and served.stderr.strip().splitlines() == [
        "fashion-pipeline: error: serving in bfloat16 needs AVX-512 or AMX (this CPU is tier avx2): "
        "serve with --precision float32 or auto"
    ]


def test_mirror_averaging_is_inside_the_served_signature(tmp_path: Path) -> None:
    model = build_model("small-cnn")
    images = np.random.default_rng(0).uniform(0, 255, (8, 28, 28)).astype(np.float32)
    export_saved_model(model, "small-cnn", tmp_path / "1", mirror_average=True)
    served = load_serving_function(tmp_path / "1")(image=images)
    expected = (model(images, training=False) + model(images[:, :, ::-1], training=False)) / 2
    assert np.allclose(served["probabilities"].numpy(), np.asarray(expected), atol=1e-5)
    assert served["class_id"].numpy().tolist() == np.argmax(expected, axis=1).tolist()
