"""Where data may live besides a local folder: a URL that fsspec opens (``s3://bucket/prefix``, ``gs://…``,
``https://…``) or a webdataset ``pipe:`` command. One home for telling a URL from a path (is_url, root_of) and for
turning a storage client's failure (no credentials, an unreachable endpoint, a missing bucket) into one line that
names the URL and a hint fit for its protocol, so every command says it the same way.

Credentials and endpoints come from the standard places only (AWS_* variables or ~/.aws for S3, fsspec's
FSSPEC_<PROTOCOL>_<OPTION> variables). The one thing avmae sets itself is how long a read may wait: a connect and a
read timeout per request and a bounded number of further tries with backoff (StorageLimits, the run config's
``data.storage_timeout_s`` / ``data.storage_retries``). Without them a store that accepts a connection and never
answers holds a reader for aiohttp's default of five minutes per request (aiohttp's ClientTimeout(total=300)), and a
store restarting for a few seconds ends a run.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
PIPE = "pipe:"
# The client libraries' own exception families (they are not OSErrors): botocore/aiobotocore (S3), aiohttp (HTTP,
# S3 transport), google (GCS). A failure from one of them is a storage failure, not a bug of avmae.
_CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "google", "gcsfs", "s3fs", "fsspec")
# What a person can do about the common failures, by the words the clients use and the URL's protocol (an http URL
# has no AWS endpoint or bucket to check). A protocol of None: any.
_S3 = ("s3", "s3a")
_ENDPOINT = "endpoint unreachable (check AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL and the network)"
_SERVER = "server unreachable (check the host, the port and the network)"
_HINTS = (
    ("credentials", _S3, "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
    ("credentials", ("gs", "gcs"), "no credentials found: set GOOGLE_APPLICATION_CREDENTIALS, or run gcloud auth "
                                   "application-default login"),
    ("could not connect", _S3, _ENDPOINT),
    ("connect call failed", _S3, _ENDPOINT),
    ("could not connect", None, _SERVER),
    ("connect call failed", None, _SERVER),
    ("cannot connect to host", None, _SERVER),
    ("connection refused", None, _SERVER),
    ("bucket does not exist", None, "the bucket does not exist"),
    ("nosuchbucket", None, "the bucket does not exist"),
    ("access denied", None, "access denied: the credentials may not use this bucket or prefix"),
    ("forbidden", _S3 + ("gs", "gcs"), "access denied: the credentials may not use this bucket or prefix"),
    ("forbidden", None, "access denied (HTTP 403)"),
)


class StorageError(OSError):
    """A URL that cannot be used, in one line naming it and what is wrong."""


@dataclass(frozen=True)
class StorageLimits:
    """How long one read of a remote file may wait, and how often it is tried again."""

    timeout_s: float = 60.0  # to connect, and between two received chunks of an answer
    retries: int = 3  # further tries of a request that timed out or found the store unreachable
    backoff_s: float = 0.5  # the wait before the first further try; doubled each time, at most _MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ValueError(f"data.storage_timeout_s must be > 0, not {self.timeout_s!r}")
        if not (isinstance(self.retries, int) and self.retries >= 0):
            raise ValueError(f"data.storage_retries must be a whole number >= 0, not {self.retries!r}")


_MAX_BACKOFF_S = 30.0
_limits = StorageLimits()
_retries_made = 0  # further tries this process made: what a test or a report can count


def set_storage_limits(timeout_s: float, retries: int) -> None:
    """The limits of every later read in this process (and in worker processes forked after this call)."""
    global _limits
    _limits = StorageLimits(timeout_s, retries, _limits.backoff_s)


def storage_limits() -> StorageLimits:
    return _limits


def retries_made() -> int:
    """How many further tries the reads of this process have made since it started."""
    return _retries_made


# Failures that say nothing about the file, only that the store did not answer in time or could not be reached: they
# are tried again, and never read as "not found" (fsspec's HTTP info() raises FileNotFoundError for any failure, a
# refused connection included, with the real cause chained: fsspec/implementations/http.py HTTPFileSystem._info).
# By class name, so that no client package has to be imported to test for its exceptions: aiohttp (HTTP, S3 and GCS
# transport), botocore (S3), urllib3 / requests (GCS credentials).
_TIMEOUT_NAMES = {"TimeoutError", "FSTimeoutError", "ServerTimeoutError", "ConnectTimeoutError", "ReadTimeoutError",
                  "ConnectTimeout", "ReadTimeout"}
_UNREACHABLE_NAMES = {"ConnectionError", "ClientConnectionError", "ClientPayloadError", "EndpointConnectionError",
                      "ConnectionClosedError", "ProtocolError", "IncompleteRead", "RemoteDisconnected"}
_UNAVAILABLE_STATUS = (500, 502, 503, 504)  # a store or its proxy restarting answers these for a while


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _transient_link(err: BaseException) -> tuple[str, BaseException] | None:
    for link in _chain(err):
        names = {cls.__name__ for cls in type(link).__mro__}
        if names & _TIMEOUT_NAMES:
            return "timed out", link
        if names & _UNREACHABLE_NAMES:
            return "unreachable", link
        if getattr(link, "status", None) in _UNAVAILABLE_STATUS and "ClientResponseError" in names:
            return "unreachable", link
    return None


def transient_kind(err: BaseException) -> str | None:
    """"timed out" or "unreachable" when ``err`` (or an error it was raised from) says the store did not answer in
    time or could not be reached; None when it says something about the file or the request."""
    found = _transient_link(err)
    return found[0] if found else None


class Retries:
    """The tries of one request to ``url``: ``failed(err)`` re-raises an error that is not transient, waits and
    returns when another try is due, and raises one StorageError ("URL: timed out" / "URL: unreachable", the tries
    made, the limits and the last error) once they are spent."""

    def __init__(self, url: str, limits: StorageLimits | None = None):
        self.url, self.limits = url, limits or _limits
        self.tries = 0
        self.started = time.monotonic()

    def failed(self, err: BaseException) -> None:
        global _retries_made
        found = _transient_link(err)
        if found is None:
            raise err
        kind, link = found
        self.tries += 1
        limits = self.limits
        if self.tries > limits.retries:
            cause = f"{type(link).__name__}: {' '.join(str(link).split())}".rstrip(": ")
            raise StorageError(f"{self.url}: {kind} after {self.tries} tries in {time.monotonic() - self.started:.1f} s "
                               f"(data.storage_timeout_s={limits.timeout_s:g}, data.storage_retries="
                               f"{limits.retries}; {cause})") from err
        wait = min(limits.backoff_s * 2 ** (self.tries - 1), _MAX_BACKOFF_S)
        _retries_made += 1
        log.warning("%s: %s (try %d of %d); trying again in %.1f s", self.url, kind, self.tries, limits.retries + 1,
                    wait)
        time.sleep(wait)


def with_retries(url: str, action: Callable[[], T]) -> T:
    """``action()``, tried again after a timeout or an unreachable store within the limits (Retries)."""
    retries = Retries(url)
    while True:
        try:
            return action()
        except Exception as err:  # noqa: BLE001 -- Retries.failed re-raises all but the transient ones
            retries.failed(err)


def read_options(scheme: str, limits: StorageLimits) -> dict[str, Any]:
    """The client options that bound each request by ``limits.timeout_s`` and leave the retrying to Retries (one
    loop that counts and names them), per protocol:
    - http(s): fsspec's HTTPFileSystem passes ``client_kwargs`` to aiohttp.ClientSession; aiohttp.ClientTimeout's
      ``sock_connect`` / ``sock_read`` bound the connect and each wait for bytes (docs.aiohttp.org, "Timeouts");
    - s3: s3fs passes ``config_kwargs`` to botocore.config.Config (``connect_timeout``, ``read_timeout``,
      ``retries={"total_max_attempts": 1}``: botocore tries once);
    - gs: gcsfs's ``requests_timeout`` is the aiohttp timeout of each request. gcsfs also retries a failed request
      up to 6 times itself (gcsfs/retry.py retry_request, fixed when the class is defined), within Retries' tries."""
    timeout = limits.timeout_s
    if scheme in ("http", "https"):
        import aiohttp

        return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout,
                                                                    sock_read=timeout)}}
    if scheme in _S3:
        return {"config_kwargs": {"connect_timeout": timeout, "read_timeout": timeout,
                                  "retries": {"total_max_attempts": 1}}}
    if scheme in ("gs", "gcs"):
        return {"requests_timeout": timeout}
    return {}


