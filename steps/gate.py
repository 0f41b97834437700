"""gate: the promotion policy, applied to evaluate's metrics, giving an auditable decision record.

Rules: the candidate must clear an absolute accuracy floor and a per-class recall floor; against a
champion it must improve accuracy by at least `min_delta` with an exact McNemar p-value below
`alpha` — or, with `allow_equal`, be non-inferior within `tolerance`. With no champion the
explicit `first_run` policy decides. `force` promotes regardless, and needs a reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from steps.errors import UserError

FIRST_RUN_POLICIES = ("promote", "reject")
TEMPLATE_DEFAULT = "template default"
OPERATOR_OVERRIDE = "operator override"


@dataclass(frozen=True)
class Policy:
    min_accuracy: float = 0.90
    min_class_recall: float = 0.60
    min_delta: float = 0.0
    alpha: float = 0.05
    allow_equal: bool = False
    tolerance: float = 0.005
    first_run: str = "promote"
    force: bool = False
    force_reason: str = ""

    def check(self) -> None:
        for name in ("min_accuracy", "min_class_recall", "tolerance"):
            if not 0 <= getattr(self, name) <= 1:
                raise UserError(f"{name} must be between 0 and 1 (got {getattr(self, name)})")
        if not -1 <= self.min_delta <= 1:
            raise UserError(f"min_delta must be between -1 and 1 (got {self.min_delta})")
        if not 0 < self.alpha <= 1:
            raise UserError(f"alpha must be in (0, 1] (got {self.alpha})")
        if self.first_run not in FIRST_RUN_POLICIES:
            raise UserError(f"first_run must be one of {', '.join(FIRST_RUN_POLICIES)} (got {self.first_run!r})")
        if self.force and not self.force_reason.strip():
            raise UserError("force needs a reason: pass --force-reason 'why this model must ship' (it is recorded)")


# The policy values a run sets (force is a CLI-only override, recorded on its own).
POLICY_FIELDS = ("min_accuracy", "min_class_recall", "min_delta", "alpha", "allow_equal", "tolerance", "first_run")


def policy_sources(policy: Policy, operator: Mapping[str, str], launcher: str) -> dict[str, str]:
    """Where each policy value came from: the template's default (Policy's defaults), or an operator's override.

    `operator` holds the `-p` values the launcher recorded; a value that differs from the default
    without such a record was set where this run cannot see (argo submit -p, an edited template).
    """
    defaults = Policy()
    sources = {}
    for name in POLICY_FIELDS:
        if name in operator:
            sources[name] = f"{OPERATOR_OVERRIDE} ({launcher} -p {name}={operator[name]})"
        elif getattr(policy, name) == getattr(defaults, name):
            sources[name] = TEMPLATE_DEFAULT
        else:
            sources[name] = f"{OPERATOR_OVERRIDE} (differs from the template default; the launcher did not record it)"
    return sources


def _check(name: str, passed: bool, value: Any, threshold: Any, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "value": value, "threshold": threshold, "detail": detail}


def decide(metrics: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """The decision record for the metrics written by `steps.evaluate.evaluate`."""
    policy.check()
    try:
        candidate = metrics["candidate"]
        accuracy = float(candidate["accuracy"])
        recalls = {name: float(c["recall"]) for name, c in candidate["per_class"].items()}
        champion = metrics.get("champion")
        comparison = metrics.get("comparison")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"metrics are missing {exc}: pass the metrics.json written by `fashion-pipeline evaluate`"
        ) from exc

    floor_met = accuracy >= policy.min_accuracy
    checks = [
        _check(
            "min_accuracy",
            floor_met,
            accuracy,
            policy.min_accuracy,
            f"accuracy {accuracy:.4f} {'≥' if floor_met else '<'} floor {policy.min_accuracy:.4f}",
        ),
    ]
    worst_class = min(recalls, key=recalls.__getitem__)
    worst = recalls[worst_class]
    checks.append(
        _check(
            "min_class_recall",
            worst >= policy.min_class_recall,
            {"class": worst_class, "recall": worst},
            policy.min_class_recall,
            f"lowest per-class recall {worst:.4f} ({worst_class}) "
            f"{'≥' if worst >= policy.min_class_recall else '<'} floor {policy.min_class_recall:.4f}",
        )
    )

    if champion is None or comparison is None:
        checks.append(
            _check(
                "first_run",
                policy.first_run == "promote",
                "no champion",
                policy.first_run,
                f"no model in production: the first-run policy is {policy.first_run!r}",
            )
        )
    else:
        delta = float(comparison["accuracy_delta"])
        p_value = float(comparison["p_value"])
        vs = f"candidate {accuracy:.4f} vs champion {float(champion['accuracy']):.4f}"
        if policy.allow_equal:
            checks.append(
                _check(
                    "non_inferior",
                    delta >= -policy.tolerance,
                    delta,
                    -policy.tolerance,
                    f"{vs}: delta {delta:+.4f} {'≥' if delta >= -policy.tolerance else '<'} "
                    f"-tolerance {-policy.tolerance:+.4f}",
                )
            )
        else:
            improved = delta >= policy.min_delta and delta > 0
            checks.append(
                _check(
                    "min_delta",
                    improved,
                    delta,
                    policy.min_delta,
                    f"{vs}: delta {delta:+.4f} "
                    + ("meets" if improved else "does not meet")
                    + f" the required improvement (> 0 and ≥ {policy.min_delta:+.4f})",
                )
            )
            significant = p_value < policy.alpha
            checks.append(
                _check(
                    "significance",
                    significant,
                    p_value,
                    policy.alpha,
                    f"McNemar p={p_value:.4g} {'<' if significant else '≥'} alpha {policy.alpha:g} "
                    f"({comparison['candidate_only_correct']} images only the candidate gets right, "
                    f"{comparison['champion_only_correct']} only the champion)",
                )
            )

    failed = [c for c in checks if not c["passed"]]
    reasons = [c["detail"] for c in failed] or [c["detail"] for c in checks]
    decision = "reject" if failed else "promote"
    if policy.force:
        decision = "promote"
        reasons = [f"forced by operator: {policy.force_reason}"] + [f"overridden: {c['detail']}" for c in failed]
    return {
        "decision": decision,
        "forced": policy.force,
        "force_reason": policy.force_reason if policy.force else None,
        "candidate": candidate.get("version"),
        "champion": champion.get("version") if champion else None,
        "dataset_digest": metrics.get("dataset", {}).get("digest"),
        "values": {
            "candidate_accuracy": accuracy,
            "champion_accuracy": float(champion["accuracy"]) if champion else None,
            "accuracy_delta": float(comparison["accuracy_delta"]) if comparison else None,
            "p_value": float(comparison["p_value"]) if comparison else None,
            "lowest_class_recall": {"class": worst_class, "recall": worst},
        },
        "policy": asdict(policy),
        "checks": checks,
        "reasons": reasons,
    }
