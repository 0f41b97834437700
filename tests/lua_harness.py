"""Run generated Sensor filters under a real Lua 5.1, with events built as Argo Events builds them."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from workflows.triggers.webhook_sensor import lua_string

LUA = shutil.which("lua5.1") or shutil.which("lua")


def lua_value(value: Any) -> str:
    """A Lua literal of a decoded JSON value, as Argo Events builds the script's `event` table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_value(v) for v in value) + "}"
    # Objects: Argo Events drops nil values (mapToTable has no case for them).
    items = (f"[{lua_string(k)}] = {lua_value(v)}" for k, v in value.items() if v is not None)
    return "{" + ", ".join(items) + "}"


def run_lua(program: str) -> list[bool]:
    """The `true`/`false` words a Lua program prints, in order."""
    assert LUA is not None, "CI needs lua5.1 (apt-get install lua5.1)"
    result = subprocess.run([LUA, "-"], input=program, capture_output=True, text=True, timeout=30, check=True)
    return [line == "true" for line in result.stdout.split()]
