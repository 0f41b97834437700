"""Drift: a window of served traffic against the data the served model was trained on.

Three measures, each with the operator's threshold (`DriftPolicy`, set like the gate policy, never by
an event):
- the predicted-class distribution against the training labels' (population stability index, PSI);
- each input statistic (pixel mean, standard deviation, dark fraction) against the same statistics
  of the model's own test split (two-sample Kolmogorov-Smirnov statistic D; with thousands of
  records any p-value is tiny, so the threshold is on D, the largest gap between the two CDFs);
- the rate of low-confidence answers (top probability under `low_confidence`).
The reference comes from the model card's dataset, through the store: the lineage's class counts
and the split's images, whatever machine the check runs on.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steps.errors import UserError
from steps.monitoring import Window, image_stats
from steps.parameters import parameter

STATS = ("mean", "std", "dark")


@dataclass(frozen=True)
class DriftPolicy:
    window_s: float = parameter(3600.0, "Drift: seconds of served traffic one check looks at", minimum=1)
    min_records: int = parameter(200, "Drift: fewest records in a window for a verdict", minimum=1)
    max_psi: float = parameter(0.2, "Drift: largest PSI of predicted classes vs training labels", minimum=0)
    max_ks: float = parameter(0.25, "Drift: largest KS statistic of an input statistic", minimum=0, maximum=1)
    low_confidence: float = parameter(0.6, "Drift: a top probability under this is low confidence", minimum=0)
    max_low_confidence_rate: float = parameter(
        0.3, "Drift: largest share of low-confidence answers", minimum=0, maximum=1
    )


@dataclass(frozen=True)
class Reference:
    """What the served version was trained on: label distribution, and per-image statistics of its test split."""

    dataset_digest: str
    label_share: np.ndarray  # [10]
    stats: dict[str, np.ndarray]  # name -> per-image values


def reference_from(dataset_uri: str, digest: str, class_counts: list[int] | None) -> Reference:
    from steps.dataset import load_dataset

    data = load_dataset(dataset_uri)
    counts = np.asarray(class_counts if class_counts else np.bincount(data.y_train, minlength=10), np.float64)
    means, stds, dark = image_stats(data.x_test)
    return Reference(digest, counts / counts.sum(), {"mean": means, "std": stds, "dark": dark})


def psi(expected: np.ndarray, actual: np.ndarray, floor: float = 1e-4) -> float:
    e, a = np.clip(expected, floor, None), np.clip(actual, floor, None)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(x: np.ndarray, y: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov D: the largest gap between the empirical CDFs."""
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(np.sort(x), grid, side="right") / len(x)
    cdf_y = np.searchsorted(np.sort(y), grid, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


def window_id(version: str, start: float, end: float) -> str:
    """Names the window a check looked at: the same window checked twice has the same id, another window another."""
    return hashlib.sha256(f"{version}:{start:.3f}:{end:.3f}".encode()).hexdigest()[:12]


def measure(window: Window, reference: Reference, policy: DriftPolicy) -> dict[str, Any]:
    """The report: each measure, its threshold, and whether the window drifted (None: no verdict, and why)."""
    report: dict[str, Any] = {
        "version": window.version,
        "window": {"start": window.start, "end": window.end, "records": len(window.records)},
        "skipped": {"count": len(window.skipped), "examples": window.skipped[:5]},
        "dataset_digest": reference.dataset_digest,
        "policy": asdict(policy),
    }
    if len(window.records) < policy.min_records:
        other = f"; {window.other_versions} name another version" if window.other_versions else ""
        report["drifted"] = None
        report["reason"] = (
            f"{len(window.records)} records of {window.version} in the window, fewer than {policy.min_records}{other}"
        )
        return report
    classes = window.column("class_id").astype(np.int64)
    served_share = np.bincount(classes, minlength=10)[:10] / len(classes)
    measures = {
        "class_psi": {"value": psi(reference.label_share, served_share), "threshold": policy.max_psi},
        **{
            f"ks_{name}": {
                "value": ks_statistic(window.column(name), reference.stats[name]),
                "threshold": policy.max_ks,
            }
            for name in STATS
        },
        "low_confidence_rate": {
            "value": float(np.mean(window.column("probability") < policy.low_confidence)),
            "threshold": policy.max_low_confidence_rate,
        },
    }
    for value in measures.values():
        value["value"] = round(value["value"], 4)
        value["drifted"] = value["value"] > value["threshold"]
    report["measures"] = measures
    report["served_class_share"] = [round(float(s), 4) for s in served_share]
    report["training_class_share"] = [round(float(s), 4) for s in reference.label_share]
    crossed = [name for name, value in measures.items() if value["drifted"]]
    report["drifted"] = bool(crossed)
    report["reason"] = (
        "drift: " + ", ".join(f"{n} {measures[n]['value']:.3f} > {measures[n]['threshold']:g}" for n in crossed)
        if crossed
        else "no measure crossed its threshold"
    )
    report["window_id"] = window_id(window.version, window.start, window.end)
    return report


def write_report(report: dict[str, Any], window: Window, reference: Reference, out: Path) -> list[Path]:
    """drift.json, and drift.png: served vs training class shares and input statistics, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "drift.json", out / "drift.png"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    if "measures" in report:
        x = np.arange(10)
        axes[0].bar(x - 0.2, report["training_class_share"], 0.4, label="training labels")
        axes[0].bar(x + 0.2, report["served_class_share"], 0.4, label="served predictions")
        axes[0].set_title(f"classes: PSI {report['measures']['class_psi']['value']:.3f}")
        axes[0].set_xticks(x)
        axes[0].legend(fontsize=7)
        for axis, name in zip(axes[1:], STATS, strict=True):
            axis.hist(reference.stats[name], bins=40, density=True, alpha=0.5, label="test split")
            axis.hist(window.column(name), bins=40, density=True, alpha=0.5, label="served")
            axis.set_title(f"pixel {name}: KS {report['measures'][f'ks_{name}']['value']:.3f}")
            axis.legend(fontsize=7)
    else:
        axes[0].text(0.05, 0.5, report["reason"], wrap=True)
    figure.suptitle(f"{report['version']}: {verdict(report)} ({report['window']['records']} records)")
    figure.tight_layout()
    figure.savefig(png_path, dpi=80)
    plt.close(figure)
    return [json_path, png_path]


def check_reference(card: dict[str, Any]) -> tuple[str, str, list[int] | None]:
    """The served version's training data from its model card: (dataset URI, digest, train class counts)."""
    dataset = card.get("dataset") or {}
    if not dataset.get("uri"):
        raise UserError(
            f"model {card.get('version', '?')} has no training dataset on its card: nothing to compare with"
        )
    stats = (dataset.get("stats") or {}).get("train") or {}
    return dataset["uri"], dataset.get("digest", ""), stats.get("class_counts")


def check_drift(registry: Any, version: str, end: float, policy: DriftPolicy, out: Path) -> dict[str, Any]:
    """Measure the window of `version` ending at `end`; the report is written to `out` and, once, to the store.

    Raises UserError (one line) when there is nothing to compare with; an empty or thin window is a
    report with no verdict, not an error.
    """
    from datetime import UTC, datetime

    from steps.monitoring import read_window, version_prefix

    card = registry.card(version)
    dataset_uri, digest, class_counts = check_reference({"version": version, **card})
    reference = reference_from(dataset_uri, digest, class_counts)
    window = read_window(registry.store, registry.name, version, end - policy.window_s, end)
    report = measure(window, reference, policy)
    # One report per check, written once: two checks of the same window keep both.
    stamp = datetime.fromtimestamp(end, UTC).strftime("%Y%m%dT%H%M%SZ")
    key = f"{version_prefix(registry.name, version)}/drift/{stamp}-{uuid.uuid4().hex[:8]}.json"
    report["report_uri"], report["report_key"] = registry.store.uri_of(key), key
    written = write_report(report, window, reference, out)
    registry.store.write_bytes(key, written[0].read_bytes())
    registry.store.write_bytes(key.removesuffix(".json") + ".png", written[1].read_bytes())
    return report


def verdict(report: dict[str, Any]) -> str:
    """The report's verdict in a word: DRIFTED, no drift, or no verdict (too few records)."""
    return {True: "DRIFTED", False: "no drift", None: "no verdict"}[report["drifted"]]
