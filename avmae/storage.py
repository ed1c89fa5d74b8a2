"""Where data may live besides a local folder: a URL that fsspec opens (``s3://bucket/prefix``, ``gs://…``,
``https://…``) or a webdataset ``pipe:`` command. One home for telling a URL from a path (is_url, root_of) and for
turning a storage client's failure (no credentials, an unreachable endpoint, a missing bucket) into one line that
names the URL and a hint fit for its protocol, so every command says it the same way.

Credentials and endpoints come from the standard places only (AWS_* variables or ~/.aws for S3, fsspec's
FSSPEC_<PROTOCOL>_<OPTION> variables): avmae adds no options of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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


def filesystem_for(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it (``s3://bucket/prefix`` -> (S3FileSystem,
    ``bucket/prefix``)). A fresh instance, not fsspec's cached one: a forked worker must not share its parent's
    connections. An unknown protocol or a missing client package is a StorageError naming the URL."""
    import fsspec
    from fsspec.core import url_to_fs

    if is_pipe(url):
        raise StorageError(f"{url}: a pipe: command is read through its shell command, not a file system; "
                           "use a folder or a URL (s3://, gs://, https://) here")
    try:
        filesystem, path = url_to_fs(url, skip_instance_cache=True)
    except (ImportError, ValueError) as err:
        raise StorageError(f"{url}: cannot open this URL ({err})") from None
    if not isinstance(filesystem, fsspec.AbstractFileSystem):  # pragma: no cover - fsspec always returns one
        raise StorageError(f"{url}: not a file system URL")
    return filesystem, path.rstrip("/")


def describe_failure(url: str, err: BaseException) -> str:
    """One line: the URL, what is wrong in words a person can act on, and the client's own message."""
    message = str(err) or type(err).__name__
    lowered = f"{type(err).__name__} {message}".lower()
    scheme = protocol(url)
    hint = next((words for key, protocols, words in _HINTS
                 if key in lowered and (protocols is None or scheme in protocols)), None)
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
    """The fsspec file system of ``location`` and the path in it: one instance per protocol and process (a client
    costs ~0.3 s to set up; a forked worker makes its own, as filesystem_for intends)."""
    settings = tuple(sorted((k, v) for k, v in os.environ.items()
                            if k.startswith(("AWS_", "FSSPEC_", "GOOGLE_", "STORAGE_EMULATOR_HOST"))))
    key = (os.getpid(), location.split("://", 1)[0], settings)  # new credentials or endpoint: a new client
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = filesystem_for(location)[0]
    filesystem = _FILESYSTEMS[key]
    return filesystem, filesystem._strip_protocol(location).rstrip("/")


@contextmanager
def missing_or_storage_errors(location: str) -> Iterator[None]:
    """storage_errors, except that a file that is not there (a 404, a missing key) stays a FileNotFoundError."""
    try:
        with storage_errors(location):
            yield
    except StorageError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            raise FileNotFoundError(f"{location}: not found") from None
        raise
