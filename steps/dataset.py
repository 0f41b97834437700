"""fetch-dataset: Fashion-MNIST from the first mirror that serves valid files, stored once per digest.

A dataset's identity is the SHA-256 of its *decompressed* IDX bytes: mirrors may recompress
(Debian does), the content may not change. Canonical mirrors must serve exactly the pinned
digests; a custom drop (`data_url`) is validated structurally and recorded by its own digest.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np

from steps.errors import UserError
from steps.storage import Store, open_store

log = logging.getLogger(__name__)

FILES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "test-images": "t10k-images-idx3-ubyte.gz",
    "test-labels": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of the decompressed canonical files (zalandoresearch/fashion-mnist).
CANONICAL_SHA256 = {
    "train-images": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "test-images": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "test-labels": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
UPSTREAM_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets",
)
DEBIAN_MIRROR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DATASETS_PREFIX = "datasets/fashion-mnist"
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_HTTP_TIMEOUT_S = 30


def dataset_digest(file_digests: dict[str, str]) -> str:
    """The dataset's identity: a digest over its four file digests in a fixed order."""
    text = "".join(f"{role}:{file_digests[role]}\n" for role in FILES)
    return hashlib.sha256(text.encode()).hexdigest()


CANONICAL_DIGEST = dataset_digest(CANONICAL_SHA256)


@dataclass(frozen=True)
class FetchResult:
    uri: str
    digest: str
    source: str
    canonical: bool
    cache_hit: bool
    counts: dict[str, int]
    stats: dict[str, Any] | None = None  # per split: class counts, pixel mean and std (None: fetched before stats)


class MirrorError(UserError):
    """One mirror could not serve one file; the message names both."""


def mirror_chain(data_url: str | None, env_mirror: str | None) -> list[tuple[str, bool]]:
    """Mirrors in the order they are tried, each flagged `custom` if it may hold a custom drop."""
    chain: list[tuple[str, bool]] = []
    if data_url:
        chain.append((data_url, True))
    if env_mirror:
        chain.append((env_mirror, False))
    chain.extend((url, False) for url in UPSTREAM_MIRRORS)
    chain.append((DEBIAN_MIRROR, False))
    return chain


def fetch_dataset(store: Store, mirrors: list[tuple[str, bool]]) -> FetchResult:
    """Fetch from the first mirror that serves a valid dataset and write it once into `store`."""
    has_custom = any(custom for _, custom in mirrors)
    if not has_custom and store.exists(_manifest_key(CANONICAL_DIGEST)):
        return _cache_hit(store, CANONICAL_DIGEST, source="store")
    failures = []
    for mirror, custom in mirrors:
        try:
            files = {role: _read_file(mirror, name) for role, name in FILES.items()}
            digests, counts, stats = _validate(mirror, files, allow_custom=custom)
        except MirrorError as exc:
            log.warning("%s; trying the next mirror", exc)
            failures.append(str(exc))
            continue
        digest = dataset_digest(digests)
        if store.exists(_manifest_key(digest)):
            return _cache_hit(store, digest, source=mirror)
        return _publish(store, digest, digests, counts, stats, files, mirror)
    raise UserError(f"no mirror served a valid Fashion-MNIST ({len(failures)} tried): " + " | ".join(failures))


def _cache_hit(store: Store, digest: str, source: str) -> FetchResult:
    manifest = store.read_json(_manifest_key(digest))
    uri = store.uri_of(f"{DATASETS_PREFIX}/{digest}")
    log.info("dataset %s already in the store (cache hit): %s", digest[:12], uri)
    return FetchResult(
        uri=uri,
        digest=digest,
        source=source,
        canonical=manifest["canonical"],
        cache_hit=True,
        counts=manifest["counts"],
        stats=manifest.get("stats"),
    )


def _publish(
    store: Store,
    digest: str,
    digests: dict[str, str],
    counts: dict[str, int],
    stats: dict[str, Any],
    files: dict[str, bytes],
    mirror: str,
) -> FetchResult:
    prefix = f"{DATASETS_PREFIX}/{digest}"
    for role, name in FILES.items():
        if not store.exists(f"{prefix}/{name}"):  # left by an interrupted earlier run
            store.write_bytes(f"{prefix}/{name}", files[role])
    canonical = digest == CANONICAL_DIGEST
    # The manifest is written last: a dataset without one is incomplete and never read.
    store.write_json(
        _manifest_key(digest),
        {
            "digest": digest,
            "files": digests,
            "counts": counts,
            "stats": stats,
            "canonical": canonical,
            "source": mirror,
        },
    )
    uri = store.uri_of(prefix)
    log.info("dataset %s fetched from %s and stored at %s", digest[:12], mirror, uri)
    return FetchResult(
        uri=uri, digest=digest, source=mirror, canonical=canonical, cache_hit=False, counts=counts, stats=stats
    )


def _manifest_key(digest: str) -> str:
    return f"{DATASETS_PREFIX}/{digest}/dataset.json"