def is_url(text: Any) -> bool:
    """Whether ``text`` names a location that is not a local path: an fsspec URL (``s3://b/p``, ``https://h/p``,
    ``file:///p``) or a webdataset ``pipe:`` command (is_pipe); a local path (``shards``, ``/data/x``, ``C:\\x``):
    no. The one test of "remote or local" for every layer."""
    return isinstance(text, str) and (bool(_URL.match(text)) or text.startswith(PIPE))


def is_pipe(text: Any) -> bool:
    """A webdataset ``pipe:`` command (``pipe:aws s3 cp s3://b/{} -``), read through a shell, not a file system."""
    return isinstance(text, str) and text.startswith(PIPE)


def root_of(text: str | Path) -> str | Path:
    """A location as given on a command line or in a config: a URL or pipe: command stays text, else a Path."""
    return text if is_url(text) else Path(text)


def protocol(url: str) -> str:
    """``s3`` of ``s3://b/p``, ``pipe`` of a pipe: command, ``file`` of a local path."""
    if is_pipe(url):
        return "pipe"
    return url.split("://", 1)[0].lower() if _URL.match(url) else "file"


def filesystem_for(url: str, options: dict[str, Any] | None = None) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it (``s3://bucket/prefix`` -> (S3FileSystem,
    ``bucket/prefix``)), made with the client ``options`` (read_options). A fresh instance, not fsspec's cached one:
    a forked worker must not share its parent's connections. An unknown protocol or a missing client package is a
    StorageError naming the URL."""
    import fsspec
    from fsspec.core import url_to_fs

    if is_pipe(url):
        raise StorageError(f"{url}: a pipe: command is read through its shell command, not a file system; "
                           "use a folder or a URL (s3://, gs://, https://) here")
    try:
        filesystem, path = url_to_fs(url, skip_instance_cache=True, **(options or {}))
    except (ImportError, ValueError) as err:
        raise StorageError(f"{url}: cannot open this URL ({err})") from None
    if not isinstance(filesystem, fsspec.AbstractFileSystem):  # pragma: no cover - fsspec always returns one
        raise StorageError(f"{url}: not a file system URL")
    if options and protocol(url) in _S3:
        filesystem.retries = 1  # s3fs's own loop (s3fs/core.py _error_wrapper) tries once: Retries counts the rest
    return filesystem, path.rstrip("/")


def describe_failure(url: str, err: BaseException) -> str:
    """One line: the URL, what is wrong in words a person can act on, and the client's own message."""
    message = str(err) or type(err).__name__
    lowered = f"{type(err).__name__} {message}".lower()
    scheme = protocol(url)
    hint = next((words for key, protocols, words in _HINTS
                 if key in lowered and (protocols is None or scheme in protocols)), None)
    if hint is None and transient_kind(err):
        hint = transient_kind(err)
    if hint is None and isinstance(err, FileNotFoundError):
        hint = "not found"
    return f"{url}: {hint or 'storage request failed'} ({type(err).__name__}: {message})"


