"""The store contract, identical over file:// and s3:// (a real moto server through the MinIO client)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import S3Server, free_port

from steps.errors import UserError
from steps.storage import NotFound, ObjectExists, Store, open_store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "file":
        return open_store(str(tmp_path / "store"))
    bucket = request.getfixturevalue("bucket")
    return open_store(f"s3://{bucket}/root")


def test_objects_are_written_once_and_never_overwritten(store: Store) -> None:
    store.write_bytes("a/b.txt", b"first")
    with pytest.raises(ObjectExists, match="refusing to overwrite"):
        store.write_bytes("a/b.txt", b"second")
    assert store.read_bytes("a/b.txt") == b"first"


def test_replace_swaps_a_pointer_in_one_write(store: Store) -> None:
    store.replace_json("aliases/production.json", {"version": "1"})
    store.replace_json("aliases/production.json", {"version": "2"})
    assert store.read_json("aliases/production.json") == {"version": "2"}
    assert store.list("aliases") == ["aliases/production.json"]


def test_list_is_recursive_sorted_and_bounded_by_directory(store: Store) -> None:
    for key in ("models/x/2.json", "models/x/1.json", "models/xy/3.json", "other.json"):
        store.write_bytes(key, b"{}")
    assert store.list("models/x") == ["models/x/1.json", "models/x/2.json"]
    assert store.list("missing") == []
    assert store.exists("other.json") and not store.exists("models/x")


def test_missing_object_is_not_found_with_its_uri(store: Store) -> None:
    with pytest.raises(NotFound, match=r"not found: .*/nope\.bin"):
        store.read_bytes("nope.bin")


def test_child_store_and_directory_round_trip(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "variables").mkdir(parents=True)
    (source / "saved_model.pb").write_bytes(b"pb")
    (source / "variables" / "variables.index").write_bytes(b"idx")
    store.child("models").upload_dir(source, "v1")
    assert store.list("models/v1") == ["models/v1/saved_model.pb", "models/v1/variables/variables.index"]
    copied = store.download_dir("models/v1", tmp_path / "copy")
    assert (copied / "variables" / "variables.index").read_bytes() == b"idx"
    assert (store.local_dir("models/v1") / "saved_model.pb").read_bytes() == b"pb"
    assert store.child("models").uri == store.uri_of("models")


def test_file_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path}/s")
    store.write_bytes("k", b"v")
    store.replace_bytes("k2", b"v")
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["k", "k2"]


def test_unsupported_uri_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="unsupported store URI 'gs://b/x'"):
        open_store("gs://b/x")


def test_s3_without_endpoint_says_which_variables_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_ENDPOINT", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with pytest.raises(UserError, match="set S3_ENDPOINT"):
        open_store("s3://bucket/prefix")


def test_s3_missing_bucket_says_to_create_it(s3_env: S3Server) -> None:
    with pytest.raises(UserError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket/x").write_bytes("k", b"v")


def test_s3_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UserError, match="cannot reach S3 endpoint"):
        open_store("s3://bucket/x").read_bytes("k")
