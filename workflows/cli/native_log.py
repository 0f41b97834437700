"""Quiet TensorFlow's native start-up log: what it prints on file descriptor 2 while it is imported.

With oneDNN on, TensorFlow 2.21 prints its banner through absl before logging is set up
(`WARNING: All log messages before absl::InitializeLog() ...` then `I0000 ... port.cc] oneDNN custom
operations are on ...`), twice, and TF_CPP_MIN_LOG_LEVEL does not hold it back. So the import runs
with descriptor 2 pointed at a file, and what is not such a line goes on to the real stderr.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from types import ModuleType
from typing import Any

# absl's prefix (severity, date, time) for INFO and WARNING, and its notice that precedes them.
NATIVE_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} \d\d:\d\d:\d\d)")
PACKAGE = "tensorflow"


def quiet_tensorflow_import() -> None:
    """From now on, the first import of TensorFlow in this process drops its native INFO and WARNING lines."""
    if PACKAGE in sys.modules or any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietFinder())


class _QuietFinder(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != PACKAGE:
            return None
        sys.meta_path.remove(self)  # once: the real finders find it, this only wraps the loading
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # the module sees its own loader, as if nothing came between
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile(mode="w+b") as captured:
            os.dup2(captured.fileno(), 2)
            try:
                self.loader.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                captured.seek(0)
                lines = captured.read().splitlines(True)
                kept = [line for line in lines if not NATIVE_NOISE.match(line.decode(errors="replace"))]
                if kept:
                    os.write(2, b"".join(kept))
