"""Data drops: the contract of `incoming/<drop_id>/`, the local watcher that turns each into one run, and the uploader.

A drop is a folder `incoming/<drop_id>/` in the store holding the four Fashion-MNIST IDX `.gz` files,
then `drop.json`, written last: its arrival is the event. The manifest's contract is the retrain
payload's (workflows/triggers/retrain-payload.schema.json) with `drop_id` and `created` instead of `event_id`,
and no `data_url`: a drop's data is its own folder. So a drop decides exactly what a webhook event
decides, and the same allowlist logic holds its folder to the store's own `incoming/`.

On a cluster, MinIO notifies the `minio` EventSource and the Sensor submits `drop-<drop_id>`
(workflows/triggers/drop_sensor.py). The Sensor only sees the notification, so `drop.json` carries its own
content as the user metadata `fashion-drop` too, which MinIO puts into the notification; `drop`
(the uploader) writes both from the same bytes. Locally, `up` polls the store's `incoming/` and
queues the same run, with the same arguments, through the run queue the webhook uses.

One drop, one run: `events/drops/<drop_id>/run.json` is written once when a drop starts its run,
so a repeated notification or a re-uploaded `drop.json` starts nothing. A drop that fails its
checks (manifest, allowlist, data files) is recorded with why, once per version of its `drop.json`,
and starts nothing; uploading a corrected `drop.json` is a new event.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from steps.dataset import FILES, check_drop
from steps.errors import UserError
from steps.lineage import DROP_MANIFEST
from steps.registry import utc_now
from steps.storage import NotFound, S3Store, Store
from workflows.engine import RunQueue
from workflows.triggers.base import Polling, WriteOnceLog, event_arguments
from workflows.triggers.payload import (
    DATA_URL,
    EVENT_ID,
    data_url_problem,
    load_payload_schema,
    violation_messages,
)

log = logging.getLogger(__name__)

INCOMING = "incoming"
DROP_ID = "drop_id"
CREATED = "created"
RUN_PREFIX = "drop-"
DEFAULT_REASON = "new data drop"
# drop.json's content again as user metadata, where MinIO's notification (and so the Sensor) can read it.
METADATA = "fashion-drop"
DROP_LOG = "events/drops"
DEFAULT_POLL_S = 5.0
# RFC 3339 as `date -u +%FT%TZ` and Python's isoformat() write it; a Lua twin is in drop_events.py.
CREATED_PATTERN = "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"


def run_name(drop_id: str) -> str:
    return f"{RUN_PREFIX}{drop_id}"


def drop_prefix(drop_id: str) -> str:
    return f"{INCOMING}/{drop_id}"


def manifest_key(drop_id: str) -> str:
    return f"{drop_prefix(drop_id)}/{DROP_MANIFEST}"


@cache
def _drop_schema() -> dict[str, Any]:
    payload = load_payload_schema()
    fields = payload["properties"]
    properties = {
        DROP_ID: {
            **fields[EVENT_ID],
            "description": f"The drop's folder name: incoming/<drop_id>/; the run is named {RUN_PREFIX}<drop_id>.",
        },
        CREATED: {
            "description": "When the drop was made (RFC 3339, e.g. 2026-11-27T10:00:00Z).",
            "type": "string",
            "pattern": CREATED_PATTERN,
            "not": {"pattern": "\\n"},
        },
        **{name: spec for name, spec in fields.items() if name not in (EVENT_ID, DATA_URL)},
    }
    properties["reason"] = {**properties["reason"], "default": DEFAULT_REASON}
    schema = {
        "$schema": payload["$schema"],
        "$id": "urn:fashion-pipeline:data-drop",
        "title": "Data drop manifest (incoming/<drop_id>/drop.json)",
        "description": (
            "Written last into a data drop's folder. The retrain payload's contract "
            "(retrain-payload.schema.json) with drop_id and created instead of event_id, and no data_url: "
            "the drop's data is its own folder."
        ),
        "type": "object",
        "required": [DROP_ID, CREATED],
        "additionalProperties": False,
        "properties": properties,
    }
    Draft202012Validator.check_schema(schema)
    return schema


def load_drop_schema() -> dict[str, Any]:
    """The drop manifest's JSON Schema (a fresh copy: callers may change it)."""
    return copy.deepcopy(_drop_schema())


