"""rollout: put a gated version into production on a target, with a canary and automatic rollback.

    preflight (load the SavedModel as the server does, answer a holdout sample)
    → read the live champion from the target, compare it with the registry
    → deploy the candidate as a canary at `canary_percent` → wait until it is ready
    → probe the canary itself (error rate, holdout accuracy, p95 latency)
    → promote (target, then the registry's production alias) or roll back (production untouched)

Every check and value goes into the rollout record. Re-running after a crash is safe: a canary
left behind is replaced by the next deploy, and nothing else changes until the checks pass.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steps.errors import UserError
from steps.model import load_serving_function
from steps.parameters import check as check_parameters
from steps.parameters import parameter, policy_sources, setting
from steps.registry import Registry
from steps.targets import FIRST_READY_TIMEOUT_S, READY_TIMEOUT_S, Target

if TYPE_CHECKING:  # numpy and the dataset load on use: the CLI reads this module's settings at start
    import numpy as np

log = logging.getLogger(__name__)
PREFLIGHT_MIN_ACCURACY = 0.5


class RolloutError(UserError):
    """The candidate failed a rollout check; production is unchanged."""


@dataclass(frozen=True)
class RolloutPolicy:
    canary_percent: int = parameter(
        10, "Rollout: share of traffic the canary gets while it is probed", minimum=0, maximum=100
    )
    ready_timeout_s: float = setting(
        READY_TIMEOUT_S, "Seconds the canary (or a restored production) may take to be ready."
    )
    first_ready_timeout_s: float = FIRST_READY_TIMEOUT_S  # when nothing is deployed yet (cold images)
    holdout: int = 512  # the last images of the test split
    probe_batch: int = 32
    max_error_rate: float = 0.0
    accuracy_slack: float = 0.02  # the canary may score this much below the in-process preflight
    p95_budget_ms: float = 1000.0

    def check(self) -> None:
        check_parameters(self)
        if self.ready_timeout_s <= 0 or self.holdout < 1 or self.probe_batch < 1:
            raise UserError("ready timeout, holdout and probe batch must be positive")


def preflight(model_dir: Path, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Load the SavedModel and answer a holdout sample; raises RolloutError if it cannot serve sanely."""
    import numpy as np
    import tensorflow as tf

    started = time.perf_counter()
    try:
        signature = load_serving_function(model_dir)
        out = signature(image=tf.constant(images, tf.float32))
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
    target: Target | None,
    policy: RolloutPolicy,
    reason: str,
    out_dir: Path,
    audit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Roll `version` out on `target` (None: no server to deploy to, so a preflighted registry promotion).

    `audit` (which workflow and trigger asked for this) goes into the record and the alias history;
    the record also says where each policy value came from (the trigger records the operator's `-p`).
    """
    policy.check()
    registry.require(version)
    from steps.dataset import load_dataset

    dataset = load_dataset(dataset_uri)
    images, labels = dataset.x_test[-policy.holdout :], dataset.y_test[-policy.holdout :]
    record: dict[str, Any] = {
        "version": version,
        "target": target.name if target else "registry",
        "reason": reason,
        "policy": asdict(policy),
        **(audit or {}),
        "policy_sources": policy_sources(policy, (audit or {}).get("trigger") or {}),
        "outcome": "failed",
        "checks": [],
    }
    try:
        record["preflight"] = preflight(registry.local_model_dir(version), images, labels)
        log.info("preflight passed: sample accuracy %.3f", record["preflight"]["sample_accuracy"])
        _roll(registry, version, target, policy, reason, images, labels, record, audit or {})
    except UserError as exc:  # a failed check, or the target refusing (e.g. the Kubernetes API)
        record["error"] = str(exc)
        raise
    finally:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "rollout.json").write_text(json.dumps(record, indent=2) + "\n")
        registry.add_record(version, "rollouts", record)
    return record


def _check(record: dict[str, Any], name: str, passed: bool, value: Any, threshold: Any) -> bool:
    record["checks"].append({"name": name, "passed": bool(passed), "value": value, "threshold": threshold})
    return bool(passed)


def _roll(
    registry: Registry,
    version: str,
    target: Target | None,
    policy: RolloutPolicy,
    reason: str,
    images: np.ndarray,
    labels: np.ndarray,
    record: dict[str, Any],
    audit: dict[str, Any],
) -> None:
    production = registry.alias("production")
    record["registry_production"] = production["version"] if production else None
    if target is None:
        if record["registry_production"] == version:
            record["outcome"] = "unchanged"
        else:
            registry.set_alias("production", version, reason, actor="rollout:registry", extra=audit)
            record["outcome"] = "promoted"
        record["served_version"] = None
        log.info(
            "no model server to deploy to: version %s is preflighted and %s in the registry", version, record["outcome"]
        )
        return

    live = target.live_version()
    record["live_champion"] = live
    if live != record["registry_production"]:
        log.warning(
            "the target serves %s but the registry's production is %s: the target is the truth here",
            live,
            record["registry_production"],
        )
    if live == version:
        record["outcome"] = "unchanged"
        record["served_version"] = version
        if record["registry_production"] != version:
            registry.set_alias(
                "production", version, f"{reason} (already live on {target.name})", f"rollout:{target.name}", audit
            )
        log.info("version %s is already live on %s", version, target.name)
        return

    storage_uri = registry.version_uri(version)
    log.info("deploying %s to %s as a canary at %d%%", version, target.name, policy.canary_percent)
    target.deploy_canary(version, storage_uri, policy.canary_percent)
    timeout_s = policy.ready_timeout_s if live else max(policy.ready_timeout_s, policy.first_ready_timeout_s)
    try:
        started = time.monotonic()
        target.wait_ready(version, timeout_s)
        _check(record, "ready", True, round(time.monotonic() - started, 2), timeout_s)
    except UserError as exc:
        _check(record, "ready", False, str(exc), timeout_s)
        _rollback(target, version, record, f"the canary did not become ready: {exc}")

    probe = target.probe(version, images, labels, policy.probe_batch)
    record["probe"] = {
        "requests": probe.requests,
        "errors": probe.errors,
        "error_samples": probe.error_samples,
        "accuracy": round(probe.accuracy, 5),
        "p95_ms": round(probe.p95_ms, 2),
        "versions": probe.versions,
    }
    min_accuracy = record["preflight"]["sample_accuracy"] - policy.accuracy_slack
    passed = [
        _check(
            record, "error_rate", probe.error_rate <= policy.max_error_rate, probe.error_rate, policy.max_error_rate
        ),
        _check(record, "accuracy", probe.accuracy >= min_accuracy, round(probe.accuracy, 5), round(min_accuracy, 5)),
        _check(
            record, "p95_latency_ms", probe.p95_ms <= policy.p95_budget_ms, round(probe.p95_ms, 2), policy.p95_budget_ms
        ),
        _check(record, "served_by_candidate", set(probe.versions) <= {version}, sorted(probe.versions), version),
    ]
    if not all(passed):
        failed = [c for c in record["checks"] if not c["passed"]]
        summary = "; ".join(f"{c['name']} {c['value']} (threshold {c['threshold']})" for c in failed)
        _rollback(target, version, record, f"the canary failed its probe: {summary}")

    if target.follows_registry:
        registry.set_alias("production", version, reason, actor=f"rollout:{target.name}", extra=audit)
        target.promote(version)
    else:
        target.promote(version)
        registry.set_alias("production", version, reason, actor=f"rollout:{target.name}", extra=audit)
    record["outcome"] = "promoted"
    record["served_version"] = version
    log.info("version %s promoted on %s", version, target.name)


def _rollback(target: Target, version: str, record: dict[str, Any], why: str) -> None:
    log.error("%s: rolling back", why)
    target.rollback(version)
    record["outcome"] = "rolled-back"
    record["served_version"] = target.live_version()
    raise RolloutError(f"rolled back {version} on {target.name}: {why}")
