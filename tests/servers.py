"""Real servers on loopback for the remote-data tests: an S3-compatible endpoint (moto's server mode, in its own
process), a GCS endpoint (gcp-storage-emulator, in its own process) and a plain HTTP server (``python -m
http.server``) over a folder. Nothing listens beyond 127.0.0.1."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


# gcsfs first asks a bucket's type over gRPC (zonal / hierarchical buckets), which the emulator does not serve: that
# costs a 60 s timeout per bucket. Set before gcsfs is imported (it reads this once, at import); real GCS answers.
GCS_ENV = {"GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


@contextmanager
def gcs_server() -> Iterator[dict[str, str]]:
    """gcp-storage-emulator (a GCS JSON API in Python, in memory) on a free loopback port. Yields the environment a
    client needs: ``STORAGE_EMULATOR_HOST``, which gcsfs takes as its endpoint (anonymous access)."""
    port = int(free_port())
    command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port),
               "--in-memory"]
    with _serving(command, port, "gcp-storage-emulator"):
        yield {**GCS_ENV, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}


@contextmanager
def http_server(root: Path) -> Iterator[str]:
    """``python -m http.server`` serving ``root`` on a free loopback port; yields its base URL (no trailing /)."""
    port = int(free_port())
    with _serving([sys.executable, "-m", "http.server", "-b", "127.0.0.1", str(port)], port, "http.server", cwd=root):
        yield f"http://127.0.0.1:{port}"


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
_DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied (refused '
           b'by the test proxy)</Message></Error>')


@contextmanager
def refusing_proxy(upstream: str, refuse: Callable[[str, str], bool]) -> Iterator[list[str]]:
    """A loopback HTTP proxy in front of the S3 server at ``upstream`` that answers 403 AccessDenied to the requests
    ``refuse(method, path)`` picks (as a bucket policy or an expired token would, mid-build) and passes every other
    request through unchanged. Yields a list: its URL first, then each refused request as "METHOD path"."""
    target = urlsplit(upstream)
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _relay(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if refuse(self.command, self.path):
                seen.append(f"{self.command} {self.path}")
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(_DENIED)))
                self.end_headers()
                self.wfile.write(_DENIED)
                return
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            # A HEAD answer keeps the object's length; its body is empty.
            length = response.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
            self.send_header("Content-Length", length or "0")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        seen.append(f"http://127.0.0.1:{server.server_address[1]}")
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def apply_env(env: dict[str, str], monkeypatch) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    os.environ.setdefault("NO_PROXY", "127.0.0.1")
