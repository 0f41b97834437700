"""The exported SavedModel (trained with the project's TensorFlow) loads and answers under the pinned TF Serving.

TF Serving has no image newer than the TensorFlow of `DEFAULT_RUNTIME_VERSION`; a side environment
with that TensorFlow (`make serving-tf`, a dependency of `make test`) loads the export the way TF
Serving's C++ does (a TF1 session over the `serve` MetaGraph) and through `tf.saved_model.load`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from steps.dataset import fetch_dataset, load_dataset
from steps.model import load_serving_function
from steps.registry import Registry
from steps.storage import open_store
from steps.targets.kserve import DEFAULT_RUNTIME_VERSION
from steps.train import TrainParams, train

pytestmark = pytest.mark.slow

SIDE_VENV = Path(os.environ.get("FASHION_PIPELINE_SERVING_TF_VENV") or REPO / ".venv-tf220")
LOADER = REPO / "tests" / "tf_serving_loader.py"


def _side_python() -> Path:
    python = SIDE_VENV / "bin" / "python"
    if not python.exists():
        message = f"no TensorFlow {DEFAULT_RUNTIME_VERSION} side environment at {SIDE_VENV}: run `make serving-tf`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def test_the_export_answers_its_serving_signature_under_the_pinned_tf_serving_version(
    tmp_path: Path, real_mirror: Path
) -> None:
    import tensorflow as tf

    python = _side_python()
    store = open_store(str(tmp_path / "store"))
    dataset = fetch_dataset(store, [(str(real_mirror), False)])
    registry = Registry(store)
    trained = train(dataset.uri, registry, TrainParams(epochs=1, train_limit=1000, seed=7), tmp_path / "t", "test")
    export_dir = registry.local_model_dir(trained.version)
    images = load_dataset(dataset.uri).x_test[:64].astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = load_serving_function(export_dir)(image=tf.constant(images))

    result = subprocess.run(
        [str(python), str(LOADER), str(export_dir), str(tmp_path / "images.npy")],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout)
    runtime_minor = ".".join(DEFAULT_RUNTIME_VERSION.split(".")[:2])
    assert answers["tensorflow"].startswith(f"{runtime_minor}."), answers["tensorflow"]
    assert tf.__version__ != answers["tensorflow"]  # a newer TensorFlow exported it
    for loader in ("session", "saved_model_load"):
        assert sorted(answers[loader]) == ["class_id", "probabilities"], loader
        np.testing.assert_array_equal(answers[loader]["class_id"], expected["class_id"].numpy(), err_msg=loader)
        np.testing.assert_allclose(
            answers[loader]["probabilities"], expected["probabilities"].numpy(), atol=1e-4, err_msg=loader
        )
