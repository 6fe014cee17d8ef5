"""The object store: bytes under keys, on a local folder (``file://``) or S3 (``s3://bucket/prefix``).

Everything else in gwi addresses data by URL and goes through :func:`open_store`, so a dataset, a run's
checkpoints and its heartbeat live the same way on a laptop folder, MinIO, R2 or AWS.

S3 details follow the AWS conventions users already have: the endpoint comes from
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (MinIO, R2, moto), credentials from the standard chain
(env, profile, instance role). Large objects go multipart through boto3's transfer manager. Every
provider error goes through :func:`_translate` so a user sees "bucket 'x' does not exist", not a
botocore traceback.

Writes are atomic per object: a reader sees either the old bytes or the new ones, never a prefix.
On a folder that is write-to-temp then ``os.replace``; on S3 a PUT (or a completed multipart upload)
is atomic by the service's contract.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

from .errors import StoreError

CHUNK = 8 * 1024 * 1024


def join(*parts: str) -> str:
    """Join key parts with single slashes, ignoring empty parts."""
    out = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return out


class Store(ABC):
    """Bytes under ``/``-separated keys, relative to this store's root URL."""

    url: str

    @abstractmethod
    def child(self, prefix: str) -> "Store":
        """A store rooted at ``prefix`` below this one."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes; :class:`StoreError` when the key is missing."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_file(self, key: str, dest: str | os.PathLike) -> None:
        """Download to ``dest`` atomically: ``dest`` appears only once complete."""

    @abstractmethod
    def put_file(self, src: str | os.PathLike, key: str, *, move: bool = False) -> None:
        """Upload ``src``; with ``move`` the local file may be consumed (renamed) instead of copied."""

    @abstractmethod
    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream an object's bytes (for hashing without a local copy)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys below ``prefix``, relative to this store's root, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete one key; a missing key is not an error."""

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for k in keys:
            self.delete(k)
        return len(keys)

    def key_url(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key.lstrip("/") if key else self.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# --------------------------------------------------------------------------------------------
# Local folder


class FileStore(Store):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.url = "file://" + str(self.root)

    def child(self, prefix: str) -> "FileStore":
        return FileStore(self.root / prefix.strip("/"))

    def path(self, key: str) -> Path:
        p = (self.root / key.lstrip("/")).resolve()
        if p != self.root and self.root not in p.parents:
            raise StoreError(f"key {key!r} escapes the store root {self.root}")
        return p

    def _missing(self, key: str) -> StoreError:
        return StoreError(f"no such object: {self.key_url(key)}")

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            raise self._missing(key) from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise self._missing(key) from None
        except IsADirectoryError:
            raise StoreError(f"{self.key_url(key)} is a folder, expected an object") from None

    def _tmp(self, p: Path) -> Path:
        return p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.partial")

    def put_bytes(self, key: str, data: bytes) -> None:
        p = self.path(key)
        self._mkdir(p.parent)
        tmp = self._tmp(p)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _mkdir(self, d: Path) -> None:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise StoreError(f"permission denied creating {d}") from None
        except FileExistsError:
            raise StoreError(f"{d} exists and is not a folder") from None

    def get_file(self, key: str, dest: str | os.PathLike) -> None:
        src = self.path(key)
        if not src.is_file():
            raise self._missing(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._tmp(dest)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def put_file(self, src: str | os.PathLike, key: str, *, move: bool = False) -> None:
        p = self.path(key)
        self._mkdir(p.parent)
        src = Path(src)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: no such file")
        if move:
            try:
                os.replace(src, p)
                return
            except OSError:
                pass  # another filesystem: fall back to copy
        tmp = self._tmp(p)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, p)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if move:
            src.unlink(missing_ok=True)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            f = open(self.path(key), "rb")
        except FileNotFoundError:
            raise self._missing(key) from None
        with f:
            while chunk := f.read(chunk_size):
                yield chunk

    def list(self, prefix: str = "") -> list[str]:
        base = self.path(prefix) if prefix else self.root
        if base.is_file():
            return [prefix.strip("/")]
        if not base.is_dir():
            return []
        out = []
        for dirpath, _, files in os.walk(base):
            for name in files:
                if name.endswith(".partial"):
                    continue
                out.append(Path(dirpath, name).relative_to(self.root).as_posix())
        return sorted(out)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        n = super().delete_prefix(prefix)
        # drop the empty folders left behind so a deleted dataset leaves no trace
        base = self.path(prefix)
        if base.is_dir() and base != self.root:
            for dirpath, _, _ in sorted(os.walk(base), key=lambda t: -len(t[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        return n


# --------------------------------------------------------------------------------------------
# S3


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


_CLIENTS: dict[tuple, object] = {}


def _s3_client():
    """One boto3 client per (endpoint, process): creating them is slow and they are thread-safe."""
    key = (_endpoint(), os.getpid())
    if key not in _CLIENTS:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:  # pragma: no cover - boto3 is a core dependency
            raise StoreError("s3:// URLs need boto3: pip install boto3") from None
        cfg = Config(
            connect_timeout=10,
            read_timeout=120,
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if _endpoint() else {},
        )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        _CLIENTS[key] = boto3.session.Session().client(
            "s3", endpoint_url=_endpoint(), region_name=region, config=cfg
        )
    return _CLIENTS[key]


def _transfer_config():
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(
        multipart_threshold=64 * 1024 * 1024,
        multipart_chunksize=32 * 1024 * 1024,
        max_concurrency=8,
        use_threads=True,
    )


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = ""):
        if not bucket:
            raise StoreError("s3 URL has no bucket: expected s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def client(self):
        return _s3_client()

    def child(self, prefix: str) -> "S3Store":
        return S3Store(self.bucket, join(self.prefix, prefix))

    def _k(self, key: str) -> str:
        return join(self.prefix, key)

    def _translate(self, exc: Exception, op: str, key: str | None = None) -> StoreError:
        """The one place provider errors become user messages."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        where = self.key_url(key) if key is not None else self.url
        endpoint = _endpoint() or "AWS default endpoint"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"{op} {where}: no AWS credentials found; set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        if isinstance(exc, EndpointConnectionError):
            return StoreError(f"{op} {where}: cannot reach the S3 endpoint {endpoint}")
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if code in ("NoSuchBucket",) or (code in ("404", "NoSuchKey") and not self._bucket_exists()):
                return StoreError(f"{op} {where}: bucket '{self.bucket}' does not exist (endpoint {endpoint})")
            if code in ("404", "NoSuchKey", "NotFound"):
                return StoreError(f"no such object: {where}")
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"):
                return StoreError(
                    f"{op} {where}: access denied ({code}); check the credentials and the bucket policy"
                )
            return StoreError(f"{op} {where}: S3 error {code}: {err.get('Message', exc)}")
        if isinstance(exc, StoreError):
            return exc
        return StoreError(f"{op} {where}: {type(exc).__name__}: {exc}")

    def _bucket_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Exception as e:  # noqa: BLE001 - a 403 means it exists but is not ours
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            return code not in ("404", "NoSuchBucket", "NotFound")

    def _call(self, op: str, key: str | None, fn, *a, **kw):
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - every provider error goes through the translator
            from botocore.exceptions import BotoCoreError, ClientError

            if isinstance(e, (BotoCoreError, ClientError)):
                raise self._translate(e, op, key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
            return True
        except StoreError as e:
            if str(e).startswith("no such object"):
                return False
            raise

    def size(self, key: str) -> int:
        r = self._call("stat", key, self.client.head_object, Bucket=self.bucket, Key=self._k(key))
        return int(r["ContentLength"])

    def get_bytes(self, key: str) -> bytes:
        r = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._k(key))
        return self._call("read", key, r["Body"].read)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._k(key), Body=data)

    def get_file(self, key: str, dest: str | os.PathLike) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            self._call(
                "download", key, self.client.download_file, self.bucket, self._k(key), str(tmp),
                Config=_transfer_config(),
            )
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, src: str | os.PathLike, key: str, *, move: bool = False) -> None:
        src = Path(src)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: no such file")
        self._call(
            "upload", key, self.client.upload_file, str(src), self.bucket, self._k(key),
            Config=_transfer_config(),
        )
        if move:
            src.unlink(missing_ok=True)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        r = self._call("read", key, self.client.get_object, Bucket=self.bucket, Key=self._k(key))
        body = r["Body"]
        try:
            while True:
                chunk = self._call("read", key, body.read, chunk_size)
                if not chunk:
                    break
                yield chunk
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[str]:
        full = self._k(prefix)
        # a trailing slash keeps "datasets/a" from matching "datasets/ab"
        kw = {"Bucket": self.bucket, "Prefix": full + "/" if full else ""}
        base = (self.prefix + "/") if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call("list", prefix, lambda: list(paginator.paginate(**kw)))
        out = [obj["Key"][len(base):] for page in pages for obj in page.get("Contents", [])]
        return sorted(out)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=self._k(key))


# --------------------------------------------------------------------------------------------


def default_store_url() -> str:
    """The embedded default: a folder under ``GWI_HOME`` (``./.gwi``)."""
    home = os.environ.get("GWI_HOME", ".gwi")
    return "file://" + str(Path(home, "store").resolve())


def resolve_url(url: str) -> str:
    """``GWI_STORE_MAP`` (JSON ``{url prefix: replacement}``) serves a store from a mirror, e.g. an
    offline Kaggle kernel reading ``s3://b/runs/...`` from ``/kaggle/input/<dataset>/runs/...``.
    The longest matching prefix wins."""
    raw = os.environ.get("GWI_STORE_MAP")
    if not raw:
        return url
    import json

    try:
        table = json.loads(raw)
    except ValueError:
        raise StoreError(f"GWI_STORE_MAP is not a JSON object: {raw[:200]!r}") from None
    for prefix in sorted(table, key=len, reverse=True):
        p = prefix.rstrip("/")
        if url == p or url.startswith(p + "/"):
            return str(table[prefix]).rstrip("/") + url[len(p):]
    return url


def open_store(url: str | os.PathLike | None = None) -> Store:
    """A store for ``file:///abs``, ``file://rel/path``, a plain path, or ``s3://bucket/prefix``."""
    if url is None:
        url = default_store_url()
    url = resolve_url(str(url))
    if url.startswith("s3://"):
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        return S3Store(bucket, prefix)
    if url.startswith("file://"):
        return FileStore(url[len("file://"):] or ".")
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise StoreError(f"unsupported store URL scheme '{scheme}://' in {url!r}: expected file:// or s3://")
    return FileStore(url)


def split_url(url: str) -> tuple[Store, str]:
    """``s3://b/runs/x/progress.json`` -> (the store at ``s3://b/runs/x``, ``progress.json``)."""
    head, _, name = str(url).rstrip("/").rpartition("/")
    return open_store(head), name


def is_url(s: str | os.PathLike | None) -> bool:
    return s is not None and "://" in str(s)


@contextlib.contextmanager
def staged_output(target: str | None):
    """A local path to write ``target`` to. For a store URL the path is in a scratch folder and,
    when the block succeeds, everything written there (the file, its sidecars, or a folder of
    files) is uploaded beside the URL's last component; on failure nothing is uploaded."""
    if target is None or not is_url(target):
        yield target
        return
    store, name = split_url(target)
    tmp = Path(tempfile.mkdtemp(prefix="gwi-out-"))
    try:
        yield str(tmp / name)
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                store.put_file(p, p.relative_to(tmp).as_posix())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def staged_input(source: str | None):
    """A local copy of a file given as a store URL (a plain path is used as it is)."""
    if source is None or not is_url(source):
        yield source
        return
    store, name = split_url(source)
    tmp = Path(tempfile.mkdtemp(prefix="gwi-in-"))
    try:
        store.get_file(name, tmp / name)
        yield str(tmp / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
