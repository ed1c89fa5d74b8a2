"""Real servers on loopback for the remote-data tests: an S3-compatible endpoint (moto's server mode, in its own
process) and a plain HTTP server (``python -m http.server``) over a folder. Nothing listens beyond 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import free_port

# What boto3, s3fs (through fsspec's FSSPEC_<PROTOCOL>_<KWARG> variables) and the aws tools need to reach moto.
_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "avmae-test", "AWS_SECRET_ACCESS_KEY": "avmae-test",
                "AWS_DEFAULT_REGION": "us-east-1"}


def _wait_listening(port: int, process: subprocess.Popen, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {seconds:.0f} s")


@contextmanager
def _serving(command: list[str], port: int, what: str, cwd: Path | None = None) -> Iterator[None]:
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process, what)
        yield
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def s3_server() -> Iterator[dict[str, str]]:
    """moto's S3 server on a free loopback port. Yields the environment a client process needs (credentials and
    the endpoint, also as ``FSSPEC_S3_ENDPOINT_URL`` for s3fs and ``AWS_ENDPOINT_URL`` for boto3); the caller
    applies it (``monkeypatch.setenv``) or passes it to a subprocess."""
    port = int(free_port())
    url = f"http://127.0.0.1:{port}"
    with _serving([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], port, "moto server"):
        yield {**_CREDENTIALS, "AWS_ENDPOINT_URL": url, "FSSPEC_S3_ENDPOINT_URL": url}


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``root`` on a free loopback port; yields its base URL (no trailing /)."""
    port = int(free_port())
    with _serving([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)], port, "http.server", cwd=root):
        yield f"http://127.0.0.1:{port}"


def apply_env(env: dict[str, str], monkeypatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    os.environ.setdefault("NO_PROXY", "127.0.0.1")
