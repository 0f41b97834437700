"""Plain-Python logic of each pipeline step (no orchestration imports)."""

__version__ = "0.1.0"
