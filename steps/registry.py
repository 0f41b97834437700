"""The model registry in a store.

```
models/<name>/versions/<version>/1/saved_model.pb ...   the SavedModel (TF Serving layout)
models/<name>/versions/<version>/model-card.json
models/<name>/versions/<version>/MANIFEST.json          written last: the version is complete
models/<name>/versions/<version>/evaluations/<id>.json  records added later, each written once
models/<name>/versions/<version>/decisions/<id>.json
models/<name>/aliases/<alias>.json                      pointer, one atomic write per change
models/<name>/aliases/history/<id>.json                 append-only log of alias changes
```
A KServe `storageUri` is the version root; nothing here is ever overwritten or deleted.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steps import __version__
from steps.errors import UserError
from steps.storage import NotFound, Store

MODEL_NAME = "fashion-mnist"
ALIAS_RE_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-")
_MANIFEST = "MANIFEST.json"


def root_version(root: Store) -> str | None:
    """The version id a store opened at a version root was published as (None without a manifest)."""
    return root.read_json(_MANIFEST).get("version") if root.exists(_MANIFEST) else None


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _stamp() -> str:
    """A sortable, unique id: UTC time to the microsecond, plus randomness so two writers never collide."""
    return f"{datetime.now(UTC):%Y%m%d-%H%M%S-%f}-{secrets.token_hex(2)}"


def code_version() -> str:
    """The version of this code: the image's build label, or the package version plus git commit."""
    if pinned := os.environ.get("FASHION_PIPELINE_CODE_VERSION"):
        return pinned
    source = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        command = ["git", "-C", str(source), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{sha}{'.dirty' if dirty else ''}"


@dataclass(frozen=True)
class Registry:
    store: Store
    name: str = MODEL_NAME

    @property
    def _root(self) -> str:
        return f"models/{self.name}"

    def _version_prefix(self, version: str) -> str:
        return f"{self._root}/versions/{version}"

    def publish(self, saved_model_dir: Path, card: dict[str, Any]) -> str:
        """Add a new version from a local SavedModel directory; returns its id."""
        if not (saved_model_dir / "saved_model.pb").is_file():
            raise UserError(f"{saved_model_dir} is not a SavedModel directory (no saved_model.pb)")
        version = _stamp()
        prefix = self._version_prefix(version)
        self.store.upload_dir(saved_model_dir, f"{prefix}/1")
        card = {**card, "name": self.name, "version": version, "created": utc_now()}
        self.store.write_json(f"{prefix}/model-card.json", card)
        files = {
            f"1/{path.relative_to(saved_model_dir).as_posix()}": _sha256_file(path)
            for path in sorted(saved_model_dir.rglob("*"))
            if path.is_file()
        }
        self.store.write_json(
            f"{prefix}/{_MANIFEST}", {"name": self.name, "version": version, "files": files, "created": card["created"]}
        )
        return version

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        prefix = f"{self._root}/versions/"
        return sorted(
            key[len(prefix) :].split("/")[0]
            for key in self.store.list(f"{self._root}/versions")
            if key.endswith(f"/{_MANIFEST}") and key.count("/") == prefix.count("/") + 1
        )

    def require(self, version: str) -> str:
        if not self.store.exists(f"{self._version_prefix(version)}/{_MANIFEST}"):
            known = ", ".join(self.versions()[-5:]) or "none yet"
            raise UserError(f"model version {version!r} not found in {self.store.uri} (latest: {known})")
        return version

    def resolve(self, ref: str) -> str:
        """A version id from a version id, an alias name, or `latest`."""
        if ref == "latest":
            versions = self.versions()
            if not versions:
                raise UserError(f"the registry at {self.store.uri} has no model versions yet: run train first")
            return versions[-1]
        pointer = self.alias(ref)
        return str(pointer["version"]) if pointer else self.require(ref)

    def version_uri(self, version: str) -> str:
        """The version root: what KServe's `storageUri` points at."""
        return self.store.uri_of(self._version_prefix(version))

    def card(self, version: str) -> dict[str, Any]:
        self.require(version)
        card: dict[str, Any] = self.store.read_json(f"{self._version_prefix(version)}/model-card.json")
        return card

    def local_model_dir(self, version: str) -> Path:
        """A local directory holding the version's SavedModel (downloaded if the store is remote)."""
        self.require(version)
        return self.store.local_dir(f"{self._version_prefix(version)}/1")

    def add_record(self, version: str, kind: str, record: dict[str, Any]) -> str:
        """Attach a write-once record (evaluation, decision, ...) to a version; returns its key."""
        self.require(version)
        key = f"{self._version_prefix(version)}/{kind}/{_stamp()}.json"
        self.store.write_json(key, {**record, "recorded": utc_now()})
        return key

    def records(self, version: str, kind: str) -> list[dict[str, Any]]:
        prefix = f"{self._version_prefix(version)}/{kind}"
        return [self.store.read_json(key) for key in self.store.list(prefix) if key.endswith(".json")]

    def alias(self, alias: str) -> dict[str, Any] | None:
        """The alias pointer, or None if the alias was never set or was cleared."""
        try:
            pointer = self.store.read_json(f"{self._root}/aliases/{alias}.json")
        except NotFound:
            return None
        return pointer if pointer.get("version") else None

    def set_alias(
        self, alias: str, version: str | None, reason: str, actor: str, extra: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Point `alias` at `version` (None clears it) in one atomic write, after logging the change append-only.

        `extra` travels with the pointer (the canary alias carries its traffic percent).
        """
        if not alias or not set(alias) <= ALIAS_RE_CHARS:
            raise UserError(f"alias {alias!r} must be lowercase letters, digits and dashes")
        if not reason.strip():
            raise UserError("changing an alias needs a reason (it is kept in the alias history)")
        if version is not None:
            self.require(version)
        current = self.alias(alias)
        entry = {
            **(extra or {}),
            "alias": alias,
            "version": version,
            "previous": current["version"] if current else None,
            "reason": reason,
            "actor": actor,
            "updated": utc_now(),
            "storage_uri": self.version_uri(version) if version else None,
        }
        history_key = f"{self._root}/aliases/history/{_stamp()}-{alias}.json"
        self.store.write_json(history_key, entry)
        pointer = {**entry, "history": history_key}
        self.store.replace_json(f"{self._root}/aliases/{alias}.json", pointer)
        return pointer

    def history(self, alias: str | None = None) -> list[dict[str, Any]]:
        """Alias changes, oldest first."""
        keys = self.store.list(f"{self._root}/aliases/history")
        entries = [self.store.read_json(key) for key in keys if key.endswith(".json")]
        return [e for e in entries if alias is None or e["alias"] == alias]


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
