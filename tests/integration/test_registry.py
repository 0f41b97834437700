"""The registry: complete-only versions, write-once records, atomic aliases with an append-only history."""

from __future__ import annotations

from pathlib import Path

import pytest

from steps.errors import UserError
from steps.registry import Registry
from steps.storage import Store, open_store


@pytest.fixture(params=["file", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Registry:
    if request.param == "file":
        return Registry(open_store(str(tmp_path / "store")))
    bucket = request.getfixturevalue("bucket")
    return Registry(open_store(f"s3://{bucket}/store"))


def fake_saved_model(tmp_path: Path, payload: bytes = b"graph") -> Path:
    directory = tmp_path / f"sm-{payload.decode()}"
    (directory / "variables").mkdir(parents=True)
    (directory / "saved_model.pb").write_bytes(payload)
    (directory / "variables" / "variables.data-00000-of-00001").write_bytes(b"weights")
    return directory


def test_published_version_has_tf_serving_layout_card_and_manifest(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(fake_saved_model(tmp_path), {"params": {"epochs": 1}, "code_version": "0.1.0"})
    assert registry.versions() == [version]
    store: Store = registry.store
    root = f"models/fashion-mnist/versions/{version}"
    assert store.exists(f"{root}/1/saved_model.pb")
    assert store.exists(f"{root}/1/variables/variables.data-00000-of-00001")
    card = registry.card(version)
    assert card["version"] == version and card["params"] == {"epochs": 1} and card["created"].endswith("Z")
    manifest = store.read_json(f"{root}/MANIFEST.json")
    assert sorted(manifest["files"]) == ["1/saved_model.pb", "1/variables/variables.data-00000-of-00001"]
    assert registry.version_uri(version) == store.uri_of(root)


def test_a_version_without_manifest_is_invisible(registry: Registry, tmp_path: Path) -> None:
    complete = registry.publish(fake_saved_model(tmp_path), {})
    # What a crash mid-publish leaves behind: the model files but no manifest.
    registry.store.upload_dir(fake_saved_model(tmp_path, b"half"), "models/fashion-mnist/versions/99999999-half/1")
    assert registry.versions() == [complete]
    with pytest.raises(UserError, match="model version '99999999-half' not found"):
        registry.card("99999999-half")


def test_versions_are_unique_and_ordered(registry: Registry, tmp_path: Path) -> None:
    versions = [registry.publish(fake_saved_model(tmp_path, f"m{i}".encode()), {}) for i in range(3)]
    assert len(set(versions)) == 3
    assert registry.versions() == sorted(versions)
    assert registry.resolve("latest") == max(versions)


def test_alias_moves_atomically_and_history_is_append_only(registry: Registry, tmp_path: Path) -> None:
    v1 = registry.publish(fake_saved_model(tmp_path, b"a"), {})
    v2 = registry.publish(fake_saved_model(tmp_path, b"b"), {})
    assert registry.alias("production") is None
    registry.set_alias("production", v1, "first model", actor="test")
    pointer = registry.set_alias("production", v2, "better model", actor="test")
    assert pointer["version"] == v2 and pointer["previous"] == v1
    assert registry.resolve("production") == v2
    history = registry.history("production")
    assert [(h["version"], h["previous"], h["reason"]) for h in history] == [
        (v1, None, "first model"),
        (v2, v1, "better model"),
    ]
    # Rolling back is another forward entry; nothing is rewritten.
    registry.set_alias("production", v1, "rollback", actor="test")
    assert [h["version"] for h in registry.history("production")] == [v1, v2, v1]


def test_alias_change_needs_a_reason_and_an_existing_version(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(fake_saved_model(tmp_path), {})
    with pytest.raises(UserError, match="needs a reason"):
        registry.set_alias("production", version, "  ", actor="test")
    with pytest.raises(UserError, match="'nope' not found"):
        registry.set_alias("production", "nope", "why", actor="test")
    assert registry.alias("production") is None


def test_records_are_write_once_and_kept_in_order(registry: Registry, tmp_path: Path) -> None:
    version = registry.publish(fake_saved_model(tmp_path), {})
    registry.add_record(version, "evaluations", {"accuracy": 0.91})
    registry.add_record(version, "evaluations", {"accuracy": 0.92})
    assert [r["accuracy"] for r in registry.records(version, "evaluations")] == [0.91, 0.92]


def test_resolve_on_empty_registry_says_to_train_first(registry: Registry) -> None:
    with pytest.raises(UserError, match="no model versions yet: run train first"):
        registry.resolve("latest")
