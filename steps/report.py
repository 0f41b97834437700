"""The human-readable model card (model-card.md), rendered from the card, metrics and decision."""

from __future__ import annotations

from typing import Any


def model_card_markdown(card: dict[str, Any], metrics: dict[str, Any], decision: dict[str, Any]) -> str:
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
        f"- training time: {card.get('training', {}).get('seconds', '?')} s",
        f"- code version: {card.get('code_version', '?')}",
        f"- created: {card.get('created', '?')}",
        "",
    ]
    return "\n".join(lines)
