"""Dataset lineage: where a run's data came from, what is in it, and how it differs from the champion's.

`fetch` writes one lineage record per run beside the dataset (`<dataset>/lineage/<workflow>.json`,
write-once): the source, the data drop it came with (its `drop.json`: id, created, reason) and the
event that started the run. What is in the data (class counts, pixel mean and std per split) is a
property of the content, so it lives in the dataset's own `dataset.json`. The model card and the
exit report read both.
"""

from __future__ import annotations

import logging
from typing import Any

from steps.dataset import CLASS_NAMES, DATASETS_PREFIX, FetchResult
from steps.errors import UserError
from steps.registry import utc_now
from steps.storage import NotFound, ObjectExists, Store, open_store

log = logging.getLogger(__name__)

# A data drop's manifest: the folder `incoming/<drop_id>/` holds the four IDX files and this, written last.
DROP_MANIFEST = "drop.json"
LINEAGE_DIR = "lineage"
_TRIGGER_KEYS = ("by", "via", "object", "event", "time", "etag", "report", "window_id")


def drop_summary(source: str) -> dict[str, Any] | None:
    """The drop.json beside a drop's files, reduced to what lineage keeps; None when the source has none."""
    try:
        manifest = open_store(source).read_json(DROP_MANIFEST)
    except NotFound:
        return None
    except UserError as exc:  # lineage is a record: an unreadable manifest is noted, the fetch goes on
        return {"unreadable": str(exc)}
    if not isinstance(manifest, dict):
        return {"unreadable": f"{DROP_MANIFEST} is not a JSON object"}
    return {key: manifest[key] for key in ("drop_id", "created", "reason") if key in manifest}


def lineage_record(
    result: FetchResult, data_url: str | None, workflow: str | None, started: dict[str, Any]
) -> dict[str, Any]:
    """What fetch knows about the origin of the dataset it delivered to this run."""
    from_drop = bool(data_url) and result.source == data_url
    return {
        "digest": result.digest,
        "source": result.source,
        "canonical": result.canonical,
        "cache_hit": result.cache_hit,
        "workflow": workflow,
        "drop": drop_summary(result.source) if from_drop else None,
        "trigger": {
            **{key: started[key] for key in _TRIGGER_KEYS if key in started},
            # what the event said it was for (a drift check on a cluster names its report here)
            **({"reason": started["payload"]["reason"]} if "reason" in (started.get("payload") or {}) else {}),
        },
        "fetched": utc_now(),
    }


def write_lineage(store: Store, record: dict[str, Any]) -> str:
    """Keep the record beside its dataset, once per run (a retried fetch keeps the first); returns its URI."""
    name = record["workflow"] or f"cli-{record['fetched'].replace(':', '')}"
    key = f"{DATASETS_PREFIX}/{record['digest']}/{LINEAGE_DIR}/{name}.json"
    try:
        store.write_json(key, record)
    except ObjectExists:
        log.info("lineage of %s was already recorded", name)
    return store.uri_of(key)


def _read(dataset_uri: str, key: str) -> dict[str, Any] | None:
    try:
        value = open_store(dataset_uri).read_json(key)
    except UserError:
        return None
    return value if isinstance(value, dict) else None


def dataset_lines(dataset_uri: str | None, workflow: str | None, champion_dataset_uri: str | None) -> list[str]:
    """Markdown bullet lines: the dataset, its origin, its statistics, and the difference from the champion's."""
    if not dataset_uri:
        return ["- dataset: not recorded"]
    manifest = _read(dataset_uri, "dataset.json") or {}
    digest = str(manifest.get("digest", "?"))
    kind = "canonical Fashion-MNIST" if manifest.get("canonical") else "custom data"
    lines = [f"- dataset `{digest[:16]}` ({kind})"]
    lineage = _read(dataset_uri, f"{LINEAGE_DIR}/{workflow}.json") if workflow else None
    if lineage:
        lines.append(f"- source: {lineage.get('source')}" + (" (cache hit)" if lineage.get("cache_hit") else ""))
        drop = lineage.get("drop")
        if drop:
            reason = f": {drop['reason']}" if drop.get("reason") else ""
            lines.append(f"- data drop {drop.get('drop_id', '?')} (created {drop.get('created', '?')}){reason}")
        started = lineage.get("trigger") or {}
        if started:
            where = f", object {started['object']}" if started.get("object") else ""
            lines.append(f"- started by: {started.get('by')} via {started.get('via')}{where}")
    stats = manifest.get("stats")
    if not stats:
        lines.append("- statistics: not recorded (fetched before lineage was kept)")
    else:
        for split in ("train", "test"):
            lines.append(f"- {split}: {_describe(stats[split])}")
    if champion_dataset_uri:
        lines.append(_difference(manifest, _read(champion_dataset_uri, "dataset.json") or {}))
    return lines


def _describe(split: dict[str, Any]) -> str:
    counts = split["class_counts"]
    per_class = ", ".join(f"{name} {count}" for name, count in zip(CLASS_NAMES, counts, strict=True))
    return f"{sum(counts)} images ({per_class}); pixel mean {split['pixel_mean']:.2f}, std {split['pixel_std']:.2f}"


def _difference(candidate: dict[str, Any], champion: dict[str, Any]) -> str:
    """One line: how the candidate's training data differs from the champion's."""
    if candidate.get("digest") and candidate.get("digest") == champion.get("digest"):
        return "- vs the champion's training data: the same dataset"
    ours, theirs = (candidate.get("stats") or {}).get("train"), (champion.get("stats") or {}).get("train")
    other = str(champion.get("digest", "?"))[:16]
    if not ours or not theirs:
        return f"- vs the champion's training data (`{other}`): different dataset; statistics not recorded for both"
    deltas = [a - b for a, b in zip(ours["class_counts"], theirs["class_counts"], strict=True)]
    changed = ", ".join(f"{name} {d:+d}" for name, d in zip(CLASS_NAMES, deltas, strict=True) if d)
    return (
        f"- vs the champion's training data (`{other}`): train images {sum(deltas):+d}"
        f" ({changed or 'no class changed in size'}); pixel mean {ours['pixel_mean'] - theirs['pixel_mean']:+.2f},"
        f" std {ours['pixel_std'] - theirs['pixel_std']:+.2f}"
    )
