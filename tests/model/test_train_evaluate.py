"""train and evaluate on a real Fashion-MNIST subset: the exported contract and sane accuracy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steps.dataset import fetch_dataset, load_dataset
from steps.errors import UserError
from steps.evaluate import evaluate
from steps.registry import Registry
from steps.storage import open_store
from steps.train import TrainParams, train

QUICK = TrainParams(epochs=2, train_limit=4000, seed=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, real_mirror: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pipeline")
    store = open_store(str(root / "store"))
    dataset = fetch_dataset(store, [(str(real_mirror), False)])
    registry = Registry(store)
    result = train(dataset.uri, registry, QUICK, root / "train", code_version="test")
    return {"root": root, "dataset": dataset, "registry": registry, "result": result}


def test_training_on_a_real_subset_reaches_sane_accuracy_on_the_real_test_split(trained: dict[str, Any]) -> None:
    metrics = evaluate(
        trained["dataset"].uri, trained["registry"], trained["result"].version, None, trained["root"] / "evaluate"
    ).metrics
    assert metrics["dataset"]["test_examples"] == 10000
    assert metrics["candidate"]["accuracy"] > 0.75
    assert metrics["champion"] is None and metrics["comparison"] is None
    assert set(metrics["candidate"]["per_class"]) >= {"T-shirt/top", "Ankle boot"}
    assert sum(map(sum, metrics["candidate"]["confusion_matrix"])) == 10000
    assert metrics["latency"]["single_p50_ms"] > 0
    out = trained["root"] / "evaluate"
    assert (out / "confusion-matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "confusion-matrix.json").read_text())["classes"][9] == "Ankle boot"
    assert (
        trained["registry"].records(trained["result"].version, "evaluations")[0]["candidate"]["accuracy"]
        == (metrics["candidate"]["accuracy"])
    )


def test_saved_model_has_the_serving_signature_of_the_design(trained: dict[str, Any]) -> None:
    import tensorflow as tf

    registry: Registry = trained["registry"]
    model_dir = registry.local_model_dir(trained["result"].version)
    assert model_dir.name == "1" and (model_dir / "saved_model.pb").is_file()
    serve = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    (args, kwargs) = serve.structured_input_signature
    assert not args and list(kwargs) == ["image"]
    assert kwargs["image"].dtype == tf.float32 and kwargs["image"].shape.as_list() == [None, 28, 28]
    assert set(serve.structured_outputs) == {"probabilities", "class_id"}

    x_test = load_dataset(trained["dataset"].uri).x_test[:64]
    out = serve(image=tf.constant(x_test, tf.float32))  # raw 0..255 pixels: the model normalises
    probabilities, class_id = out["probabilities"].numpy(), out["class_id"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (64, 10)
    assert class_id.dtype == np.int64 and class_id.shape == (64,)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (class_id == probabilities.argmax(axis=1)).all()


def test_training_writes_history_curve_and_model_card(trained: dict[str, Any]) -> None:
    history = json.loads((trained["root"] / "train" / "history.json").read_text())
    assert len(history["loss"]) == QUICK.epochs and len(history["val_accuracy"]) == QUICK.epochs
    assert history["loss"][-1] < history["loss"][0]
    assert (trained["root"] / "train" / "training-curve.png").read_bytes()[:4] == b"\x89PNG"
    card = trained["registry"].card(trained["result"].version)
    assert card["params"]["train_limit"] == 4000 and card["params"]["seed"] == 1
    assert card["dataset"]["digest"] == trained["dataset"].digest
    assert card["code_version"] == "test" and card["created"]
    assert card["training"]["seconds"] > 0


def test_champion_is_evaluated_on_the_same_split_with_mcnemar(trained: dict[str, Any]) -> None:
    registry: Registry = trained["registry"]
    weaker = train(
        trained["dataset"].uri,
        registry,
        TrainParams(epochs=1, train_limit=500, seed=2),
        trained["root"] / "weak",
        code_version="test",
    )
    metrics = evaluate(
        trained["dataset"].uri, registry, weaker.version, trained["result"].version, trained["root"] / "compare"
    ).metrics
    comparison = metrics["comparison"]
    assert metrics["champion"]["version"] == trained["result"].version
    assert comparison["accuracy_delta"] == pytest.approx(
        metrics["candidate"]["accuracy"] - metrics["champion"]["accuracy"], abs=1e-4
    )
    assert comparison["accuracy_delta"] < 0
    n_discordant = comparison["candidate_only_correct"] + comparison["champion_only_correct"]
    assert n_discordant > 0 and 0 <= comparison["p_value"] <= 1
    delta_from_pairs = (comparison["candidate_only_correct"] - comparison["champion_only_correct"]) / 10000
    assert delta_from_pairs == pytest.approx(comparison["accuracy_delta"], abs=1e-4)


def test_bad_training_parameters_are_user_errors(trained: dict[str, Any]) -> None:
    for params, message in [
        (TrainParams(epochs=-1), "epochs must be between 0 and 200"),
        (TrainParams(train_budget_s=0), "train_budget_s must be between 10 and 3000"),
        (TrainParams(architecture="resnet-9000"), "unknown architecture 'resnet-9000'"),
        (TrainParams(precision="fp8"), "unknown precision 'fp8'"),
    ]:
        with pytest.raises(UserError, match=message):
            train(trained["dataset"].uri, trained["registry"], params, trained["root"] / "x", code_version="test")


def test_one_step_per_epoch_trains(trained: dict[str, Any]) -> None:
    # 190 images, 5% held out, batch 128: a single step, all of it warm-up.
    result = train(
        trained["dataset"].uri,
        trained["registry"],
        TrainParams(epochs=1, train_limit=190, seed=3),
        trained["root"] / "one-step",
        code_version="test",
    )
    assert len(result.history["loss"]) == 1


def test_precision_auto_follows_the_cpu_tier_and_an_explicit_value_wins() -> None:
    from steps import hardware
    from steps.train import resolve_precision

    assert resolve_precision("auto", hardware.AVX2) == "float32"
    assert resolve_precision("auto", hardware.AVX512) == "float32"
    assert resolve_precision("auto", hardware.AVX512_BF16) == "mixed_bfloat16"
    assert resolve_precision("auto", hardware.AMX) == "mixed_bfloat16"
    assert resolve_precision("float32", hardware.AMX) == "float32"


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_every_architecture_trains_at_every_precision(precision: str) -> None:
    """Two steps of each architecture on random images, whatever the CPU this runs on.

    The `auto` recipe picks a precision by CPU tier, so a suite run on one tier alone would never
    train the other precision (a bfloat16 batch-norm bug once reached CI that way).
    """
    import keras

    from steps.model import ARCHITECTURES, build_model

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 28, 28, 1)).astype("float32")
    labels = keras.utils.to_categorical(rng.integers(0, 10, size=64), 10)
    for architecture in ARCHITECTURES:
        model = build_model(architecture, precision, dropout=0.1)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        loss = model.fit(images, labels, batch_size=32, epochs=1, verbose=0).history["loss"][0]
        assert np.isfinite(loss), architecture
        probabilities = model.predict(images[:4], verbose=0)
        assert probabilities.shape == (4, 10) and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-2), architecture
