"""How a run started: the `trigger` workflow argument, a compact JSON object that every step can read.

Whoever starts a run writes it: the webhook receiver and the schedule of `up`, `run`, the Sensor
(from the event body, see workflows/triggers/webhook_sensor.py), the CronWorkflow; `argo submit` keeps the
template's default. Keys: `by` (webhook, schedule, cli, manual), `via` (which launcher), `payload`
(a webhook event's body) and `operator` (the launcher's `-p` values). The run record keeps it
with the other arguments; gate and rollout read it from `ENV` into the decision record and the
registry's alias history. Light on purpose: the gate step imports it and starts in well under 1 s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

ARGUMENT = "trigger"
ENV = "FASHION_PIPELINE_TRIGGER"
_RAW_LIMIT = 2000


def summary(
    by: str,
    via: str,
    *,
    payload: Mapping[str, Any] | None = None,
    operator: Mapping[str, str] | None = None,
    **details: Any,
) -> str:
    """The argument's value: keys in a fixed order (the Sensor builds the same object), no spaces."""
    record: dict[str, Any] = {"by": by, "via": via, **details}
    if payload is not None:
        record["payload"] = dict(payload)
    if operator:
        record["operator"] = dict(sorted(operator.items()))
    return json.dumps(record, separators=(",", ":"))


MANUAL = summary("manual", "argo submit or the Argo UI")


def read(text: str | None) -> dict[str, Any]:
    """The trigger as a dict; a missing or unreadable value is recorded as such, never an error (it is audit only)."""
    if not text:
        return {"by": "unknown", "via": "no trigger argument"}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("by"), str):
        return {"by": "unknown", "via": "unreadable trigger argument", "raw": text[:_RAW_LIMIT]}
    return value
