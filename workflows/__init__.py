"""Orchestration: Argo manifests from Hera, the local engine, and the CLI."""
