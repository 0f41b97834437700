"""One interface over `file://` and `s3://` locations.

Objects are written once (`write_bytes` refuses to overwrite); the only mutable objects are
pointers such as registry aliases, changed by `replace_bytes` in a single atomic write.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import tempfile
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

from steps.errors import UserError

if TYPE_CHECKING:
    from minio import Minio
    from minio.datatypes import Object

T = TypeVar("T")

_TMP_PREFIX = ".tmp-"


class NotFound(UserError):
    """The object does not exist."""


class ObjectExists(UserError):
    """A write-once object is already there."""


class Store(ABC):
    """A location holding objects by `/`-separated keys, rooted at `uri`."""

    uri: str

    @abstractmethod
    def child(self, prefix: str) -> Store:
        """The store rooted at `prefix` below this one."""

    @abstractmethod
    def read_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix` (recursive, sorted), relative to this store's root."""

    @abstractmethod
    def _put(self, key: str, data: bytes, replace: bool, metadata: dict[str, str] | None = None) -> None: ...

    @abstractmethod
    def version(self, key: str) -> str | None:
        """A token that changes whenever `key` is written again (None: no such object)."""

    def user_metadata(self, key: str) -> dict[str, str]:
        """The object's user metadata (S3 `x-amz-meta-*`, names lower-case, prefix removed); files have none."""
        return {}

    def uri_of(self, key: str) -> str:
        return f"{self.uri.rstrip('/')}/{key}" if key else self.uri

    def write_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> None:
        """Create `key` (with S3 user metadata, if any); refuses to overwrite an existing object."""
        self._put(key, data, replace=False, metadata=metadata)

    def replace_bytes(self, key: str, data: bytes) -> None:
        """Atomically create or replace `key` (readers see the old or the new bytes, never a mix)."""
        self._put(key, data, replace=True)

    def read_json(self, key: str) -> Any:
        try:
            return json.loads(self.read_bytes(key))
        except json.JSONDecodeError as exc:
            raise UserError(f"{self.uri_of(key)} is not valid JSON: {exc}") from exc

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, _json_bytes(value))

    def replace_json(self, key: str, value: Any) -> None:
        self.replace_bytes(key, _json_bytes(value))

    def upload_dir(self, local: Path, prefix: str) -> builtins.list[str]:  # `list` is a method here
        """Write every file below `local` under `prefix` (write-once); returns the keys written."""
        keys = []
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            key = f"{prefix}/{path.relative_to(local).as_posix()}"
            self.write_bytes(key, path.read_bytes())
            keys.append(key)
        return keys

    def local_dir(self, prefix: str) -> Path:
        """A local directory with the objects under `prefix`: a temporary copy for a remote store."""
        return self.download_dir(prefix, Path(tempfile.mkdtemp(prefix="fashion-pipeline-")))

    def download_dir(self, prefix: str, local: Path) -> Path:
        """Copy every object under `prefix` into `local`, keeping relative paths."""
        keys = self.list(prefix)
        if not keys:
            raise NotFound(f"nothing found at {self.uri_of(prefix)}")
        for key in keys:
            target = local / key[len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read_bytes(key))
        return local


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


class FileStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.uri = root.as_uri()

    def child(self, prefix: str) -> FileStore:
        return FileStore(self.root / prefix)

    def _path(self, key: str) -> Path:
        return self.root / key if key else self.root

    def local_dir(self, prefix: str) -> Path:
        if not self._path(prefix).is_dir():
            raise NotFound(f"nothing found at {self.uri_of(prefix)}")
        return self._path(prefix)

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise NotFound(f"not found: {self.uri_of(key)}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def version(self, key: str) -> str | None:
        try:
            stat = self._path(key).stat()
        except OSError:
            return None
        return f"{stat.st_ino}-{stat.st_mtime_ns}-{stat.st_size}"

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(_TMP_PREFIX)
        )

    def _put(self, key: str, data: bytes, replace: bool, metadata: dict[str, str] | None = None) -> None:
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write to store {self.uri}: {exc.strerror}") from exc
        tmp = final.with_name(f"{_TMP_PREFIX}{final.name}-{uuid.uuid4().hex}")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            if replace:
                os.replace(tmp, final)
            else:
                # link() fails if the target exists: an atomic create-once.
                try:
                    os.link(tmp, final)
                except FileExistsError as exc:
                    raise ObjectExists(
                        f"refusing to overwrite {self.uri_of(key)}: store objects are written once"
                    ) from exc
        finally:
            tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class S3Settings:
    endpoint: str
    secure: bool
    access_key: str | None
    secret_key: str | None

    @classmethod
    def from_env(cls) -> S3Settings:
        """Endpoint and credentials from the usual variables (as MinIO, boto and KServe read them)."""
        raw = os.environ.get("S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
        if not raw:
            raise UserError(
                "s3:// store needs an endpoint: set S3_ENDPOINT (e.g. http://127.0.0.1:9000) "
                "and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
            )
        parsed = urlparse(raw if "://" in raw else f"//{raw}")
        if parsed.scheme:
            secure = parsed.scheme == "https"
        else:
            secure = os.environ.get("S3_USE_HTTPS", "1") not in ("0", "false", "False")
        return cls(
            endpoint=parsed.netloc,
            secure=secure,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
        )


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str, settings: S3Settings, client: Minio | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client or _minio_client(settings)

    def child(self, prefix: str) -> S3Store:
        return S3Store(self.bucket, self._name(prefix), self.settings, self._client)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}".strip("/") if self.prefix else key

    def _call(self, what: str, key: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise NotFound(f"not found: {self.uri_of(key)}") from exc
            if exc.code == "NoSuchBucket":
                raise UserError(
                    f"bucket {self.bucket!r} does not exist at {self.settings.endpoint}: "
                    f"create it first (mc mb <alias>/{self.bucket})"
                ) from exc
            raise UserError(f"S3 {what} {self.uri_of(key)} failed: {exc.code}: {exc.message}") from exc
        except HTTPError as exc:
            raise UserError(
                f"cannot reach S3 endpoint {self.settings.endpoint} to {what} {self.uri_of(key)}: "
                f"{exc}; check S3_ENDPOINT"
            ) from exc

    def read_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            response = self._client.get_object(self.bucket, self._name(key))
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return self._call("read", key, get)

    def exists(self, key: str) -> bool:
        return self.version(key) is not None

    def _stat(self, key: str) -> Object | None:
        try:
            return self._call("stat", key, self._client.stat_object, self.bucket, self._name(key))
        except NotFound:
            return None

    def version(self, key: str) -> str | None:
        stat = self._stat(key)
        return None if stat is None else f"{stat.etag}-{stat.last_modified.isoformat() if stat.last_modified else ''}"

    def user_metadata(self, key: str) -> dict[str, str]:
        stat = self._stat(key)
        prefix = "x-amz-meta-"
        if stat is None or not stat.metadata:
            return {}
        return {k.lower()[len(prefix) :]: v for k, v in stat.metadata.items() if k.lower().startswith(prefix)}

    def list(self, prefix: str = "") -> list[str]:
        name = self._name(prefix)
        start = f"{self.prefix}/" if self.prefix else ""
        objects = self._call(
            "list",
            prefix,
            lambda: list(self._client.list_objects(self.bucket, prefix=name, recursive=True)),
        )
        keys = [o.object_name[len(start) :] for o in objects if not o.is_dir]
        # A prefix match is textual in S3; keep only keys below `prefix` as a directory.
        if prefix:
            keys = [k for k in keys if k == prefix or k.startswith(prefix.rstrip("/") + "/")]
        return sorted(keys)

    def _put(self, key: str, data: bytes, replace: bool, metadata: dict[str, str] | None = None) -> None:
        # A single PUT is atomic in S3: readers see the old object or the new one.
        if not replace and self.exists(key):
            raise ObjectExists(f"refusing to overwrite {self.uri_of(key)}: store objects are written once")
        self._call(
            "write",
            key,
            self._client.put_object,
            self.bucket,
            self._name(key),
            io.BytesIO(data),
            len(data),
            metadata=metadata or None,
        )


def _minio_client(settings: S3Settings) -> Minio:
    import urllib3
    from minio import Minio

    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5, read=120),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[502, 503, 504]),
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=settings.secure,
        http_client=http,
    )


def open_store(uri: str) -> Store:
    """A store for `file:///path`, a plain local path, or `s3://bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise UserError(f"store URI {uri!r} has no bucket: use s3://BUCKET/PREFIX")
        return S3Store(parsed.netloc, parsed.path, S3Settings.from_env())
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise UserError(f"store URI {uri!r}: file:// URIs must be absolute (file:///path)")
        return FileStore(Path(unquote(parsed.path)))
    if parsed.scheme == "":
        return FileStore(Path(uri).expanduser().resolve())
    raise UserError(f"unsupported store URI {uri!r}: use file:///path, a local path, or s3://bucket/prefix")