def parse_manifest(data: bytes) -> Any:
    """drop.json decoded; a repeated key is an error (Lua and gjson on the cluster would each read another one)."""

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        repeated = sorted({key for key in keys if keys.count(key) > 1})
        if repeated:
            raise ValueError(f"repeated key(s) {', '.join(repeated)}")
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        manifest = json.loads(data.decode("utf-8"), object_pairs_hook=unique, parse_constant=no_constant)
        json.dumps(manifest, ensure_ascii=False).encode("utf-8")  # a lone surrogate (\ud800) is no text
    except (UnicodeError, ValueError) as exc:
        raise UserError(f"{DROP_MANIFEST} is not valid JSON: {exc}") from exc
    return manifest


def validate_manifest(manifest: Any, folder: str | None = None) -> list[str]:
    """Every violation of the drop contract, one line each naming the field; empty when valid."""
    if not isinstance(manifest, dict):
        return [f"{DROP_MANIFEST} must hold a JSON object, got {type(manifest).__name__}"]
    schema = _drop_schema()
    messages: set[str] = set()
    for error in Draft202012Validator(schema).iter_errors(manifest):
        for message in violation_messages(error, manifest, schema):
            if message.startswith(f"{DATA_URL}: unknown field"):
                message = f"{DATA_URL}: not part of a drop: its data is its own folder ({INCOMING}/<drop_id>/)"
            messages.add(message)
    drop_id = manifest.get(DROP_ID)
    if folder is not None and isinstance(drop_id, str) and drop_id != folder:
        messages.add(f"{DROP_ID}: {drop_id!r} is not the name of its folder {drop_prefix(folder)}/")
    return sorted(messages)


def drop_parameters(manifest: Mapping[str, Any], data_url: str) -> dict[str, str]:
    """The workflow arguments a valid drop sets, as Argo strings: its folder as `data_url`, then its own fields."""
    return {DATA_URL: data_url, **event_arguments(manifest, _drop_schema()["properties"], skip=[DROP_ID, CREATED])}


def metadata_value(manifest: Mapping[str, Any]) -> str:
    """drop.json's content as a header value: compact, ASCII only (S3 user metadata is sent as HTTP headers)."""
    return json.dumps(dict(manifest), separators=(",", ":"), ensure_ascii=True)


def object_key(store: Store, key: str) -> str:
    """The key as a bucket notification names it: below the bucket for S3, below the store's root for files."""
    if isinstance(store, S3Store) and store.prefix:
        return f"{store.prefix}/{key}"
    return key


# ---------------------------------------------------------------------------------------------
# The local watcher
# ---------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one notification of a drop.json led to: queued or submitted, duplicate, refused, failed, or waiting."""

    drop_id: str
    status: str
    run: str | None = None
    problems: list[str] = field(default_factory=list)


