"""The promotion policy's threshold semantics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from steps.dataset import CLASS_NAMES
from steps.errors import UserError
from steps.evaluate import classification_metrics, mcnemar_exact
from steps.gate import POLICY_FIELDS, GatePolicy, decide
from steps.parameters import policy_sources
from steps.rollout import RolloutPolicy
from workflows import trigger
from workflows.cli import main


def metrics(
    accuracy: float,
    champion: float | None = None,
    p_value: float = 0.001,
    worst_recall: float = 0.8,
) -> dict[str, Any]:
    per_class = {name: {"precision": 0.9, "recall": 0.95, "f1": 0.9, "support": 1000} for name in CLASS_NAMES}
    per_class["Shirt"]["recall"] = worst_recall
    result: dict[str, Any] = {
        "dataset": {"digest": "d" * 64, "test_examples": 10000},
        "candidate": {"version": "cand", "accuracy": accuracy, "per_class": per_class},
        "champion": None,
        "comparison": None,
    }
    if champion is not None:
        result["champion"] = {"version": "champ", "accuracy": champion, "per_class": per_class}
        result["comparison"] = {
            "accuracy_delta": round(accuracy - champion, 5),
            "p_value": p_value,
            "candidate_only_correct": 120,
            "champion_only_correct": 60,
        }
    return result


def check(record: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in record["checks"] if c["name"] == name)


def test_gate_rejects_candidate_worse_than_champion() -> None:
    record = decide(metrics(0.91, champion=0.93, p_value=0.0001), GatePolicy())
    assert record["decision"] == "reject"
    assert record["values"]["accuracy_delta"] == pytest.approx(-0.02)
    assert not check(record, "min_delta")["passed"]
    assert any("does not meet" in reason for reason in record["reasons"])


def test_gate_promotes_significantly_better_candidate() -> None:
    record = decide(metrics(0.93, champion=0.92, p_value=0.01), GatePolicy())
    assert record["decision"] == "promote"
    assert record["champion"] == "champ" and record["candidate"] == "cand"
    assert record["values"]["p_value"] == 0.01


def test_gate_rejects_better_but_not_significant_candidate() -> None:
    record = decide(metrics(0.93, champion=0.929, p_value=0.6), GatePolicy(alpha=0.05))
    assert record["decision"] == "reject"
    assert not check(record, "significance")["passed"]
    assert check(record, "min_delta")["passed"]


def test_gate_requires_the_configured_minimum_improvement() -> None:
    record = decide(metrics(0.93, champion=0.925, p_value=0.001), GatePolicy(min_delta=0.01))
    assert record["decision"] == "reject"
    assert check(record, "min_delta")["threshold"] == 0.01


def test_gate_threshold_is_inclusive_for_the_accuracy_floor() -> None:
    assert decide(metrics(0.90), GatePolicy(min_accuracy=0.90))["decision"] == "promote"
    assert decide(metrics(0.8999), GatePolicy(min_accuracy=0.90))["decision"] == "reject"


def test_gate_rejects_below_the_absolute_floor_even_without_champion() -> None:
    record = decide(metrics(0.85), GatePolicy(min_accuracy=0.90))
    assert record["decision"] == "reject"
    assert "accuracy 0.8500 < floor 0.9000" in record["reasons"][0]


def test_gate_rejects_a_class_below_the_recall_floor() -> None:
    record = decide(metrics(0.95, worst_recall=0.4), GatePolicy(min_class_recall=0.6))
    assert record["decision"] == "reject"
    assert check(record, "min_class_recall")["value"] == {"class": "Shirt", "recall": 0.4}


def test_gate_first_run_policy_is_explicit() -> None:
    promoted = decide(metrics(0.93), GatePolicy(first_run="promote"))
    rejected = decide(metrics(0.93), GatePolicy(first_run="reject"))
    assert promoted["decision"] == "promote" and promoted["champion"] is None
    assert rejected["decision"] == "reject"
    assert "first-run policy is 'reject'" in rejected["reasons"][0]


def test_gate_allow_equal_accepts_non_inferior_within_tolerance() -> None:
    policy = GatePolicy(allow_equal=True, tolerance=0.005)
    assert decide(metrics(0.928, champion=0.93, p_value=0.9), policy)["decision"] == "promote"
    assert decide(metrics(0.92, champion=0.93, p_value=0.9), policy)["decision"] == "reject"


def test_gate_force_promotes_and_records_the_reason_and_what_it_overrode() -> None:
    record = decide(metrics(0.80, champion=0.93), GatePolicy(force=True, force_reason="hotfix for ticket 42"))
    assert record["decision"] == "promote"
    assert record["forced"] is True and record["force_reason"] == "hotfix for ticket 42"
    assert record["reasons"][0] == "forced by operator: hotfix for ticket 42"
    assert any(reason.startswith("overridden: accuracy") for reason in record["reasons"])


def test_gate_force_without_reason_is_a_user_error() -> None:
    with pytest.raises(UserError, match="force needs a reason"):
        decide(metrics(0.93), GatePolicy(force=True))


def test_gate_refuses_metrics_without_candidate() -> None:
    with pytest.raises(UserError, match="metrics are missing"):
        decide({"champion": None}, GatePolicy())


def test_mcnemar_counts_discordant_pairs_and_gives_exact_p_value() -> None:
    y = np.zeros(100, np.int64)
    candidate = np.zeros(100, np.int64)
    champion = np.zeros(100, np.int64)
    champion[:12] = 1  # champion wrong on 12 the candidate gets right
    candidate[95:] = 1  # candidate wrong on 5... of which none overlap
    result = mcnemar_exact(y, candidate, champion)
    assert result["candidate_only_correct"] == 12
    assert result["champion_only_correct"] == 5
    # Two-sided exact binomial test, 5 successes out of 17 at p=0.5.
    assert result["p_value"] == pytest.approx(0.143463134765625)


def test_classification_metrics_per_class_and_confusion_matrix() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    result = classification_metrics(y_true, y_pred)
    assert result["accuracy"] == pytest.approx(4 / 6, abs=1e-5)
    assert result["confusion_matrix"][0][:3] == [1, 1, 0]
    assert result["per_class"]["Trouser"]["precision"] == pytest.approx(2 / 3, abs=1e-5)
    assert result["per_class"]["Trouser"]["recall"] == 1.0
    assert result["per_class"]["Bag"]["support"] == 0


def test_policy_sources_name_the_template_default_and_the_operators_override() -> None:
    policy = GatePolicy(min_accuracy=0.5)
    sources = policy_sources(
        policy, {"by": "webhook", "via": "fashion-pipeline up", "operator": {"min_accuracy": "0.5"}}
    )

    assert sources["min_accuracy"] == "operator override (fashion-pipeline up -p min_accuracy=0.5)"
    assert {name: source for name, source in sources.items() if name != "min_accuracy"} == dict.fromkeys(
        POLICY_FIELDS[1:], "template default"
    )


def test_a_value_off_the_default_that_no_launcher_recorded_is_still_an_override() -> None:
    sources = policy_sources(GatePolicy(allow_equal=True, tolerance=1.0), {"by": "manual", "via": "argo submit"})

    assert sources["allow_equal"].startswith("operator override (differs from the template default")
    assert sources["tolerance"].startswith("operator override")
    assert sources["min_accuracy"] == "template default"


def test_the_rollout_policy_has_its_sources_too() -> None:
    started = {"by": "cli", "via": "fashion-pipeline run", "operator": {"canary_percent": "50"}}

    assert policy_sources(RolloutPolicy(canary_percent=50), started) == {
        "canary_percent": "operator override (fashion-pipeline run -p canary_percent=50)"
    }
    assert policy_sources(RolloutPolicy(), {"by": "unknown"}) == {"canary_percent": "template default"}


def test_decision_record_names_the_trigger_and_the_source_of_each_policy_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    measured = metrics(0.93, champion=0.92)
    measured["candidate"]["version"] = None  # nothing registered: the record is only written to --out
    (tmp_path / "metrics.json").write_text(json.dumps(measured))
    payload = {"event_id": "drop-9", "epochs": 2}
    monkeypatch.setenv(
        trigger.ENV, trigger.summary("webhook", "fashion-pipeline up", payload=payload, operator={"min_delta": "0.01"})
    )
    code = main(
        [
            "--store",
            str(tmp_path / "store"),
            "gate",
            "--metrics",
            str(tmp_path / "metrics.json"),
            "--min-delta",
            "0.01",
            "--out",
            str(tmp_path / "gate"),
        ]
    )
    record = json.loads((tmp_path / "gate" / "decision.json").read_text())

    assert code == 0
    assert record["trigger"]["by"] == "webhook" and record["trigger"]["payload"] == payload
    assert record["policy"]["min_delta"] == 0.01
    assert record["policy_sources"]["min_delta"] == "operator override (fashion-pipeline up -p min_delta=0.01)"
    assert record["policy_sources"]["min_accuracy"] == "template default"


def test_decision_record_of_a_run_without_a_trigger_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    measured = metrics(0.93)
    measured["candidate"]["version"] = None
    (tmp_path / "metrics.json").write_text(json.dumps(measured))
    monkeypatch.delenv(trigger.ENV, raising=False)
    args = ["--store", str(tmp_path / "store"), "gate", "--metrics", str(tmp_path / "metrics.json")]

    assert main([*args, "--min-accuracy", "0.5", "--out", str(tmp_path / "gate")]) == 0
    record = json.loads((tmp_path / "gate" / "decision.json").read_text())
    assert record["trigger"]["by"] == "unknown"
    assert record["policy_sources"]["min_accuracy"].startswith("operator override (differs")
