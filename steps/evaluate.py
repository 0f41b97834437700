"""evaluate: the candidate and the champion on the same test split, and the paired comparison."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steps.dataset import CLASS_NAMES, load_dataset
from steps.model import load_serving_function
from steps.registry import Registry

log = logging.getLogger(__name__)
_BATCH = 1000


def predict_classes(model_dir: Path, images: np.ndarray) -> np.ndarray:
    """Class ids from the model's serving signature, in batches."""
    import tensorflow as tf

    signature = load_serving_function(model_dir)
    out = [
        signature(image=tf.constant(images[i : i + _BATCH], tf.float32))["class_id"].numpy()
        for i in range(0, len(images), _BATCH)
    ]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def measure_latency(model_dir: Path, images: np.ndarray, repeats: int = 50) -> dict[str, float]:
    """In-process latency of the serving signature: single image p50/p95, and batch throughput."""
    import tensorflow as tf

    signature = load_serving_function(model_dir)
    single = tf.constant(images[:1], tf.float32)
    signature(image=single)  # warm-up: first call traces and allocates
    timings = []
    for _ in range(repeats):
        t = time.perf_counter()
        signature(image=single)["class_id"].numpy()
        timings.append(time.perf_counter() - t)
    batch = tf.constant(images[:256], tf.float32)
    signature(image=batch)
    t = time.perf_counter()
    rounds = 5
    for _ in range(rounds):
        signature(image=batch)["class_id"].numpy()
    per_batch = (time.perf_counter() - t) / rounds
    return {
        "single_p50_ms": round(float(np.percentile(timings, 50)) * 1000, 3),
        "single_p95_ms": round(float(np.percentile(timings, 95)) * 1000, 3),
        "batch_size": len(batch),
        "batch_images_per_s": round(len(batch) / per_batch, 1),
    }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1, and the confusion matrix (rows = true class)."""
    matrix = np.zeros((10, 10), np.int64)
    np.add.at(matrix, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    per_class = {}
    for k, name in enumerate(CLASS_NAMES):
        tp = int(matrix[k, k])
        predicted, actual = int(matrix[:, k].sum()), int(matrix[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {
            "precision": round(precision, 5),
            "recall": round(recall, 5),
            "f1": round(f1, 5),
            "support": actual,
        }
    return {
        "accuracy": round(float(np.mean(y_true == y_pred)), 5) if len(y_true) else 0.0,
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
    }


def mcnemar_exact(y_true: np.ndarray, candidate: np.ndarray, champion: np.ndarray) -> dict[str, Any]:
    """Exact McNemar test: a two-sided binomial test on the discordant pairs."""
    from scipy.stats import binomtest

    cand_ok, champ_ok = candidate == y_true, champion == y_true
    only_candidate = int(np.sum(cand_ok & ~champ_ok))
    only_champion = int(np.sum(~cand_ok & champ_ok))
    discordant = only_candidate + only_champion
    p_value = binomtest(only_candidate, discordant, 0.5).pvalue if discordant else 1.0
    return {
        "test": "exact McNemar (two-sided binomial test on discordant pairs)",
        "candidate_only_correct": only_candidate,
        "champion_only_correct": only_champion,
        "p_value": float(p_value),
    }


@dataclass(frozen=True)
class Evaluation:
    metrics: dict[str, Any]
    record_uri: str  # the write-once copy of the metrics in the registry, which gate reads


def resolve_champion(registry: Registry, champion: str) -> str | None:
    """The champion's version: 'none' skips the comparison, and 'production' before any promotion is none."""
    if champion == "none" or (champion == "production" and registry.alias("production") is None):
        return None
    return registry.resolve(champion)


def evaluate(
    dataset_uri: str,
    registry: Registry,
    candidate: str,
    champion: str | None,
    out_dir: Path,
) -> Evaluation:
    """Write metrics.json, confusion-matrix.json and confusion-matrix.png into `out_dir`.

    `champion` is a version id or None (first run); the metrics are also recorded on the candidate.
    """
    dataset = load_dataset(dataset_uri)
    x, y = dataset.x_test, dataset.y_test
    candidate_dir = registry.local_model_dir(candidate)
    started = time.perf_counter()
    cand_pred = predict_classes(candidate_dir, x)
    log.info(
        "candidate %s: accuracy %.4f on %d test images (%.1f s)",
        candidate,
        np.mean(cand_pred == y),
        len(y),
        time.perf_counter() - started,
    )
    metrics: dict[str, Any] = {
        "dataset": {"uri": dataset_uri, "digest": dataset.digest, "test_examples": len(y)},
        "candidate": {"version": candidate, **classification_metrics(y, cand_pred)},
        "latency": measure_latency(candidate_dir, x),
        "champion": None,
        "comparison": None,
    }
    if champion is not None:
        champ_pred = predict_classes(registry.local_model_dir(champion), x)
        metrics["champion"] = {"version": champion, **classification_metrics(y, champ_pred)}
        metrics["comparison"] = {
            "accuracy_delta": round(metrics["candidate"]["accuracy"] - metrics["champion"]["accuracy"], 5),
            **mcnemar_exact(y, cand_pred, champ_pred),
        }
        log.info(
            "champion %s: accuracy %.4f; delta %+.4f, McNemar p=%.3g",
            champion,
            metrics["champion"]["accuracy"],
            metrics["comparison"]["accuracy_delta"],
            metrics["comparison"]["p_value"],
        )
    else:
        log.info("no champion in production: nothing to compare against")

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "confusion-matrix.json").write_text(
        json.dumps({"classes": list(CLASS_NAMES), "matrix": metrics["candidate"]["confusion_matrix"]}) + "\n"
    )
    plot_confusion_matrix(
        np.array(metrics["candidate"]["confusion_matrix"]),
        out_dir / "confusion-matrix.png",
        title=f"{candidate}: accuracy {metrics['candidate']['accuracy']:.2%}",
    )
    record_key = registry.add_record(candidate, "evaluations", metrics)
    return Evaluation(metrics=metrics, record_uri=registry.store.uri_of(record_key))


def plot_confusion_matrix(matrix: np.ndarray, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(10), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(10):
        for j in range(10):
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > threshold else "black",
            )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