class DropLog(WriteOnceLog):
    """Per drop: `run.json` once it started its run, `refused-<token>.json` per refused version of its drop.json."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, DROP_LOG)

    def accept(self, drop_id: str, record: dict[str, Any]) -> bool:
        return self.write(f"{drop_id}/run.json", record)

    def accepted(self, drop_id: str) -> bool:
        return self.exists(f"{drop_id}/run.json")

    def refuse(self, drop_id: str, version: str, record: dict[str, Any]) -> bool:
        """Record why this version of a drop.json was refused; False if it was reported before."""
        return self.write(f"{drop_id}/refused-{hashlib.sha256(version.encode()).hexdigest()[:16]}.json", record)

    def runs(self) -> list[dict[str, Any]]:
        return self.read_all(named="run.json")

    def refusals(self, drop_id: str) -> list[dict[str, Any]]:
        return self.read_all(under=drop_id, named="refused-")


class DropScanner(ABC):
    """Finds drops in the store's `incoming/` and starts one run per complete, valid drop.

    What starts the run is the subclass's `_launch`: the run queue in `up` (DropWatcher), a Workflow
    on a cluster (workflows/triggers/drop_reconcile.py). Everything else (the checks, the refusals, the
    write-once log) is this one code, so a drop means the same wherever it is noticed.
    `notify(key)` is one bucket notification for a drop.json (a scan that sees a new or rewritten
    drop.json notifies it); it is safe to call any number of times for the same object.
    """

    announce_duplicates = True

    def __init__(self, store: Store) -> None:
        self.store = store
        self.log = DropLog(store)
        # Only the store's own drops: the allowlist logic of events, with the one prefix a drop may name.
        self.prefixes = (store.uri_of(f"{INCOMING}/"),)
        self._versions: dict[str, str | None] = {}
        self._waiting: set[str] = set()

    @abstractmethod
    def _launch(self, record: dict[str, Any]) -> str:
        """Start the run `record` describes: "queued" or "submitted", or "duplicate" if it was started before.

        A UserError means it could not be started now; the next scan tries again.
        """

    def scan(self) -> list[Outcome]:
        """One look at `incoming/`: a new or rewritten drop.json is notified; a folder without one is reported once."""
        folders: dict[str, set[str]] = {}
        for key in self.store.list(INCOMING):
            parts = key.split("/")
            if len(parts) == 3:
                folders.setdefault(parts[1], set()).add(parts[2])
        outcomes = []
        for drop_id, names in sorted(folders.items()):
            if DROP_MANIFEST not in names:
                if drop_id not in self._waiting:
                    self._waiting.add(drop_id)
                    missing = sorted(set(FILES.values()) - names)
                    have = f"missing {', '.join(missing)}" if missing else "all four data files"
                    log.info(
                        "drop %s: %s/ has no %s yet (%s): nothing starts until it is written, last",
                        drop_id,
                        drop_prefix(drop_id),
                        DROP_MANIFEST,
                        have,
                    )
                    outcomes.append(Outcome(drop_id, "waiting", problems=[f"no {DROP_MANIFEST} yet ({have})"]))
                continue
            self._waiting.discard(drop_id)
            key = manifest_key(drop_id)
            version = self.store.version(key)
            if version is None or self._versions.get(key) == version:
                continue
            self._versions[key] = version
            try:
                outcomes.append(self.notify(key, version))
            except UserError as exc:  # this drop could not be started now: the others still are, and it is tried again
                del self._versions[key]
                log.warning("drop %s: %s", drop_id, exc)
                outcomes.append(Outcome(drop_id, "failed", run_name(drop_id), [str(exc)]))
        return outcomes

    def notify(self, key: str, version: str | None = None) -> Outcome:
        """Handle one notification that `key` (incoming/<drop_id>/drop.json) was written."""
        parts = key.split("/")
        if len(parts) != 3 or parts[0] != INCOMING or parts[2] != DROP_MANIFEST:
            raise UserError(f"{key}: not a drop manifest ({INCOMING}/<drop_id>/{DROP_MANIFEST})")
        folder = parts[1]
        name = run_name(folder)
        if self.log.accepted(folder):
            if self.announce_duplicates:
                log.info("drop %s: %s written again; %s was already started: not retraining", folder, key, name)
            return Outcome(folder, "duplicate", name)
        try:
            data = self.store.read_bytes(key)
        except NotFound:
            return Outcome(folder, "waiting", problems=[f"{key} is gone"])
        version = version or self.store.version(key) or hashlib.sha256(data).hexdigest()
        manifest, problems = self._check(folder, key, data)
        if problems:
            refusal = {
                "drop_id": folder,
                "object": object_key(self.store, key),
                "problems": problems,
                "manifest": manifest,
                "received": utc_now(),
            }
            if self.log.refuse(folder, version, refusal):
                log.warning("drop %s refused, nothing started: %s", folder, "; ".join(problems))
            else:
                log.info("drop %s: refused before, for the same %s: nothing started", folder, DROP_MANIFEST)
            return Outcome(folder, "refused", problems=problems)
        parameters = drop_parameters(manifest, self.store.uri_of(drop_prefix(folder)))
        record = {
            "drop_id": folder,
            "run": name,
            "object": object_key(self.store, key),
            "manifest": manifest,
            "parameters": parameters,
            "received": utc_now(),
        }
        return Outcome(folder, self._launch(record), name)

    def _check(self, folder: str, key: str, data: bytes) -> tuple[Any, list[str]]:
        try:
            manifest = parse_manifest(data)
        except UserError as exc:
            return None, [str(exc)]
        problems = validate_manifest(manifest, folder)
        copy_in_metadata = self.store.user_metadata(key).get(METADATA)
        if copy_in_metadata is not None and not problems:
            try:
                same = parse_manifest(copy_in_metadata.encode()) == manifest
            except UserError:
                same = False
            if not same:
                problems.append(f"{DROP_MANIFEST} and its {METADATA} metadata (what the cluster reads) differ")
        problem = data_url_problem(self.store.uri_of(drop_prefix(folder)), self.prefixes)
        if problem:
            problems.append(problem)
        if not problems:
            try:
                check_drop(self.store.uri_of(drop_prefix(folder)))
            except UserError as exc:
                problems.append(str(exc))
        return manifest, problems


class DropWatcher(DropScanner, Polling):
    """`up`'s watcher: polls `incoming/` and queues each drop's run on the local run queue."""

    def __init__(self, store: Store, runs: RunQueue, poll_s: float = DEFAULT_POLL_S) -> None:
        DropScanner.__init__(self, store)
        Polling.__init__(self, "drops", poll_s)
        self.runs = runs
        self.poll_s = poll_s

    def describe(self) -> str:
        return f"data drops: watching {self.store.uri_of(INCOMING + '/')} every {self.poll_s:g} s"

    def poll(self) -> list[Outcome]:
        return self.scan()

    def _launch(self, record: dict[str, Any]) -> str:
        # The log first: the queue is in memory, and requeue_unstarted restarts what a crash left queued.
        if not self.log.accept(record["drop_id"], record):
            return "duplicate"
        self._submit(record)
        return "queued"

    def _submit(self, record: dict[str, Any]) -> None:
        details = {"object": record["object"]}
        self.runs.submit(record["run"], record["parameters"], "drop", record["manifest"], details)

    def requeue_unstarted(self) -> int:
        """Drops accepted before a restart whose run never started are queued again."""
        count = 0
        for record in self.log.runs():
            self._versions[manifest_key(record["drop_id"])] = self.store.version(manifest_key(record["drop_id"]))
            if self.runs.status(record["run"]) is None:
                self._submit(record)
                count += 1
        return count


# ---------------------------------------------------------------------------------------------
# The uploader: data first, drop.json last
# ---------------------------------------------------------------------------------------------


def prepare_manifest(
    directory: Path, drop_id: str | None, reason: str | None, values: Mapping[str, str]
) -> dict[str, Any]:
    """The manifest to upload: DIR/drop.json if there is one, completed with the id, reason, time and `-p` values."""
    path = directory / DROP_MANIFEST
    manifest: Any = parse_manifest(path.read_bytes()) if path.is_file() else {}
    if not isinstance(manifest, dict):
        raise UserError(f"{path} must hold a JSON object")
    if drop_id and manifest.get(DROP_ID, drop_id) != drop_id:
        raise UserError(f"--id {drop_id} differs from {DROP_ID} {manifest[DROP_ID]!r} in {path}: use one of them")
    manifest.setdefault(DROP_ID, drop_id or directory.resolve().name)
    manifest.setdefault(CREATED, utc_now())
    if reason:
        manifest["reason"] = reason
    properties = _drop_schema()["properties"]
    for name, text in values.items():
        kind = properties.get(name, {}).get("type")
        try:
            manifest[name] = int(text) if kind == "integer" else float(text) if kind == "number" else text
        except ValueError as exc:
            raise UserError(f"-p {name}={text}: not a{'n integer' if kind == 'integer' else ' number'}") from exc
    problems = validate_manifest(manifest)
    if problems:
        bad_id = any(p.startswith(DROP_ID) for p in problems)
        hint = " (pass --id with lower-case letters, digits and '-')" if bad_id else ""
        raise UserError(f"invalid drop: {'; '.join(problems)}{hint}")
    return manifest


def upload_drop(store: Store, directory: Path, manifest: Mapping[str, Any]) -> list[str]:
    """Check the data, then write the four files and drop.json last (write-once); returns the keys written."""
    check_drop(str(directory.resolve()))
    drop_id = manifest[DROP_ID]
    if store.exists(manifest_key(drop_id)):
        where = store.uri_of(drop_prefix(drop_id))
        raise UserError(f"drop {drop_id} was already delivered to {where}/: choose another --id")
    written = []
    for name in FILES.values():
        key = f"{drop_prefix(drop_id)}/{name}"
        data = (directory / name).read_bytes()
        if store.exists(key):
            if store.read_bytes(key) != data:
                raise UserError(f"{store.uri_of(key)} already holds other data: choose another --id")
        else:
            store.write_bytes(key, data)
        written.append(key)
    body = (json.dumps(dict(manifest), indent=2) + "\n").encode()
    store.write_bytes(manifest_key(drop_id), body, metadata={METADATA: metadata_value(manifest)})
    return [*written, manifest_key(drop_id)]
