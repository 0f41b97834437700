"""The result of a run, as a user wants it at the end: what was trained, what the gate said, what is served.

Read from the run record (`runs/<name>/workflow.json`), the gate's decision record and the rollout
record (the node artifacts, or the registry's write-once copies), and the registry's production
alias. Everything is optional: a run that failed early has only some of it, and a store that
cannot be read only costs the lines that need it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    name: str
    phase: str
    message: str
    duration_s: float | None
    version: str = ""
    accuracy: float | None = None
    champion: str = ""
    champion_accuracy: float | None = None
    decision: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    rollout: str = ""
    rollout_detail: str = ""
    production: str = ""
    failed_node: str = ""
    records: list[str] = field(default_factory=list)


def _nodes(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["name"]: node for node in record.get("nodes", [])}


def _output(record: dict[str, Any], node: str, name: str) -> str:
    return str(_nodes(record).get(node, {}).get("outputs", {}).get("parameters", {}).get(name, ""))


def _artifact(record: dict[str, Any], node: str, name: str) -> dict[str, Any] | None:
    path = _nodes(record).get(node, {}).get("outputs", {}).get("artifacts", {}).get(name)
    try:
        return json.loads(Path(path).read_text()) if path else None
    except (OSError, json.JSONDecodeError):
        return None


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def summarise(record: dict[str, Any], run_dir: Path) -> RunResult:
    """The essentials of a run from its record in `run_dir` (and its store, when it can be read)."""
    result = RunResult(
        name=record["name"],
        phase=record.get("phase", "Unknown"),
        message=record.get("message", ""),
        duration_s=record.get("duration_s"),
    )
    result.version = _output(record, "train", "model_version") or record.get("outputs", {}).get("parameters", {}).get(
        "model_version", ""
    )
    result.accuracy = _float(_output(record, "evaluate", "accuracy"))
    result.champion = _output(record, "evaluate", "champion_version")
    failed = [n for n in record.get("nodes", []) if n.get("phase") in ("Failed", "Error") and n["name"] != "onExit"]
    if failed:
        result.failed_node = f"{failed[0]['name']}: {failed[0].get('message', '')}"
    decision = _artifact(record, "gate", "decision")
    rollout = _artifact(record, "rollout", "rollout")
    registry = _registry(record)
    if registry is not None and result.version:
        try:
            decision = decision or _mine(registry.records(result.version, "decisions"), result.name)
            rollout = rollout or _mine(registry.records(result.version, "rollouts"), result.name)
        except Exception as exc:  # a summary never fails a run that already ended
            log.debug("records of %s unreadable: %s", result.version, exc)
    if decision:
        result.decision = decision.get("decision", "")
        result.checks = decision.get("checks", [])
        result.reasons = decision.get("reasons", [])
        result.champion = result.champion or decision.get("champion") or ""
        result.champion_accuracy = _float(decision.get("values", {}).get("champion_accuracy"))
        result.accuracy = (
            result.accuracy
            if result.accuracy is not None
            else _float(decision.get("values", {}).get("candidate_accuracy"))
        )
    rollout_node = _nodes(record).get("rollout", {})
    result.rollout = _output(record, "rollout", "outcome") or ("" if not rollout_node else rollout_node["phase"])
    if rollout_node.get("phase") == "Skipped":
        result.rollout, result.rollout_detail = "skipped", rollout_node.get("message", "")
    if rollout:
        result.rollout = rollout.get("outcome", result.rollout)
        result.rollout_detail = _rollout_detail(rollout)
    if registry is not None:
        try:
            production = registry.alias("production")
            result.production = production["version"] if production else ""
        except Exception as exc:
            log.debug("production alias unreadable: %s", exc)
    result.records = _record_paths(record, run_dir, registry, result.version)
    return result


def _registry(record: dict[str, Any]) -> Any:
    store = record.get("parameters", {}).get("store")
    if not store:
        return None
    from steps.registry import Registry
    from steps.storage import open_store

    try:
        return Registry(open_store(store))
    except Exception as exc:
        log.debug("store %s unreadable: %s", store, exc)
        return None


def _mine(records: list[dict[str, Any]], run: str) -> dict[str, Any] | None:
    """The record this run wrote (records name their workflow); else the latest one."""
    for item in reversed(records):
        if item.get("workflow") == run:
            return item
    return None


def _rollout_detail(rollout: dict[str, Any]) -> str:
    failed = [c for c in rollout.get("checks", []) if not c.get("passed")]
    if rollout.get("error"):
        return str(rollout["error"])
    if failed:
        return "; ".join(f"{c['name']} {_value(c.get('value'))} (limit {_value(c.get('threshold'))})" for c in failed)
    if rollout.get("target") == "registry":
        return "in the registry only: no model server was running"
    return f"on {rollout.get('target', '?')}"


def _record_paths(record: dict[str, Any], run_dir: Path, registry: Any, version: str) -> list[str]:
    paths = [str(run_dir / "workflow.json")]
    summary = _nodes(record).get("onExit", {}).get("outputs", {}).get("artifacts", {}).get("summary")
    if summary:
        paths.append(summary)
    if registry is not None and version:
        try:
            paths.append(registry.version_uri(version))
        except Exception as exc:
            log.debug("no URI for %s: %s", version, exc)
    return paths


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 0.001 and value != 0 else f"{value:.4f}"
    if isinstance(value, dict) and "recall" in value:
        return f"{value['recall']:.4f} ({value.get('class', '?')})"
    return str(value)


def why_rejected(result: RunResult) -> str:
    """One line: the gate's failed rules in words."""
    return "; ".join(result.reasons) or "no rule passed"


def lines(result: RunResult) -> list[str]:
    """The summary as plain text lines (the CLI prints them; `up` logs them)."""
    took = f" in {result.duration_s:.1f}s" if result.duration_s is not None else ""
    out = [f"{result.name} {result.phase}{took}" + (f": {result.message}" if result.message else "")]
    if result.failed_node and result.phase != "Succeeded":
        out.append(f"  failed      {result.failed_node}")
    if result.version:
        accuracy = f": test accuracy {result.accuracy:.4f}" if result.accuracy is not None else ""
        out.append(f"  model       {result.version}{accuracy}")
    if result.decision or result.champion:
        if result.champion:
            accuracy = f": accuracy {result.champion_accuracy:.4f}" if result.champion_accuracy is not None else ""
            out.append(f"  champion    {result.champion}{accuracy}")
        else:
            out.append("  champion    none in production")
    if result.decision:
        verdict = result.decision if result.decision == "promote" else f"{result.decision}: {why_rejected(result)}"
        out.append(f"  gate        {verdict}")
        for check in result.checks:
            mark = "✓" if check.get("passed") else "✗"
            out.append(
                f"    {mark} {check.get('name', '?'):<17} value {_value(check.get('value')):<18} "
                f"threshold {_value(check.get('threshold'))}"
            )
    if result.rollout and result.rollout != "Omitted":
        detail = f" ({result.rollout_detail})" if result.rollout_detail else ""
        out.append(f"  rollout     {result.rollout}{detail}")
    if result.production or result.version:
        out.append(f"  production  {result.production or 'no model yet'}")
    if result.records:
        out.append(f"  records     {', '.join(result.records)}")
    return out
