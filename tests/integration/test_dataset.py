"""fetch-dataset: the mirror chain, validation of every kind of bad input, and the store cache."""

from __future__ import annotations

import gzip
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import FILE_NAMES, S3Server, free_port, idx_images, idx_labels, synthetic_split, write_drop

from steps.dataset import (
    CANONICAL_DIGEST,
    UPSTREAM_MIRRORS,
    fetch_dataset,
    load_dataset,
    mirror_chain,
)
from steps.errors import UserError
from steps.storage import FileStore, open_store


def store_at(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


def test_mirror_chain_order_is_data_url_env_upstream_debian() -> None:
    chain = mirror_chain("http://drop.example/x", "/srv/mirror")
    assert [m for m, _ in chain] == [
        "http://drop.example/x",
        "/srv/mirror",
        *UPSTREAM_MIRRORS,
        "/usr/share/datasets/fashion-mnist",
    ]
    assert [custom for _, custom in chain] == [True, False, False, False, False]


def test_fetch_canonical_data_verifies_pinned_digests_then_is_a_cache_hit(
    tmp_path: Path, real_mirror: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_at(tmp_path)
    first = fetch_dataset(store, [(str(real_mirror), False)])
    assert first.digest == CANONICAL_DIGEST and first.canonical and not first.cache_hit
    assert first.counts == {"train": 60000, "test": 10000}
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()}

    with caplog.at_level(logging.INFO):
        second = fetch_dataset(store, [("http://127.0.0.1:9/never-contacted", False)])
    assert second.cache_hit and second.uri == first.uri
    assert "cache hit" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("*") if p.is_file()} == written

    data = load_dataset(first.uri)
    assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
    assert data.y_train[0] == 9 and data.y_test[0] == 9
    assert np.bincount(data.y_test).tolist() == [1000] * 10


def test_fetch_custom_drop_over_http_is_validated_and_recorded_by_digest(
    tmp_path: Path, http_mirror: tuple[str, Path]
) -> None:
    url, root = http_mirror
    write_drop(root / "drop")
    store = store_at(tmp_path)
    result = fetch_dataset(store, mirror_chain(f"{url}/drop", None))
    assert not result.canonical and not result.cache_hit
    assert result.source == f"{url}/drop"
    assert result.counts == {"train": 200, "test": 50}
    manifest = store.read_json(f"datasets/fashion-mnist/{result.digest}/dataset.json")
    assert manifest["digest"] == result.digest and manifest["source"] == f"{url}/drop"
    assert fetch_dataset(store, mirror_chain(f"{url}/drop", None)).cache_hit


def test_a_different_drop_gets_a_different_digest(tmp_path: Path) -> None:
    store = store_at(tmp_path)
    a = fetch_dataset(store, [(str(write_drop(tmp_path / "a", seed=1)), True)])
    b = fetch_dataset(store, [(str(write_drop(tmp_path / "b", seed=2)), True)])
    assert a.digest != b.digest
    assert load_dataset(a.uri).x_train.shape == (200, 28, 28)


def _truncate(d: Path) -> None:
    path = d / FILE_NAMES["train-images"]
    path.write_bytes(path.read_bytes()[:-200])


def _wrong_magic(d: Path) -> None:
    x, _ = synthetic_split(200, 0)
    raw = bytearray(idx_images(x))
    raw[3] = 0x01
    (d / FILE_NAMES["train-images"]).write_bytes(gzip.compress(bytes(raw)))


def _wrong_header_count(d: Path) -> None:
    x, _ = synthetic_split(200, 0)
    raw = bytearray(idx_images(x))
    raw[4:8] = (201).to_bytes(4, "big")
    (d / FILE_NAMES["train-images"]).write_bytes(gzip.compress(bytes(raw)))


def _label_count_mismatch(d: Path) -> None:
    _, y = synthetic_split(199, 0)
    (d / FILE_NAMES["train-labels"]).write_bytes(gzip.compress(idx_labels(y)))


def _label_out_of_range(d: Path) -> None:
    _, y = synthetic_split(50, 1)
    y[7] = 12
    (d / FILE_NAMES["test-labels"]).write_bytes(gzip.compress(idx_labels(y)))


def _wrong_image_size(d: Path) -> None:
    (d / FILE_NAMES["test-images"]).write_bytes(gzip.compress(idx_images(np.zeros((50, 32, 32), np.uint8))))


def _missing_file(d: Path) -> None:
    (d / FILE_NAMES["test-labels"]).unlink()


