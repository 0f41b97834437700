"""gate: the promotion policy, applied to evaluate's metrics, giving an auditable decision record.

Rules: the candidate must clear an absolute accuracy floor and a per-class recall floor; against a
champion it must improve accuracy by at least `min_delta` with an exact McNemar p-value below
`alpha` — or, with `allow_equal`, be non-inferior within `tolerance`. With no champion the
explicit `first_run` policy decides. `force` promotes regardless, and needs a reason.

Each rule is a small function in `RULES`: it reads the evidence and its policy field and returns a
`Check`, or None where it does not apply. A new rule is one function added to `RULES` and one
`parameter` field on `GatePolicy`: the record, its reasons and the force override pick it up, and
so do the workflow argument, the template input and the CLI option made from it (workflows/arguments.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steps.errors import UserError
from steps.parameters import check as check_parameters
from steps.parameters import parameter, policy_sources, specs
from steps.registry import Registry

FIRST_RUN_POLICIES = ("promote", "reject")


@dataclass(frozen=True)
class GatePolicy:
    min_accuracy: float = parameter(0.90, "Gate: absolute test-accuracy floor", minimum=0, maximum=1)
    min_class_recall: float = parameter(0.60, "Gate: floor for every class's recall", minimum=0, maximum=1)
    min_delta: float = parameter(0.0, "Gate: required accuracy improvement over the champion", minimum=-1, maximum=1)
    alpha: float = parameter(
        0.05, "Gate: significance level of the exact McNemar test", minimum=0, maximum=1, exclusive_minimum=True
    )
    allow_equal: bool = parameter(False, "Gate: accept a non-inferior candidate instead")
    tolerance: float = parameter(0.005, "Gate: non-inferiority margin when allow_equal is true", minimum=0, maximum=1)
    first_run: str = parameter("promote", "Gate: what to do when nothing is in production", choices=FIRST_RUN_POLICIES)
    # An operator's override on the command line, recorded on its own: no workflow argument.
    force: bool = False
    force_reason: str = ""

    def check(self) -> None:
        check_parameters(self)
        if self.force and not self.force_reason.strip():
            raise UserError("force needs a reason: pass --force-reason 'why this model must ship' (it is recorded)")


# The policy values a run sets (its workflow arguments); force is recorded on its own.
POLICY_FIELDS = tuple(specs(GatePolicy))


@dataclass(frozen=True)
class Check:
    """One rule's verdict as the decision record keeps it (`detail` is the reason in words)."""

    name: str
    passed: bool
    value: Any
    threshold: Any
    detail: str


