"""Locations in a manifest, and reading documents that may not match the schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

Loc = tuple[str | int, ...]
Issue = tuple[Loc, str]


def json_path(loc: Iterable[str | int]) -> str:
    out = "$"
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_$][\w$-]*", part):
            out += f".{part}"
        else:
            out += f"[{json.dumps(part)}]"
    return out


def dig(node: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def items(node: Any) -> Iterator[tuple[int, Any]]:
    return enumerate(node) if isinstance(node, list) else iter(())


def named(node: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, item) of the dict items of a list."""
    return ((i, item) for i, item in items(node) if isinstance(item, dict))


def names(node: Any) -> frozenset[str]:
    return frozenset(item["name"] for _, item in named(node) if isinstance(item.get("name"), str))


def strings(node: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    if isinstance(node, str):
        yield loc, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, (*loc, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from strings(value, (*loc, i))


def without(node: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k not in keys}


def step_calls(template: dict[str, Any], at: Loc) -> Iterator[tuple[int, Loc, dict[str, Any]]]:
    """(group index, location, step) of a steps template."""
    for g, group in items(template.get("steps")):
        for j, step in named(group):
            yield g, (*at, "steps", g, j), step
