"""The retrain webhook's payload contract: `retrain-payload.schema.json`, its checks and the arguments it sets.

The schema file is the single source: the local receiver validates with it, and the Sensor in
workflows/events.py (filters and parameters) is generated from it.
"""

from __future__ import annotations

import copy
import difflib
import json
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from steps.errors import UserError

SCHEMA_PATH = Path(__file__).with_name("retrain-payload.schema.json")
EVENT_ID = "event_id"


@cache
def _schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return schema


@cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema())


def load_payload_schema() -> dict[str, Any]:
    """The payload JSON Schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(_schema())


def validate_payload(body: Any) -> list[str]:
    """Every violation of the contract, one line each, naming the field; empty when the payload is valid."""
    if not isinstance(body, dict):
        return [f"the payload must be a JSON object, got {type(body).__name__}"]
    messages: set[str] = set()
    for error in _validator().iter_errors(body):
        messages.update(_messages(error, body))
    return sorted(messages)


def _messages(error: ValidationError, body: dict[str, Any]) -> list[str]:
    field = ".".join(str(part) for part in error.absolute_path)
    known = list(_schema()["properties"])
    if error.validator == "required":
        return [f"{name}: required" for name in error.validator_value if name not in body]
    if error.validator == "additionalProperties":
        out = []
        for key in sorted(k for k in body if k not in known):
            guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"did you mean '{guess[0]}'?" if guess else f"the fields are {', '.join(known)}"
            out.append(f"{key}: unknown field ({hint})")
        return out
    if error.validator == "not":
        return [f"{field}: must not contain a line break"]
    if error.validator == "pattern":
        return [f"{field}: {error.instance!r} does not match {error.validator_value}"]
    return [f"{field}: {error.message}"]


def payload_to_parameters(body: dict[str, Any]) -> dict[str, str]:
    """The workflow arguments a valid payload sets, as Argo strings (event_id names the run; it is no argument)."""
    problems = validate_payload(body)
    if problems:
        raise UserError(f"invalid retrain payload: {'; '.join(problems)}")
    parameters = {}
    for name, spec in _schema()["properties"].items():
        if name == EVENT_ID:
            continue
        if name in body:
            parameters[name] = argo_string(body[name])
        elif "default" in spec:
            parameters[name] = argo_string(spec["default"])
    return parameters


def argo_string(value: bool | int | float | str) -> str:
    """A JSON scalar as the string Argo Events makes of it (gjson), so the Sensor and the receiver agree.

    Booleans are `true`/`false`; integers are verbatim; any other number is written in the
    shortest positional form that reads back the same (1.0 -> `1`, 1e-05 -> `0.00001`).
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = format(Decimal(repr(value)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return value