@dataclass(frozen=True)
class Evidence:
    """What the rules judge: evaluate's metrics, with the values most rules read parsed once."""

    metrics: Mapping[str, Any]
    accuracy: float
    recalls: Mapping[str, float]
    champion: Mapping[str, Any] | None
    comparison: Mapping[str, Any] | None

    @classmethod
    def of(cls, metrics: Mapping[str, Any]) -> Evidence:
        try:
            candidate = metrics["candidate"]
            return cls(
                metrics=metrics,
                accuracy=float(candidate["accuracy"]),
                recalls={name: float(c["recall"]) for name, c in candidate["per_class"].items()},
                champion=metrics.get("champion"),
                comparison=metrics.get("comparison"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(
                f"metrics are missing {exc}: pass the metrics.json written by `fashion-pipeline evaluate`"
            ) from exc

    @property
    def worst_class(self) -> str:
        return min(self.recalls, key=self.recalls.__getitem__)

    @property
    def against_champion(self) -> bool:
        return self.champion is not None and self.comparison is not None

    def compared(self, key: str) -> float:
        """A value of the candidate-vs-champion comparison (only when `against_champion`)."""
        assert self.comparison is not None
        return float(self.comparison[key])

    def versus(self) -> str:
        assert self.champion is not None
        return f"candidate {self.accuracy:.4f} vs champion {float(self.champion['accuracy']):.4f}"


Rule = Callable[[Evidence, GatePolicy], Check | None]


def _at_least(passed: bool) -> str:
    return "≥" if passed else "<"


def accuracy_floor(evidence: Evidence, policy: GatePolicy) -> Check:
    accuracy = evidence.accuracy
    passed = accuracy >= policy.min_accuracy
    detail = f"accuracy {accuracy:.4f} {_at_least(passed)} floor {policy.min_accuracy:.4f}"
    return Check("min_accuracy", passed, accuracy, policy.min_accuracy, detail)


def class_recall_floor(evidence: Evidence, policy: GatePolicy) -> Check:
    worst_class = evidence.worst_class
    worst = evidence.recalls[worst_class]
    passed = worst >= policy.min_class_recall
    detail = (
        f"lowest per-class recall {worst:.4f} ({worst_class}) {_at_least(passed)} floor {policy.min_class_recall:.4f}"
    )
    return Check("min_class_recall", passed, {"class": worst_class, "recall": worst}, policy.min_class_recall, detail)


def first_run(evidence: Evidence, policy: GatePolicy) -> Check | None:
    if evidence.against_champion:
        return None
    detail = f"no model in production: the first-run policy is {policy.first_run!r}"
    return Check("first_run", policy.first_run == "promote", "no champion", policy.first_run, detail)


def non_inferiority(evidence: Evidence, policy: GatePolicy) -> Check | None:
    if not (evidence.against_champion and policy.allow_equal):
        return None
    delta = evidence.compared("accuracy_delta")
    passed = delta >= -policy.tolerance
    detail = f"{evidence.versus()}: delta {delta:+.4f} {_at_least(passed)} -tolerance {-policy.tolerance:+.4f}"
    return Check("non_inferior", passed, delta, -policy.tolerance, detail)


def improvement(evidence: Evidence, policy: GatePolicy) -> Check | None:
    if not evidence.against_champion or policy.allow_equal:
        return None
    delta = evidence.compared("accuracy_delta")
    passed = delta >= policy.min_delta and delta > 0
    detail = (
        f"{evidence.versus()}: delta {delta:+.4f} "
        + ("meets" if passed else "does not meet")
        + f" the required improvement (> 0 and ≥ {policy.min_delta:+.4f})"
    )
    return Check("min_delta", passed, delta, policy.min_delta, detail)


def significance(evidence: Evidence, policy: GatePolicy) -> Check | None:
    if not evidence.against_champion or policy.allow_equal:
        return None
    assert evidence.comparison is not None
    p_value = evidence.compared("p_value")
    passed = p_value < policy.alpha
    detail = (
        f"McNemar p={p_value:.4g} {'<' if passed else '≥'} alpha {policy.alpha:g} "
        f"({evidence.comparison['candidate_only_correct']} images only the candidate gets right, "
        f"{evidence.comparison['champion_only_correct']} only the champion)"
    )
    return Check("significance", passed, p_value, policy.alpha, detail)


# In the order the record lists them.
RULES: tuple[Rule, ...] = (accuracy_floor, class_recall_floor, first_run, non_inferiority, improvement, significance)


def decide(metrics: Mapping[str, Any], policy: GatePolicy) -> dict[str, Any]:
    """The decision record for the metrics written by `steps.evaluate.evaluate`."""
    policy.check()
    evidence = Evidence.of(metrics)
    checks = [check for rule in RULES if (check := rule(evidence, policy)) is not None]

    failed = [c for c in checks if not c.passed]
    reasons = [c.detail for c in failed] or [c.detail for c in checks]
    decision = "reject" if failed else "promote"
    if policy.force:
        decision = "promote"
        reasons = [f"forced by operator: {policy.force_reason}"] + [f"overridden: {c.detail}" for c in failed]
    champion, comparison = evidence.champion, evidence.comparison
    worst_class = evidence.worst_class
    return {
        "decision": decision,
        "forced": policy.force,
        "force_reason": policy.force_reason if policy.force else None,
        "candidate": metrics["candidate"].get("version"),
        "champion": champion.get("version") if champion else None,
        "dataset_digest": metrics.get("dataset", {}).get("digest"),
        "values": {
            "candidate_accuracy": evidence.accuracy,
            "champion_accuracy": float(champion["accuracy"]) if champion else None,
            "accuracy_delta": float(comparison["accuracy_delta"]) if comparison else None,
            "p_value": float(comparison["p_value"]) if comparison else None,
            "lowest_class_recall": {"class": worst_class, "recall": evidence.recalls[worst_class]},
        },
        "policy": asdict(policy),
        "checks": [asdict(c) for c in checks],
        "reasons": reasons,
    }


def read_metrics(location: str) -> Any:
    """evaluate's metrics from a metrics.json path, or from its record's URI in the store."""
    if "://" in location:
        from steps.storage import open_store

        parent, _, name = location.rpartition("/")
        return open_store(parent).read_json(name)
    try:
        return json.loads(Path(location).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"metrics file {location} not found: run `fashion-pipeline evaluate` first") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"metrics file {location} is not valid JSON ({exc})") from exc


def gate(
    registry: Registry,
    metrics: dict[str, Any],
    policy: GatePolicy,
    out_dir: Path,
    audit: Mapping[str, Any],
) -> dict[str, Any]:
    """The gate step: decide, keep the decision with the candidate's version, write decision.json and the model card.

    `audit` (the workflow and the trigger that started it) goes into the record, which also says
    where each policy value came from (the trigger records the operator's `-p` values).
    """
    from steps.report import data_lines, model_card_markdown

    record = decide(metrics, policy)
    record.update(audit)
    record["policy_sources"] = policy_sources(policy, audit.get("trigger") or {})
    candidate = record["candidate"]
    if candidate:
        registry.add_record(candidate, "decisions", record)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "decision.json").write_text(json.dumps(record, indent=2) + "\n")
    card = registry.card(candidate) if candidate else {}
    champion = (metrics.get("champion") or {}).get("version")
    data = data_lines(registry, candidate, champion) if candidate else None
    (out_dir / "model-card.md").write_text(model_card_markdown(card, metrics, record, data))
    return record