def _read_file(mirror: str, name: str) -> bytes:
    parsed = urlparse(mirror)
    url = f"{mirror.rstrip('/')}/{name}"
    if parsed.scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT_S) as response:
                data: bytes = response.read()
                return data
        except urllib.error.HTTPError as exc:
            raise MirrorError(f"dataset mirror {mirror}: {name}: HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise MirrorError(f"dataset mirror {mirror}: {name}: cannot connect ({reason})") from exc
    if parsed.scheme in ("", "file", "s3"):
        try:
            return open_store(mirror).read_bytes(name)
        except UserError as exc:
            raise MirrorError(f"dataset mirror {mirror}: {name}: {exc}") from exc
    raise MirrorError(
        f"dataset mirror {mirror}: unsupported scheme {parsed.scheme!r} (use http(s)://, file://, s3:// or a path)"
    )


def _decompress(mirror: str, name: str, data: bytes) -> bytes:
    if data[:2] != b"\x1f\x8b":
        return data  # an uncompressed IDX file is fine too
    try:
        return gzip.decompress(data)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise MirrorError(f"dataset mirror {mirror}: {name}: corrupt or truncated gzip ({exc})") from exc


def parse_idx(mirror: str, name: str, raw: bytes, images: bool) -> np.ndarray:
    """The array in an IDX file, after checking magic, dimensions and size."""
    header = 16 if images else 8
    if len(raw) < header:
        raise MirrorError(f"dataset mirror {mirror}: {name}: {len(raw)} bytes is too short for an IDX header")
    magic = int.from_bytes(raw[0:4], "big")
    expected = _IMAGES_MAGIC if images else _LABELS_MAGIC
    if magic != expected:
        raise MirrorError(f"dataset mirror {mirror}: {name}: wrong IDX magic 0x{magic:08x}, expected 0x{expected:08x}")
    count = int.from_bytes(raw[4:8], "big")
    if images:
        rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
        if (rows, cols) != (28, 28):
            raise MirrorError(f"dataset mirror {mirror}: {name}: images are {rows}x{cols}, expected 28x28")
    size = 28 * 28 if images else 1
    if len(raw) != header + count * size:
        raise MirrorError(
            f"dataset mirror {mirror}: {name}: header says {count} items but the file holds "
            f"{(len(raw) - header) / size:g}"
        )
    array = np.frombuffer(raw, np.uint8, offset=header)
    return array.reshape(count, 28, 28) if images else array


def check_drop(location: str) -> tuple[str, dict[str, int]]:
    """The digest and split sizes of the custom drop at `location`; MirrorError names a missing or invalid file."""
    files = {role: _read_file(location, name) for role, name in FILES.items()}
    digests, counts, _ = _validate(location, files, allow_custom=True)
    return dataset_digest(digests), counts


def split_stats(images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Class counts and pixel mean/std of one split, from a histogram: no float copy of the images."""
    histogram = np.bincount(images.reshape(-1), minlength=256).astype(np.float64)
    levels = np.arange(256, dtype=np.float64)
    mean = float(histogram @ levels / histogram.sum())
    std = float(np.sqrt(histogram @ (levels - mean) ** 2 / histogram.sum()))
    return {
        "class_counts": [int(c) for c in np.bincount(labels, minlength=10)],
        "pixel_mean": round(mean, 4),
        "pixel_std": round(std, 4),
    }


def _validate(
    mirror: str, files: dict[str, bytes], allow_custom: bool
) -> tuple[dict[str, str], dict[str, int], dict[str, Any]]:
    digests: dict[str, str] = {}
    counts: dict[str, int] = {}
    stats: dict[str, Any] = {}
    for split in ("train", "test"):
        arrays = {}
        for kind in ("images", "labels"):
            role, name = f"{split}-{kind}", FILES[f"{split}-{kind}"]
            raw = _decompress(mirror, name, files[role])
            digests[role] = hashlib.sha256(raw).hexdigest()
            if not allow_custom and digests[role] != CANONICAL_SHA256[role]:
                raise MirrorError(
                    f"dataset mirror {mirror}: {name}: SHA-256 {digests[role][:16]}… does not match "
                    f"the pinned canonical digest {CANONICAL_SHA256[role][:16]}…"
                )
            arrays[kind] = parse_idx(mirror, name, raw, images=kind == "images")
        n_images, n_labels = len(arrays["images"]), len(arrays["labels"])
        if n_images != n_labels:
            raise MirrorError(
                f"dataset mirror {mirror}: {FILES[f'{split}-labels']}: {n_labels} labels for {n_images} images"
            )
        if n_images == 0:
            raise MirrorError(f"dataset mirror {mirror}: {FILES[f'{split}-images']}: holds no images")
        if arrays["labels"].max() > 9:
            bad = int(np.argmax(arrays["labels"] > 9))
            raise MirrorError(
                f"dataset mirror {mirror}: {FILES[f'{split}-labels']}: label {arrays['labels'][bad]} "
                f"at index {bad} is out of range 0..9"
            )
        counts[split] = n_images
        stats[split] = split_stats(arrays["images"], arrays["labels"])
    return digests, counts, stats


@dataclass(frozen=True)
class Dataset:
    digest: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_dataset(uri: str) -> Dataset:
    """The arrays of a dataset written by `fetch_dataset` (train/test images as uint8 [N,28,28])."""
    store = open_store(uri)
    manifest: dict[str, Any] = store.read_json("dataset.json")
    arrays = {}
    for role, name in FILES.items():
        raw = _decompress(uri, name, store.read_bytes(name))
        if hashlib.sha256(raw).hexdigest() != manifest["files"][role]:
            raise UserError(f"dataset {uri}: {name} no longer matches its recorded digest; fetch it again")
        arrays[role] = parse_idx(uri, name, raw, images=role.endswith("images"))
    return Dataset(
        digest=manifest["digest"],
        x_train=arrays["train-images"],
        y_train=arrays["train-labels"],
        x_test=arrays["test-images"],
        y_test=arrays["test-labels"],
    )


def canonical_dataset_uri(store: Store) -> str | None:
    """Where the canonical dataset lives in `store`, if it was fetched."""
    if store.exists(_manifest_key(CANONICAL_DIGEST)):
        return store.uri_of(f"{DATASETS_PREFIX}/{CANONICAL_DIGEST}")
    return None
