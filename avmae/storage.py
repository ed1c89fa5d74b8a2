"""Where data may live besides a local folder: a URL that fsspec opens (``s3://bucket/prefix``, ``gs://…``,
``https://…``). One home for telling a URL from a path and for turning a storage client's failure (no credentials,
an unreachable endpoint, a missing bucket) into one line that names the URL, so every command says it the same way.

Credentials and endpoints come from the standard places only (AWS_* variables or ~/.aws for S3, fsspec's
FSSPEC_<PROTOCOL>_<OPTION> variables): avmae adds no options of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# The client libraries' own exception families (they are not OSErrors): botocore/aiobotocore (S3), aiohttp (HTTP,
# S3 transport), google (GCS). A failure from one of them is a storage failure, not a bug of avmae.
_CLIENT_MODULES = ("botocore", "aiobotocore", "aiohttp", "google", "gcsfs", "s3fs", "fsspec")
# What a person can do about the common failures, by the words the clients use.
_HINTS = (
    ("credentials", "no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"),
    ("could not connect", "endpoint unreachable (check AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL and the network)"),
    ("connect call failed", "endpoint unreachable (check AWS_ENDPOINT_URL / FSSPEC_S3_ENDPOINT_URL and the network)"),
    ("bucket does not exist", "the bucket does not exist"),
    ("nosuchbucket", "the bucket does not exist"),
    ("access denied", "access denied: the credentials may not use this bucket or prefix"),
    ("forbidden", "access denied: the credentials may not use this bucket or prefix"),
)


class StorageError(OSError):
    """A URL that cannot be used, in one line naming it and what is wrong."""


def is_url(text: Any) -> bool:
    """``s3://b/p``, ``https://h/p``, ``file:///p``: yes; a local path (``shards``, ``/data/x``, ``C:\\x``): no."""
    return isinstance(text, str) and bool(_URL.match(text))


def filesystem_for(url: str) -> tuple[Any, str]:
    """The fsspec file system of ``url`` and the path inside it (``s3://bucket/prefix`` -> (S3FileSystem,
    ``bucket/prefix``)). A fresh instance, not fsspec's cached one: a forked worker must not share its parent's
    connections. An unknown protocol or a missing client package is a StorageError naming the URL."""
    import fsspec
    from fsspec.core import url_to_fs

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
    hint = next((words for key, words in _HINTS if key in lowered), None)
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
