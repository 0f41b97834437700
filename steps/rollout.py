"""rollout: put a gated version into production, never without checking it can serve first.

Preflight (an InfraValidator) loads the exported SavedModel the way the server does and answers
a holdout sample through the serving signature; only then does the production alias move.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from steps.dataset import load_dataset
from steps.errors import UserError
from steps.model import load_serving_function
from steps.registry import Registry

log = logging.getLogger(__name__)
TARGETS = ("local", "kserve")
PREFLIGHT_SAMPLE = 256
PREFLIGHT_MIN_ACCURACY = 0.5


class RolloutError(UserError):
    """The candidate failed a rollout check; production is unchanged."""


def preflight(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Load the SavedModel and answer a holdout sample; raises RolloutError if it cannot serve sanely."""
    import tensorflow as tf

    started = time.perf_counter()
    try:
        serve = load_serving_function(model_dir)
        out = serve(image=tf.constant(images, tf.float32))
        probabilities, class_id = out["probabilities"].numpy(), out["class_id"].numpy()
    except (UserError, tf.errors.OpError, KeyError, TypeError, ValueError) as exc:
        raise RolloutError(f"preflight: the candidate at {model_dir} cannot serve: {exc}") from exc
    checks = {
        "shapes": probabilities.shape == (len(images), 10) and class_id.shape == (len(images),),
        "finite": bool(np.isfinite(probabilities).all()),
        "normalised": bool(np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)),
    }
    accuracy = float(np.mean(class_id == labels)) if checks["shapes"] else 0.0
    checks["accuracy"] = accuracy >= PREFLIGHT_MIN_ACCURACY
    result = {
        "passed": all(checks.values()),
        "checks": checks,
        "sample": len(images),
        "sample_accuracy": round(accuracy, 5),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if not result["passed"]:
        failed = ", ".join(name for name, ok in checks.items() if not ok)
        raise RolloutError(f"preflight: the candidate failed {failed} (sample accuracy {accuracy:.3f})")
    return result


def rollout(
    registry: Registry,
    version: str,
    dataset_uri: str,
    target: str,
    canary_percent: int,
    reason: str,
    out_dir: Path,
) -> dict[str, Any]:
    """Preflight `version` and promote it on `target`; writes rollout.json and records it on the version."""
    if target not in TARGETS:
        raise UserError(f"unknown rollout target {target!r}: choose one of {', '.join(TARGETS)}")
    if not 0 <= canary_percent <= 100:
        raise UserError(f"canary_percent must be between 0 and 100 (got {canary_percent})")
    if target == "kserve":
        raise UserError("the kserve rollout target is not available in this version: use --target local")
    registry.require(version)
    dataset = load_dataset(dataset_uri)
    # The last images of the test split: the same holdout on every run.
    images, labels = dataset.x_test[-PREFLIGHT_SAMPLE:], dataset.y_test[-PREFLIGHT_SAMPLE:]
    record: dict[str, Any] = {"version": version, "target": target, "reason": reason, "outcome": "failed"}
    try:
        record["preflight"] = preflight(registry.local_model_dir(version), images, labels)
        log.info("preflight passed: sample accuracy %.3f", record["preflight"]["sample_accuracy"])
        current = registry.alias("production")
        if current and current["version"] == version:
            record["outcome"] = "unchanged"
            log.info("version %s is already in production", version)
        else:
            # No local model server runs in this version: production is the registry's alias.
            registry.set_alias("production", version, reason, actor=f"rollout:{target}")
            record["outcome"] = "promoted"
            log.info(
                "no model server on target %s: version %s is preflighted and promoted in the registry", target, version
            )
        record["served_version"] = version
    except RolloutError as exc:
        record["error"] = str(exc)
        raise
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rollout.json").write_text(json.dumps(record, indent=2) + "\n")
        registry.add_record(version, "rollouts", record)
    return record
