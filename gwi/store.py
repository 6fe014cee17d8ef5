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

Unavailable is not missing. Every S3 call has a connect and a read timeout and botocore's standard
retries; what still fails is sorted by :meth:`S3Store._translate`: no connection, a timeout, a reset,
5xx or throttling is :class:`StoreUnavailable` (transient), and the call is tried again with jittered
exponential backoff until the store's ``patience`` runs out (a week-long run should outlive a
five-minute outage; the process's wait hook meanwhile tells the heartbeat it is waiting, not stuck).
A missing object, a missing bucket or a refusal is a plain :class:`StoreError` at once. Every retried
call is idempotent: downloads land in a fresh temp name per try, a failed multipart upload is aborted
by the transfer manager, and a stream resumes with a ranged GET of the same ETag.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Iterator

from .errors import StoreError, StoreUnavailable

CHUNK = 8 * 1024 * 1024


def join(*parts: str) -> str:
    """Join key parts with single slashes, ignoring empty parts."""
    out = "/".join(p.strip("/") for p in parts if p and p.strip("/"))
    return out


def local_error(what: str, path: str | os.PathLike, e: OSError) -> StoreError:
    """A local file system refusal (full disk, quota, permissions, read-only) as one line naming the
    path: not an outage, so nothing waits for it."""
    name = errno.errorcode.get(e.errno or 0, "")
    return StoreError(f"{what} {path}: {e.strerror or e}" + (f" ({name})" if name else ""))


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
        return p.with_name(f".{p.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")

    def _write(self, dest: Path, fill: Callable[[Path], None], what: str) -> None:
        """``fill`` a temp file beside ``dest``, then rename it over ``dest``: readers see the old
        bytes or the new ones. A full disk or a refused write is a StoreError naming the path."""
        self._mkdir(dest.parent)
        tmp = self._tmp(dest)
        try:
            fill(tmp)
            os.replace(tmp, dest)
        except OSError as e:
            raise local_error(what, dest, e) from None
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        def fill(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())

        self._write(self.path(key), fill, "write")

    def _mkdir(self, d: Path) -> None:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except PermissionError:
            raise StoreError(f"permission denied creating {d}") from None
        except FileExistsError:
            raise StoreError(f"{d} exists and is not a folder") from None
        except OSError as e:
            raise local_error("create folder", d, e) from None

    def get_file(self, key: str, dest: str | os.PathLike) -> None:
        src = self.path(key)
        if not src.is_file():
            raise self._missing(key)
        self._write(Path(dest), lambda tmp: shutil.copyfile(src, tmp), f"copy {self.key_url(key)} to")

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
        self._write(p, lambda tmp: shutil.copyfile(src, tmp), "write")
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
# Waiting out an outage


PATIENCE_ENV = "GWI_STORE_PATIENCE_S"
DEFAULT_PATIENCE_S = 300.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 15.0

_wait_hook: Callable[[str | None], None] | None = None
_waits: dict[int, str] = {}  # one entry per call that is waiting now, oldest first
_waits_lock = threading.Lock()


def set_wait_hook(fn: Callable[[str | None], None] | None):
    """Call ``fn(reason)`` while any store call of this process waits out an outage, and
    ``fn(None)`` once none does (the heartbeat's ``waiting`` field). Returns the previous hook."""
    global _wait_hook
    with _waits_lock:
        prev, _wait_hook = _wait_hook, fn
    return prev


on_wait = set_wait_hook


def _report_wait(token: int, reason: str | None) -> None:
    with _waits_lock:
        before = next(iter(_waits.values()), None)
        if reason is None:
            _waits.pop(token, None)
        else:
            _waits[token] = reason
        now, hook = next(iter(_waits.values()), None), _wait_hook
    if hook is not None and now != before:
        try:
            hook(now)
        except Exception:  # noqa: BLE001 - a broken hook must not turn an outage into a crash
            pass


def resolve_patience(patience: float | None) -> float:
    """``patience``, or ``GWI_STORE_PATIENCE_S`` (default 300) when it is None."""
    if patience is not None:
        return max(0.0, float(patience))
    raw = os.environ.get(PATIENCE_ENV, "").strip()
    if not raw:
        return DEFAULT_PATIENCE_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise StoreError(f"{PATIENCE_ENV}: expected seconds (a number), got {raw!r}") from None


