"""The human-readable model card (model-card.md), rendered from the card, metrics and decision."""

from __future__ import annotations

import json
from typing import Any

from steps.lineage import dataset_lines
from steps.registry import Registry


def model_card_markdown(
    card: dict[str, Any], metrics: dict[str, Any], decision: dict[str, Any], data: list[str] | None = None
) -> str:
    candidate = metrics["candidate"]
    params = card.get("params", {})
    lines = [
        f"# Model card: {card.get('name', 'fashion-mnist')} {candidate.get('version', '')}",
        "",
        f"**Decision: {decision['decision']}**" + (" (forced)" if decision.get("forced") else ""),
        "",
        *[f"- {reason}" for reason in decision["reasons"]],
        "",
        "## Evaluation",
        "",
        f"- test accuracy: {candidate['accuracy']:.4f} on {metrics['dataset']['test_examples']} images "
        f"(dataset `{metrics['dataset']['digest'][:16]}`)",
    ]
    if metrics.get("champion"):
        comparison = metrics["comparison"]
        lines += [
            f"- champion {metrics['champion']['version']}: {metrics['champion']['accuracy']:.4f} "
            f"(delta {comparison['accuracy_delta']:+.4f}, McNemar p={comparison['p_value']:.4g})",
        ]
    else:
        lines.append("- champion: none in production")
    latency = metrics.get("latency") or {}
    if latency:
        lines.append(
            f"- in-process latency: single image p50 {latency['single_p50_ms']} ms, "
            f"{latency['batch_images_per_s']} images/s at batch {latency['batch_size']}"
        )
    lines += ["", "| class | precision | recall | F1 |", "| --- | --- | --- | --- |"]
    for name, c in candidate["per_class"].items():
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} |")
    lines += [
        "",
        "## Training",
        "",
        *[f"- {key}: {value}" for key, value in sorted(params.items())],
        *_fit_lines(card.get("training", {})),
        f"- training time: {card.get('training', {}).get('seconds', '?')} s",
        f"- code version: {card.get('code_version', '?')}",
        f"- created: {card.get('created', '?')}",
        "",
    ]
    if data:
        lines += ["## Data", "", *data, ""]
    return "\n".join(lines)


def _fit_lines(training: dict[str, Any]) -> list[str]:
    """What fitting did (steps/train.py's record): the budget, how far it went, how fast, on which CPU."""
    if "steps" not in training:  # a version trained before budgets
        return []
    budget = f"a budget of {training['budget_s']:g} s" if training.get("budget_s") else "a fixed number of epochs"
    mirrored = ", mirrored" if training.get("mirror") else ""
    return [
        f"- model: {training['architecture']}, {training['precision']}{mirrored}, on CPU tier {training['cpu_tier']}"
        f" ({training.get('cpu_model') or 'unknown CPU'}, oneDNN {training.get('onednn')})",
        f"- fitting: {budget}; {training['steps']} steps of {training['batch_size']} = {training['epochs']} epochs "
        f"in {training['fit_s']} s ({training['seconds_per_step'] * 1000:.1f} ms a step, "
        f"{training['images_per_s']:.0f} images/s, {training['gflops']} GFLOPS)",
    ]


def data_lines(registry: Registry, version: str, champion: str | None) -> list[str]:
    """The lineage of a version's training data and its difference from the champion's (steps/lineage.py)."""
    card = registry.card(version)
    champion_uri = registry.card(champion).get("dataset", {}).get("uri") if champion else None
    return dataset_lines(card.get("dataset", {}).get("uri"), card.get("workflow"), champion_uri)


def run_summary(registry: Registry, workflow: str, status: str, failures: str) -> str:
    """The exit report of a workflow run: what it trained, what the gate said, what is served."""
    lines = [f"# {workflow}: {status}", ""]
    failed_nodes = _failed_nodes(failures)
    if failed_nodes:
        lines += ["## Failures", "", *[f"- {node}" for node in failed_nodes], ""]
    trained = [v for v in registry.versions() if registry.card(v).get("workflow") == workflow]
    if not trained:
        lines.append("No model version was published by this run.")
    for version in trained:
        lines += [f"## Model {version}", ""]
        evaluations = registry.records(version, "evaluations")
        if evaluations:
            lines.append(f"- test accuracy: {evaluations[-1]['candidate']['accuracy']:.4f}")
        champion = (evaluations[-1].get("champion") or {}).get("version") if evaluations else None
        lines += data_lines(registry, version, champion)
        decisions = registry.records(version, "decisions")
        if decisions:
            lines.append(f"- gate: **{decisions[-1]['decision']}**: " + "; ".join(decisions[-1]["reasons"]))
        rollouts = registry.records(version, "rollouts")
        last = rollouts[-1] if rollouts else None
        lines.append(f"- rollout: {last['outcome']} on {last['target']}" if last else "- rollout: none")
        lines.append("")
    production = registry.alias("production")
    lines.append(
        f"Production: {production['version']} (since {production['updated']})"
        if production
        else "Production: no model yet"
    )
    return "\n".join(lines) + "\n"


def _failed_nodes(failures: str) -> list[str]:
    """The failed nodes named by Argo's `{{workflow.failures}}`.

    Argo v4 passes the JSON list encoded again as a JSON string (`strconv.Quote` in
    workflow/controller/operator.go): `"null"` with the quotes when nothing failed. Decoding stops
    once a list (or null) comes out, so a once-encoded list and an empty value are read too.
    """
    value: Any = failures
    for _ in range(2):
        if not isinstance(value, str):
            break
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return [value]
    if value is None:
        return []
    if not isinstance(value, list):
        return [str(value)]
    return [
        f"{n.get('displayName', n.get('name', '?'))} ({n.get('phase', 'Failed')}): {n.get('message', '')}".strip()
        for n in value
        if isinstance(n, dict)
    ]
