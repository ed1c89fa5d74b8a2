"""ForwardReader, the one reader of long remote files (shards, video2dataset tars), against a real HTTP server on
loopback that cuts its responses short: a cut stream is reopened at the byte it reached and the bytes come out
whole; reads that go forward reuse the stream, going back reopens it; a server that always cuts is one
StorageError naming the URL after the retries; a pipe: command that fails mid-file names the command and its exit
status."""

from __future__ import annotations

import os
import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from avmae.forward_reader import _RETRIES, ForwardReader
from avmae.storage import StorageError

SIZE = 3 << 20
DATA = os.urandom(SIZE)


@contextmanager
def cutting_server(cut_after: int, cuts: int) -> Iterator[tuple[str, list[str]]]:
    """Serves DATA at /file (ignoring ranges, as http.server does), announcing its whole length but closing the
    connection after ``cut_after`` bytes in its first ``cuts`` responses. Yields the URL and the list of GET
    requests (fsspec asks for the size with a HEAD first, as http.server answers)."""
    requests: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self):
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()

        def do_GET(self):
            requests.append(self.path)
            if self.path != "/file":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()
            if len(requests) <= cuts:
                self.wfile.write(DATA[:cut_after])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.wfile.write(DATA)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/file", requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_cut_stream_is_reopened_at_the_byte_it_reached():
    with cutting_server(cut_after=1 << 20, cuts=1) as (url, requests):
        with ForwardReader(url) as reader:
            assert reader.read(0, SIZE) == DATA
        assert len(requests) == 2  # the first response cut at 1 MiB, the second read on from there


def test_forward_reads_reuse_the_stream_and_going_back_reopens_it():
    with cutting_server(cut_after=0, cuts=0) as (url, requests):
        with ForwardReader(url) as reader:
            assert reader.read(100, 200) == DATA[100:200]
            assert reader.read(1 << 20, (1 << 20) + 10) == DATA[1 << 20:(1 << 20) + 10]  # skipped by reading on
            assert reader.read(SIZE - 5, SIZE + 100) == DATA[-5:]  # short only where the file ends
            assert len(requests) == 1
            assert reader.read(0, 10) == DATA[:10]  # back: a new request
            assert len(requests) == 2


def test_a_stream_cut_every_time_is_one_storage_error_naming_the_url():
    # Cut before the first byte: no progress, so every reopen counts against the retries (a cut after some bytes
    # may surface with them or after them, which moves the count by one).
    with cutting_server(cut_after=0, cuts=100) as (url, requests):
        with ForwardReader(url) as reader, pytest.raises(StorageError) as failure:
            reader.read(0, SIZE)
        assert len(requests) == _RETRIES + 1
    message = str(failure.value)
    assert message.startswith(url) and "\n" not in message


def test_a_pickled_reader_opens_its_own_stream():
    with cutting_server(cut_after=0, cuts=0) as (url, requests):
        reader = ForwardReader(url)
        assert reader.read(0, 10) == DATA[:10]
        copy = pickle.loads(pickle.dumps(reader))  # as a DataLoader worker receives it
        assert copy.read(10, 20) == DATA[10:20] and len(requests) == 2
        assert reader.read(10, 20) == DATA[10:20] and len(requests) == 2  # the original's stream went on
        reader.close()
        copy.close()


def test_a_pipe_command_failing_mid_file_names_the_command_and_the_bytes_reached(tmp_path):
    (tmp_path / "file").write_bytes(DATA)
    command = f"head -c 5000 {tmp_path / 'file'}; exit 3"
    with ForwardReader(f"pipe:{command}") as reader, pytest.raises(StorageError) as failure:
        reader.read(0, SIZE)
    # The bytes counted are those handed over before the failure was seen (webdataset checks the exit status as
    # it reads, so the failing read's own bytes may be dropped).
    assert str(failure.value).startswith(f"{command}: the command failed after ") and "exit 3" in str(failure.value)
    with ForwardReader(f"pipe:cat {tmp_path / 'file'}") as reader:  # the same file through a command that works
        assert reader.read(4000, 6000) == DATA[4000:6000]