class _Waiter:
    """The bounded wait of one store call: jittered exponential backoff between tries until
    ``patience`` seconds have passed since the call began (or, for a stream, since it last made
    progress), then the last error is raised. No try starts after that; the one in flight ends within
    the client's timeouts, which :func:`_client_limits` sizes from the same patience."""

    def __init__(self, what: str, patience: float | None):
        self.what, self.patience = what, patience
        self.since: float | None = None
        self.start = time.monotonic()
        self.tries = 0

    def failed(self, err: StoreUnavailable) -> None:
        """Sleep before the next try, or raise ``err`` when out of patience."""
        patience = resolve_patience(self.patience)
        now = time.monotonic()
        if self.since is None:
            self.since, self.started = now, time.strftime("%H:%M:%SZ", time.gmtime())
            if patience > 0:
                print(f"gwi: store {self.what} unreachable ({err}); waiting up to {patience:g} s", file=sys.stderr)
        waited = now - self.start
        left = patience - waited
        if left <= 0:
            _report_wait(id(self), None)
            self.since = None  # given up: no longer waiting, and not "reachable again" either
            if patience == 0:
                raise err
            raise StoreUnavailable(f"{err} (still unavailable after waiting {waited:.0f} s; "
                                   f"{PATIENCE_ENV}={patience:g})") from None
        _report_wait(id(self), f"store {self.what} unreachable since {self.started}: {err}")
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** self.tries) * random.uniform(0.5, 1.0)
        self.tries += 1
        time.sleep(min(delay, left))

    def done(self) -> None:
        """The store answered: the wait (if any) is over, and a stream's next wait counts from now."""
        self.start = time.monotonic()
        if self.since is not None:
            _report_wait(id(self), None)
            print(f"gwi: store {self.what} reachable again after {time.monotonic() - self.since:.0f} s",
                  file=sys.stderr)
            self.since, self.tries = None, 0


# --------------------------------------------------------------------------------------------
# S3


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _timeouts() -> tuple[float, float]:
    """(connect, read) seconds; ``GWI_S3_CONNECT_TIMEOUT_S`` / ``GWI_S3_READ_TIMEOUT_S`` override
    the defaults (a test or a chaos run that stalls the store need not wait a minute per try)."""
    out = []
    for name, default in (("GWI_S3_CONNECT_TIMEOUT_S", 5.0), ("GWI_S3_READ_TIMEOUT_S", 60.0)):
        raw = os.environ.get(name, "").strip()
        try:
            out.append(float(raw) if raw else default)
        except ValueError:
            raise StoreError(f"{name}: expected seconds (a number), got {raw!r}") from None
    return out[0], out[1]


_CLIENTS: dict[tuple, object] = {}
QUICK_READ_TIMEOUT_S = 10.0


def _client_limits(patience: float) -> tuple[float, float, int]:
    """(connect timeout, read timeout, botocore's attempts) of a client for calls with ``patience`` s:
    one try (all its attempts) takes at most half of it, so a store that never answers costs about
    the patience. 0 (heartbeats, the scheduler's reads): one short attempt, a beat's worth."""
    connect, read = _timeouts()
    if patience == 0:
        return connect, min(read, QUICK_READ_TIMEOUT_S), 1
    connect, read = min(connect, max(1.0, patience / 4)), min(read, max(1.0, patience / 4))
    # botocore's own attempts absorb a blip within one call; a longer outage is waited out by _Waiter
    return connect, read, max(1, min(3, int(patience / (2 * (connect + read)))))


def _s3_client(patience: float):
    """One boto3 client per (endpoint, limits, process): creating them is slow and they are
    thread-safe. Its timeouts and attempts follow from the calls' ``patience``."""
    limits = _client_limits(patience)
    key = (_endpoint(), limits, os.getpid())
    if key not in _CLIENTS:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:  # pragma: no cover - boto3 is a core dependency
            raise StoreError("s3:// URLs need boto3: pip install boto3") from None
        connect, read, attempts = limits
        cfg = Config(
            connect_timeout=connect,
            read_timeout=read,
            retries={"total_max_attempts": attempts, "mode": "standard"},
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


# S3 error codes that mean "busy or broken for now", whatever the HTTP status says
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "TooManyRequests", "RequestTimeout",
                    "RequestLimitExceeded", "ServiceUnavailable", "InternalError", "503", "500", "429"}


def _provider_error(exc: BaseException) -> BaseException | None:
    """The botocore, urllib3 or socket error behind ``exc`` (boto3's transfer manager wraps them:
    ``S3UploadFailedError`` chains the ClientError, ``RetriesExceededError`` keeps the last one), or
    None for an error that is not the provider's."""
    import urllib3.exceptions
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.exceptions import RetriesExceededError

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (BotoCoreError, ClientError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)):
            return exc
        exc = exc.last_exception if isinstance(exc, RetriesExceededError) else (exc.__cause__ or exc.__context__)
    return None


