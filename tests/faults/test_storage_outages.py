"""Remote storage that freezes or dies, for real on loopback: a server that accepts connections and never answers
(each read fails within data.storage_timeout_s and data.storage_retries, in one line naming the URL, "timed out",
with its further tries counted), a server that is not there ("unreachable", never "not found", tried again), and an
HTTP server stopped and restarted on the same port while files are read (survived within the retries)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from avmae import storage
from avmae.config import load
from avmae.forward_reader import ForwardReader
from avmae.recipe.config import RunConfig
from avmae.recipe.geometry import load_run_spec
from avmae.shard_files import exists, read_bytes, read_many
from avmae.storage import StorageError, retries_made, set_storage_limits, storage_limits
from tests.helpers import run_config

DATA = bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture(autouse=True)
def short_limits():
    """Each test sets its own limits; the process's are restored after it."""
    before = storage_limits()
    yield
    set_storage_limits(before.timeout_s, before.retries)


@contextmanager
def silent_server() -> Iterator[str]:
    """A loopback server that accepts every connection and never sends a byte; yields its base URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        listener.close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class RestartableServer:
    """An HTTP server over ``root`` on one loopback port that can be stopped and started again on that port."""

    def __init__(self, root: Path):
        self.handler = partial(QuietHandler, directory=str(root))
        self.port = closed_port()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)  # allow_reuse_address: same port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def start_after(self, seconds: float) -> threading.Thread:
        thread = threading.Timer(seconds, self.start)
        thread.start()
        return thread


@pytest.fixture
def served(tmp_path) -> Iterator[RestartableServer]:
    (tmp_path / "file.bin").write_bytes(DATA)
    (tmp_path / "small.txt").write_bytes(b"small")
    server = RestartableServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def one_line(err: BaseException) -> str:
    message = str(err)
    assert "\n" not in message, message
    return message


@pytest.mark.serial
@pytest.mark.parametrize("read", [read_bytes, exists, lambda url: ForwardReader(url).read(0, 10),
                                  lambda url: read_many([url, url + ".2"])],
                         ids=["read_bytes", "exists", "forward_reader", "read_many"])
def test_a_server_that_never_answers_times_out_within_the_bound_naming_the_url(read, caplog):
    set_storage_limits(0.3, 2)
    with silent_server() as root:
        url = f"{root}/shards/train-000000.idx"
        before, started = retries_made(), time.monotonic()
        with caplog.at_level(logging.WARNING, logger="avmae.storage"), pytest.raises(StorageError) as failure:
            read(url)
        elapsed = time.monotonic() - started
    message = one_line(failure.value)
    assert message.startswith(f"{url}: timed out after 3 tries"), message
    assert "data.storage_timeout_s=0.3, data.storage_retries=2" in message
    # 3 tries of at most two 0.3 s waits each (fsspec's HTTP info() asks HEAD, then GET), 0.5 + 1 s between them
    assert elapsed < 3 * 2 * 0.3 + 1.5 + 5.0, elapsed  # with room for a busy machine
    assert retries_made() - before == 2
    assert [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()] == [
        f"{url}: timed out (try 1 of 3); trying again in 0.5 s", f"{url}: timed out (try 2 of 3); trying again in 1.0 s"]


@pytest.mark.parametrize("read", [read_bytes, exists, lambda url: ForwardReader(url).read(0, 10)],
                         ids=["read_bytes", "exists", "forward_reader"])
def test_a_dead_server_is_unreachable_not_a_missing_file(read):
    set_storage_limits(1.0, 1)
    url = f"http://127.0.0.1:{closed_port()}/shards/train-000000.tar"
    before = retries_made()
    with pytest.raises(StorageError) as failure:  # not FileNotFoundError, and exists() does not answer False
        read(url)
    message = one_line(failure.value)
    assert message.startswith(f"{url}: unreachable after 2 tries") and "not found" not in message, message
    assert retries_made() - before == 1


def test_a_missing_file_on_a_live_server_is_still_not_found_at_once(served):
    set_storage_limits(1.0, 3)
    before = retries_made()
    with pytest.raises(FileNotFoundError, match="no_such.tar: not found"):
        read_bytes(f"{served.url}/no_such.tar")
    assert exists(f"{served.url}/no_such.tar") is False
    assert retries_made() == before  # a 404 is an answer: no further tries


@pytest.mark.serial
def test_a_server_restarted_during_reads_is_survived_within_the_retries(served):
    set_storage_limits(1.0, 4)  # waits 0.5, 1, 2, 4 s: an outage of up to 7.5 s
    reader = ForwardReader(f"{served.url}/file.bin")
    assert reader.read(0, 1000) == DATA[:1000]
    assert read_bytes(f"{served.url}/small.txt") == b"small"
    before = retries_made()

    served.stop()  # the store goes down ...
    restart = served.start_after(1.2)  # ... and comes back on the same port
    assert read_bytes(f"{served.url}/small.txt") == b"small"
    restart.join()
    assert retries_made() - before >= 1

    served.stop()
    restart = served.start_after(1.2)
    assert reader.read(0, len(DATA)) == DATA  # going back reopens the file: refused, tried again, read whole
    restart.join()
    reader.close()

    served.stop()
    restart = served.start_after(1.2)
    assert exists(f"{served.url}/file.bin") is True
    restart.join()


def test_a_restart_longer_than_the_retries_ends_in_one_line(served):
    set_storage_limits(1.0, 1)  # one further try, 0.5 s later
    served.stop()
    restart = served.start_after(3.0)
    try:
        with pytest.raises(StorageError) as failure:
            read_bytes(f"{served.url}/small.txt")
    finally:
        restart.join()
    assert one_line(failure.value).startswith(f"{served.url}/small.txt: unreachable after 2 tries")


@pytest.mark.serial
def test_the_run_config_sets_the_limits_before_the_first_read(tmp_path):
    with silent_server() as root:
        path = run_config(tmp_path, Path("unused"))
        config = load(RunConfig, path, [f"data.shards={root}/shards", "data.storage_timeout_s=0.2",
                                        "data.storage_retries=1"]).validate()
        started = time.monotonic()
        with pytest.raises(StorageError) as failure:
            load_run_spec(config, "train")
        elapsed = time.monotonic() - started
    assert storage_limits() == storage.StorageLimits(0.2, 1)
    assert one_line(failure.value).startswith(f"{root}/shards/manifest.json: timed out after 2 tries")
    assert elapsed < 2 * 0.2 + 0.5 + 5.0, elapsed


@pytest.mark.parametrize("setting, words", [("data.storage_timeout_s=0", "data.storage_timeout_s must be > 0"),
                                            ("data.storage_retries=-1", "data.storage_retries must be a whole number")])
def test_bad_limits_are_refused_naming_the_key(tmp_path, setting, words):
    config = load(RunConfig, run_config(tmp_path, Path("unused")), [setting]).validate()
    with pytest.raises(ValueError, match=words):
        load_run_spec(config, "train")


@pytest.mark.serial
def test_an_s3_endpoint_that_never_answers_times_out_within_the_bound(monkeypatch):
    """botocore's connect and read timeouts come from the limits and it tries once: the tries are avmae's."""
    set_storage_limits(0.3, 1)
    with silent_server() as endpoint:
        for name, value in {"AWS_ACCESS_KEY_ID": "avmae-test", "AWS_SECRET_ACCESS_KEY": "avmae-test",
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                            "FSSPEC_S3_ENDPOINT_URL": endpoint}.items():
            # AWS_ENDPOINT_URL: botocore reads it for each new client; fsspec reads FSSPEC_* once, when imported
            monkeypatch.setenv(name, value)
        url = "s3://bucket/shards/manifest.json"
        before, started = retries_made(), time.monotonic()
        with pytest.raises(StorageError) as failure:
            read_bytes(url)
        elapsed = time.monotonic() - started
    message = one_line(failure.value)
    assert message.startswith(f"{url}: timed out after 2 tries") and "ReadTimeoutError" in message, message
    assert retries_made() - before == 1
    assert elapsed < 2 * 2 * 0.3 + 0.5 + 5.0, elapsed


@pytest.mark.serial
def test_training_over_http_survives_a_restart_of_the_server(shards):
    """The torch loader streaming shards over HTTP: the server stops between batches and comes back on its port
    1.2 s later; the next batches come, with no sample skipped, after counted further tries."""
    from avmae.data.config import DataConfig
    from avmae.data.loader import build_loader

    server = RestartableServer(shards)
    server.start()
    try:
        config = DataConfig(shards=server.url, batch_size=2, workers=0, num_frames=4, crop_size=64, shuffle_buffer=1,
                            storage_timeout_s=2.0, storage_retries=4)
        batches = iter(build_loader(config, "train", train=True))
        first = next(batches)
        before = retries_made()
        server.stop()
        restart = server.start_after(1.2)
        later = [next(batches) for _ in range(6)]  # the next shard is opened while the server is down
        restart.join()
    finally:
        server.stop()
    assert retries_made() - before >= 1
    assert all(batch["skipped"] == [] for batch in [first, *later])
    assert all(batch["video"].shape[:2] == (2, 4) for batch in later)