def is_storage_failure(err: BaseException) -> bool:
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in _CLIENT_MODULES


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a storage client's failure inside the block into a StorageError naming ``url``; other errors pass."""
    try:
        yield
    except StorageError:
        raise
    except Exception as err:
        if not is_storage_failure(err):
            raise
        raise StorageError(describe_failure(url, err)) from err


_FILESYSTEMS: dict[tuple[Any, ...], Any] = {}


def filesystem_of(location: str) -> tuple[Any, str]:
    """The fsspec file system of ``location`` and the path in it, its requests bounded by the StorageLimits: one
    instance per protocol, limits and process (a client costs ~0.3 s to set up; a forked worker makes its own, as
    filesystem_for intends)."""
    settings = tuple(sorted((k, v) for k, v in os.environ.items()
                            if k.startswith(("AWS_", "FSSPEC_", "GOOGLE_", "STORAGE_EMULATOR_HOST"))))
    scheme = location.split("://", 1)[0]
    key = (os.getpid(), scheme, settings, _limits)  # new credentials, endpoint or limits: a new client
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = filesystem_for(location, read_options(scheme.lower(), _limits))[0]
    filesystem = _FILESYSTEMS[key]
    return filesystem, filesystem._strip_protocol(location).rstrip("/")


def is_missing(err: BaseException) -> bool:
    """A file that is not there (a 404, a missing key), not a store that could not be asked."""
    return isinstance(err, FileNotFoundError) and transient_kind(err) is None


@contextmanager
def missing_or_storage_errors(location: str) -> Iterator[None]:
    """storage_errors, except that a file that is not there (a 404, a missing key) stays a FileNotFoundError."""
    try:
        with storage_errors(location):
            yield
    except StorageError as err:
        if err.__cause__ is not None and is_missing(err.__cause__):
            raise FileNotFoundError(f"{location}: not found") from None
        raise