def _is_transient(exc: BaseException) -> bool:
    """Worth waiting for: no connection, a timeout, a reset mid-body, 5xx, throttling."""
    import urllib3.exceptions
    from botocore.exceptions import ClientError, HTTPClientError, IncompleteReadError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in _TRANSIENT_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError, ConnectionError,
                            TimeoutError, urllib3.exceptions.ProtocolError, urllib3.exceptions.TimeoutError))


class S3Store(Store):
    def __init__(self, bucket: str, prefix: str = "", *, patience: float | None = None):
        if not bucket:
            raise StoreError("s3 URL has no bucket: expected s3://BUCKET[/PREFIX]")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.patience = patience
        self.url = f"s3://{bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def client(self):
        return _s3_client(resolve_patience(self.patience))

    def child(self, prefix: str) -> "S3Store":
        return S3Store(self.bucket, join(self.prefix, prefix), patience=self.patience)

    def _k(self, key: str) -> str:
        return join(self.prefix, key)

    def _translate(self, exc: BaseException, op: str, key: str | None = None) -> StoreError:
        """The one place provider errors become user messages, and where "unavailable" (wait and
        retry: :class:`StoreUnavailable`) is told from "refused or missing" (:class:`StoreError`)."""
        from botocore.exceptions import (
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        if isinstance(exc, StoreError):
            return exc
        where = self.key_url(key) if key is not None else self.url
        endpoint = _endpoint() or "AWS default endpoint"
        exc = _provider_error(exc) or exc
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StoreError(
                f"{op} {where}: no AWS credentials found; set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
            )
        if isinstance(exc, EndpointConnectionError):
            return StoreUnavailable(f"{op} {where}: cannot reach the S3 endpoint {endpoint}")
        if _is_transient(exc):
            if isinstance(exc, ClientError):
                err = exc.response.get("Error", {})
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                return StoreUnavailable(f"{op} {where}: S3 busy or failing (HTTP {status}, "
                                        f"{err.get('Code', '?')}: {err.get('Message', exc)})")
            return StoreUnavailable(f"{op} {where}: connection to the S3 endpoint {endpoint} failed "
                                    f"({type(exc).__name__}: {exc})")
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
            if code in ("412", "PreconditionFailed"):
                return StoreError(f"{op} {where}: the object changed while it was being read")
            return StoreError(f"{op} {where}: S3 error {code}: {err.get('Message', exc)}")
        return StoreError(f"{op} {where}: {type(exc).__name__}: {exc}")

    def _bucket_exists(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return True
        except Exception as e:  # noqa: BLE001 - a 403 means it exists but is not ours
            code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
            return code not in ("404", "NoSuchBucket", "NotFound")

    def _once(self, op: str, key: str | None, fn, *a, **kw):
        """``fn`` once, its provider errors translated; other errors (ours, the caller's) pass."""
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - every provider error goes through the translator
            if isinstance(e, StoreError) or _provider_error(e) is not None:
                raise self._translate(e, op, key) from None
            raise

    def _waiter(self) -> _Waiter:
        return _Waiter(f"s3://{self.bucket}", self.patience)

    def _call(self, op: str, key: str | None, fn, *a, **kw):
        """``fn`` through the translator, tried again through an outage for up to ``patience`` s.
        Only idempotent calls come here (a whole GET, PUT, HEAD, LIST, DELETE or transfer)."""
        waiter = self._waiter()
        try:
            while True:
                try:
                    return self._once(op, key, fn, *a, **kw)
                except StoreUnavailable as e:
                    waiter.failed(e)
        finally:
            # also when the store answers with an error after an outage (a missing key): a wait left
            # registered would show as "waiting" in this process's heartbeat for the rest of its life
            waiter.done()

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
        def get():
            # the GET and its body are one try: a reset mid-body is retried from the start
            return self.client.get_object(Bucket=self.bucket, Key=self._k(key))["Body"].read()

        return self._call("read", key, get)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("write", key, self.client.put_object, Bucket=self.bucket, Key=self._k(key), Body=data)

    def get_file(self, key: str, dest: str | os.PathLike) -> None:
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)

        def download():
            # each try downloads to a fresh temp name: a retried transfer never appends to a stale one
            tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
            try:
                self.client.download_file(self.bucket, self._k(key), str(tmp), Config=_transfer_config())
                os.replace(tmp, dest)
            except OSError as e:
                if _provider_error(e) is None:  # the local disk refused (full, read-only): no outage
                    raise local_error(f"download {self.key_url(key)} to", dest, e) from None
                raise
            finally:
                tmp.unlink(missing_ok=True)

        self._call("download", key, download)

    def put_file(self, src: str | os.PathLike, key: str, *, move: bool = False) -> None:
        src = Path(src)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: no such file")
        # a failed multipart upload is aborted by the transfer manager, so a retry starts clean
        self._call(
            "upload", key, self.client.upload_file, str(src), self.bucket, self._k(key),
            Config=_transfer_config(),
        )
        if move:
            src.unlink(missing_ok=True)

    def iter_chunks(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Stream the object. A connection lost mid-stream is waited out like any call, and the
        stream resumes where it stopped (a ranged GET pinned to the first response's ETag, so the
        bytes are one object's even if it is overwritten meanwhile: then a clear error)."""
        waiter, done, etag, total = self._waiter(), 0, None, None
        try:
            while True:
                try:
                    kw = {"Range": f"bytes={done}-", "IfMatch": etag} if etag else {}
                    if total is not None and done >= total:
                        break
                    r = self._once("read", key, self.client.get_object, Bucket=self.bucket, Key=self._k(key), **kw)
                    if etag is None:
                        etag, total = r.get("ETag"), int(r["ContentLength"])
                    body = r["Body"]
                    try:
                        while chunk := self._once("read", key, body.read, chunk_size):
                            waiter.done()
                            done += len(chunk)
                            yield chunk
                    finally:
                        body.close()
                    break
                except StoreUnavailable as e:
                    waiter.failed(e)
        finally:
            waiter.done()

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
    """The embedded default: the folder ``store`` in gwi's home (:func:`gwi.paths.gwi_home`)."""
    from .paths import gwi_home

    return "file://" + str(gwi_home() / "store")


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


def open_store(url: str | os.PathLike | None = None, *, patience: float | None = None) -> Store:
    """A store for ``file:///abs``, ``file://rel/path``, a plain path, or ``s3://bucket/prefix``.

    ``patience``: seconds an S3 call keeps trying through an outage (unreachable, 5xx, throttled,
    timed out, reset) before it raises :class:`StoreUnavailable`; None reads ``GWI_STORE_PATIENCE_S``
    (default 300). Workers keep the default; a loop that must not block (the scheduler, a
    heartbeat) passes 0."""
    if url is None:
        url = default_store_url()
    url = resolve_url(str(url))
    if url.startswith("s3://"):
        rest = url[len("s3://"):]
        bucket, _, prefix = rest.partition("/")
        return S3Store(bucket, prefix, patience=patience)
    if url.startswith("file://"):
        return FileStore(url[len("file://"):] or ".")
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise StoreError(f"unsupported store URL scheme '{scheme}://' in {url!r}: expected file:// or s3://")
    return FileStore(url)


def split_url(url: str, *, patience: float | None = None) -> tuple[Store, str]:
    """``s3://b/runs/x/progress.json`` -> (the store at ``s3://b/runs/x``, ``progress.json``)."""
    head, _, name = str(url).rstrip("/").rpartition("/")
    return open_store(head, patience=patience), name


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


class Resumable:
    """What :func:`resumable_output` yields: ``path``, the local file to write, and :meth:`save`,
    which sends the work files (``path`` + each suffix) to the store as they are now."""

    def __init__(self, path: str, store: Store | None, name: str, suffixes: tuple[str, ...]):
        self.path, self.store, self.name, self.suffixes = path, store, name, suffixes

    def _files(self):
        return [(Path(self.path + sfx), self.name + sfx) for sfx in self.suffixes]

    def save(self) -> None:
        if self.store is None:
            return
        for local, key in self._files():
            if local.is_file():
                self.store.put_file(local, key)

    def finish(self) -> None:
        """Upload the output and the work files the command kept; delete those it removed (done)."""
        if self.store is None:
            return
        if Path(self.path).is_file():
            self.store.put_file(self.path, self.name)
        for local, key in self._files():
            if local.is_file():
                self.store.put_file(local, key)
            elif self.store.exists(key):
                self.store.delete(key)


@contextlib.contextmanager
def resumable_output(target: str, suffixes: tuple[str, ...]):
    """A :class:`Resumable` for a command that writes ``target`` bit by bit and resumes from its work
    files (``target`` + each suffix, e.g. ``.partial``). For a store URL, work files already in the
    store are fetched first (an earlier attempt, maybe on another machine, got that far), the
    command calls ``save()`` after each unit of work (all a killed attempt leaves is what it
    saved), and when the block ends without an exception the output goes up and the work files
    follow the local ones (kept, or deleted when the command removed them). A local path is used as
    it is."""
    if not is_url(target):
        yield Resumable(str(target), None, "", suffixes)
        return
    store, name = split_url(target)
    tmp = Path(tempfile.mkdtemp(prefix="gwi-out-"))
    try:
        r = Resumable(str(tmp / name), store, name, suffixes)
        for local, key in r._files():
            if store.exists(key):
                store.get_file(key, local)
        yield r
        r.finish()
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