CORRUPTIONS: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "truncated gzip": (_truncate, FILE_NAMES["train-images"], "corrupt or truncated gzip"),
    "wrong magic": (_wrong_magic, FILE_NAMES["train-images"], "wrong IDX magic 0x00000801, expected 0x00000803"),
    "wrong count in header": (_wrong_header_count, FILE_NAMES["train-images"], "header says 201 items"),
    "labels count differs": (_label_count_mismatch, FILE_NAMES["train-labels"], "199 labels for 200 images"),
    "label out of range": (_label_out_of_range, FILE_NAMES["test-labels"], "label 12 at index 7 is out of range"),
    "wrong image size": (_wrong_image_size, FILE_NAMES["test-images"], "images are 32x32, expected 28x28"),
    "404": (_missing_file, FILE_NAMES["test-labels"], "HTTP 404"),
}


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_bad_mirror_is_named_with_file_and_reason_and_the_next_mirror_is_tried(
    case: str, tmp_path: Path, http_mirror: tuple[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    corrupt, file_name, reason = CORRUPTIONS[case]
    url, root = http_mirror
    corrupt(write_drop(root / "bad"))
    good = write_drop(tmp_path / "good")
    bad_url = f"{url}/bad"

    with caplog.at_level(logging.WARNING):
        result = fetch_dataset(store_at(tmp_path), [(bad_url, True), (str(good), True)])
    assert result.source == str(good)
    assert f"dataset mirror {bad_url}: {file_name}: " in caplog.text
    assert reason in caplog.text

    with pytest.raises(UserError) as excinfo:
        fetch_dataset(store_at(tmp_path / "other"), [(bad_url, True)])
    assert f"dataset mirror {bad_url}: {file_name}: " in str(excinfo.value)
    assert reason in str(excinfo.value)


def test_connection_refused_names_the_mirror(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/fashion"
    with pytest.raises(UserError, match=rf"dataset mirror {url}: train-images-idx3-ubyte.gz: cannot connect"):
        fetch_dataset(store_at(tmp_path), [(url, False)])


def test_canonical_mirror_serving_other_data_fails_the_digest_check(tmp_path: Path) -> None:
    impostor = write_drop(tmp_path / "impostor")
    with pytest.raises(UserError, match="does not match the pinned canonical digest"):
        fetch_dataset(store_at(tmp_path), [(str(impostor), False)])


def test_when_every_mirror_fails_the_error_lists_each_mirror_and_why(tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{free_port()}"
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = write_drop(tmp_path / "truncated")
    _truncate(truncated)
    chain = [(refused, True), (str(empty), False), (str(truncated), False)]
    with pytest.raises(UserError) as excinfo:
        fetch_dataset(store_at(tmp_path), chain)
    message = str(excinfo.value)
    assert message.startswith("no mirror served a valid Fashion-MNIST (3 tried)")
    assert f"{refused}: train-images-idx3-ubyte.gz: cannot connect" in message
    assert f"{empty}: train-images-idx3-ubyte.gz: not found" in message
    assert f"{truncated}: train-images-idx3-ubyte.gz: corrupt or truncated gzip" in message
    assert "\n" not in message


def test_debian_layout_with_different_gzip_headers_has_the_canonical_identity(
    tmp_path: Path, real_mirror: Path
) -> None:
    """Debian recompresses (no file name, fixed mtime): .gz bytes differ, the dataset digest does not."""
    debian = tmp_path / "debian"
    debian.mkdir()
    for name in FILE_NAMES.values():
        raw = gzip.decompress((real_mirror / name).read_bytes())
        # Debian's is `gzip -9n`; any level gives other bytes, and level 1 takes 0.8 s instead of 13 to 17.
        (debian / name).write_bytes(gzip.compress(raw, compresslevel=1, mtime=0))
    assert (debian / FILE_NAMES["train-labels"]).read_bytes() != (real_mirror / FILE_NAMES["train-labels"]).read_bytes()
    result = fetch_dataset(store_at(tmp_path), [(str(debian), False)])
    assert result.canonical and result.digest == CANONICAL_DIGEST


def test_fetch_from_s3_mirror_into_s3_store(tmp_path: Path, bucket: str, s3_env: S3Server) -> None:
    drop = write_drop(tmp_path / "drop")
    mirror = open_store(f"s3://{bucket}/mirror/fashion")
    for name in FILE_NAMES.values():
        mirror.write_bytes(name, (drop / name).read_bytes())
    store = open_store(f"s3://{bucket}/store")
    result = fetch_dataset(store, [(f"s3://{bucket}/mirror/fashion", True)])
    assert result.uri.startswith(f"s3://{bucket}/store/datasets/fashion-mnist/")
    assert load_dataset(result.uri).y_test.shape == (50,)
    assert fetch_dataset(store, [(f"s3://{bucket}/mirror/fashion", True)]).cache_hit


def test_missing_s3_mirror_object_names_mirror_and_file(bucket: str, s3_env: S3Server, tmp_path: Path) -> None:
    expected = rf"dataset mirror s3://{bucket}/nothing: train-images-idx3-ubyte.gz: not found"
    with pytest.raises(UserError, match=expected):
        fetch_dataset(store_at(tmp_path), [(f"s3://{bucket}/nothing", True)])


def test_an_interrupted_fetch_is_completed_by_the_next_run(tmp_path: Path) -> None:
    drop = write_drop(tmp_path / "drop")
    store = store_at(tmp_path)
    result = fetch_dataset(store, [(str(drop), True)])
    # Simulate a crash before the manifest: files present, dataset.json missing.
    manifest = tmp_path / "store" / f"datasets/fashion-mnist/{result.digest}/dataset.json"
    manifest.unlink()
    rerun = fetch_dataset(store, [(str(drop), True)])
    assert not rerun.cache_hit and manifest.is_file()
    shutil.rmtree(tmp_path / "drop")
