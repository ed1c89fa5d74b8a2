"""ffmpeg through ffmpeg-python: probe a clip, and decode one segment into JPEG frames plus 16-bit mono PCM.

One ffmpeg process per segment decodes both streams (one process per clip is ~10x cheaper than a process per
frame: docs/reference/libraries.md#one-ffmpeg-process-per-clip). Frames leave on stdout as an MJPEG stream, audio on
an inherited pipe.

Frame choice: frame i is the first decoded frame whose timestamp is at or after the centre of the i-th of N equal
bins of the segment. The ``select`` filter does this on timestamps, so variable frame rate needs no special case;
``showinfo`` reports the timestamps of the frames it kept, which go into the metadata. Display rotation is applied
by ffmpeg's default autorotation before the resize.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass
from typing import Callable

import ffmpeg
import numpy as np


# Every ffmpeg and ffprobe call has a deadline: a file that never finishes decoding (a pathological stream, a
# stalled network file system, a container that names a FIFO) must become a failure of its clip, not a worker
# blocked for ever, a shard without its part record and a build that a rerun cannot finish. A call may take
# TIMEOUT_BASE_S (start-up, opening, seeking, probing) plus TIMEOUT_PER_MEDIA_SECOND for each second of media it
# decodes: generous for a 4K clip on one core (ffmpeg decodes faster than real time), short against for ever.
# Module constants, not build parameters: they do not change what a shard holds (BuildParams feed the fingerprint).
TIMEOUT_BASE_S = 60.0
TIMEOUT_PER_MEDIA_SECOND = 10.0
TIMED_OUT = "timed_out"  # the failure reason of a call that passed its deadline (failures.jsonl)


def timeout_for(media_seconds: float = 0.0) -> float:
    """Seconds an ffmpeg or ffprobe call may run that decodes ``media_seconds`` of media."""
    return TIMEOUT_BASE_S + TIMEOUT_PER_MEDIA_SECOND * max(0.0, media_seconds)


class MediaError(Exception):
    """An input that cannot become a sample: ``reason`` is a short code for failures.jsonl, ``detail`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _tool(variable: str, name: str, hint: str) -> str:
    found = os.environ.get(variable) or shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} not found: {hint}, or set {variable}")
    return found


@functools.cache
def ffmpeg_binary() -> str:
    """``$AVMAE_FFMPEG`` or ``ffmpeg`` on PATH."""
    return _tool("AVMAE_FFMPEG", "ffmpeg", "install it (apt-get install ffmpeg)")


@functools.cache
def ffprobe_binary() -> str:
    """``$AVMAE_FFPROBE`` or ``ffprobe`` on PATH (the imageio-ffmpeg wheel ships none)."""
    return _tool("AVMAE_FFPROBE", "ffprobe", "install ffmpeg with ffprobe (apt-get install ffmpeg)")


@functools.cache
def ffmpeg_version() -> str:
    try:
        out, _, _ = _run([ffmpeg_binary(), "-hide_banner", "-version"], "ffmpeg -version", timeout_for())
    except MediaError as err:  # not a clip's fault: the build cannot name its ffmpeg, so it does not start
        raise RuntimeError(f"{ffmpeg_binary()}: {err.detail}") from None
    text = out.decode("utf-8", "replace")
    return text.splitlines()[0] if text else "unknown"


def _start(command: list[str], **options) -> subprocess.Popen:
    """``command`` in a process group of its own (process_group=0), so that a timeout ends everything it started:
    $AVMAE_FFMPEG may name a wrapper script whose ffmpeg child would otherwise outlive it, holding our pipes."""
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            process_group=0, **options)


def _kill(process: subprocess.Popen) -> None:
    """SIGKILL the process group of ``process`` and reap it. Not SIGTERM: ffmpeg blocked in open() on a FIFO ignores
    it. Its pipes are closed, not drained: a child that left the group could hold them open for ever."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already ended
        pass
    process.wait()
    for pipe in (process.stdout, process.stderr):
        if pipe is not None:
            pipe.close()


def _finish(process: subprocess.Popen, what: str, timeout_s: float) -> tuple[bytes, bytes]:
    """(stdout, stderr) of ``process`` once it ends; past ``timeout_s`` it is killed and the clip fails with
    MediaError(TIMED_OUT). Any other interruption (Ctrl-C in the worker) kills it too: in its own process group it
    would not get the terminal's signal."""
    try:
        return process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill(process)
        raise MediaError(TIMED_OUT, f"{what} timed out after {timeout_s:g} s (killed)") from None
    except BaseException:
        _kill(process)
        raise


def _run(command: list[str], what: str, timeout_s: float) -> tuple[bytes, bytes, int]:
    """(stdout, stderr, exit status) of ``command``, within ``timeout_s`` (else MediaError(TIMED_OUT))."""
    process = _start(command)
    stdout, stderr = _finish(process, what, timeout_s)
    return stdout, stderr, process.returncode


@dataclass(frozen=True)
class Probe:
    duration: float | None  # seconds of the video stream (container duration if the stream has none)
    width: int | None
    height: int | None
    rotation: int  # display rotation in degrees, as ffprobe reports it
    video_codec: str | None
    audio_codec: str | None
    audio_rate: int | None
    audio_channels: int | None

    @property
    def has_video(self) -> bool:
        return self.video_codec is not None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def _float_or_none(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def probe(path: str) -> Probe:
    """Stream facts of a file; ``MediaError('unreadable')`` if ffprobe cannot open it, ``MediaError(TIMED_OUT)``
    if it does not answer within ``timeout_for()``."""
    # ffmpeg.probe's command line, run here because ffmpeg.probe waits without a deadline
    command = [ffprobe_binary(), "-show_format", "-show_streams", "-of", "json", path]
    out, err, status = _run(command, f"{path}: ffprobe", timeout_for())
    if status != 0:
        message = err.decode("utf-8", "replace").strip().splitlines()
        raise MediaError("unreadable", message[-1] if message else "ffprobe failed")
    info = json.loads(out.decode("utf-8"))
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"
                  and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    rotation = 0
    if video is not None:
        for side in video.get("side_data_list", []) or []:
            if "rotation" in side:
                rotation = int(side["rotation"])
        if "rotate" in video.get("tags", {}):
            rotation = int(video["tags"]["rotate"])
    duration = _float_or_none(video.get("duration")) if video else None
    duration = duration or _float_or_none(info.get("format", {}).get("duration"))
    return Probe(
        duration=duration,
        width=video.get("width") if video else None,
        height=video.get("height") if video else None,
        rotation=rotation,
        video_codec=video.get("codec_name") if video else None,
        audio_codec=audio.get("codec_name") if audio else None,
        audio_rate=int(audio["sample_rate"]) if audio and audio.get("sample_rate") else None,
        audio_channels=audio.get("channels") if audio else None,
    )


@dataclass
class Segment:
    """What ffmpeg returned for one segment."""

    jpegs: list[bytes]
    frame_times: list[float]  # seconds from the segment start, one per JPEG
    pcm: np.ndarray | None  # int16 mono at the requested rate, None when audio was not asked for
    log: str  # ffmpeg's stderr, for failure details


_PTS_TIME = re.compile(r"\bn:\s*\d+\s+pts:\s*-?\d+\s+pts_time:\s*(-?[0-9.]+)")
_JPEG_BOUNDARY = b"\xff\xd9\xff\xd8"


def split_mjpeg(stream: bytes) -> list[bytes]:
    """Split an MJPEG byte stream into JPEG files. An end-of-image marker followed by a start-of-image marker can
    only be a frame boundary: inside entropy-coded data every 0xFF byte is followed by 0x00."""
    if not stream:
        return []
    pieces = stream.split(_JPEG_BOUNDARY)
    last = len(pieces) - 1
    return [(b"" if i == 0 else b"\xff\xd8") + piece + (b"" if i == last else b"\xff\xd9")
            for i, piece in enumerate(pieces)]


def bin_centres(duration: float, count: int) -> list[float]:
    """Centres of ``count`` equal bins of ``[0, duration)``: the times the sampled frames aim at."""
    return [(i + 0.5) * duration / count for i in range(count)]


def _select_expression(targets: list[float]) -> str:
    # Keep a frame when it is the first at or after some target; prev_t is NaN on the first frame, which the
    # isnan() term treats as "before every target".
    return "+".join(f"gte(t,{t:.6f})*(isnan(prev_t)+lt(prev_t,{t:.6f}))" for t in targets)


def _short_side_scale(stream, short_side: int):
    # -2 keeps the aspect ratio with an even size (odd sizes break 4:2:0 JPEG); the comparison runs on the rotated
    # frame because autorotation happens before the filter graph.
    return stream.filter("scale", f"if(gt(iw,ih),-2,{short_side})", f"if(gt(iw,ih),{short_side},-2)")


def _decode_command(path: str, start: float, duration: float, num_frames: int, short_side: int, jpeg_qscale: int,
                    sample_rate: int | None, audio_fd: int | None) -> list[str]:
    """The ffmpeg command of decode_segment: the frames as an MJPEG stream on stdout and, if ``sample_rate`` is given,
    the audio as 16-bit PCM on the inherited descriptor ``audio_fd``."""
    source = ffmpeg.input(path, ss=f"{start:.6f}", t=f"{duration:.6f}")
    video = source["v:0"].filter("select", _select_expression(bin_centres(duration, num_frames))).filter("showinfo")
    video = _short_side_scale(video, short_side).filter("format", "yuvj420p")
    outputs = [ffmpeg.output(video, "pipe:1", format="image2pipe", vcodec="mjpeg",
                             **{"q:v": jpeg_qscale, "fps_mode": "passthrough", "frames:v": num_frames})]
    if sample_rate is not None:
        # CAV-MAE keeps the first channel, not a down-mix (sox remix 1; docs/reference/cavmae.md#log-mel-front-end), as
        # 16-bit PCM.
        audio = source["a:0"].filter("channelmap", map="0", channel_layout="mono")
        outputs.append(ffmpeg.output(audio, f"pipe:{audio_fd}", format="s16le", acodec="pcm_s16le", ar=sample_rate))
    args = ffmpeg.merge_outputs(*outputs).compile(cmd=ffmpeg_binary())
    return [args[0], "-nostdin", "-hide_banner", "-loglevel", "info", *args[1:]]


def _start_with_audio_pipe(command_for: Callable[[int | None], list[str]],
                           with_audio: bool) -> tuple[subprocess.Popen, int | None]:
    """Start the command ``command_for(write_fd)`` gives; with ``with_audio``, on a pipe whose write end the process
    inherits (and we close, so that its exit ends the pipe). Returns the process and the pipe's read end."""
    read_fd = write_fd = None
    if with_audio:
        read_fd, write_fd = os.pipe()
    try:
        process = _start(command_for(write_fd), pass_fds=(write_fd,) if write_fd is not None else ())
    except BaseException:
        if read_fd is not None:
            os.close(read_fd)
        raise
    finally:
        if write_fd is not None:
            os.close(write_fd)
    return process, read_fd


def _drain(read_fd: int, chunks: list[bytes]) -> threading.Thread:
    """A thread that reads ``read_fd`` into ``chunks`` until EOF, so that ffmpeg never blocks on a full pipe."""
    def drain() -> None:
        while block := os.read(read_fd, 1 << 20):
            chunks.append(block)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader


def _segment(stdout: bytes, log: str, audio: bytes | None) -> Segment:
    """The frames, their timestamps (showinfo's lines) and the PCM samples of a finished decode."""
    jpegs = split_mjpeg(stdout)
    times = [float(t) for t in _PTS_TIME.findall(log)][: len(jpegs)]
    if len(times) != len(jpegs):
        raise MediaError("decode_error", f"ffmpeg gave {len(jpegs)} frames but reported {len(times)} timestamps")
    pcm = None
    if audio is not None:
        pcm = np.frombuffer(audio[: len(audio) // 2 * 2], dtype="<i2").copy()
    return Segment(jpegs=jpegs, frame_times=times, pcm=pcm, log=log)


def decode_segment(path: str, start: float, duration: float, *, num_frames: int, short_side: int,
                   jpeg_qscale: int, sample_rate: int | None) -> Segment:
    """Decode ``[start, start + duration)`` of ``path``: ``num_frames`` JPEGs (fewer if the stream ends early or a
    gap spans two targets) and, if ``sample_rate`` is given, the first audio channel as int16 PCM.

    Raises ``MediaError('decode_error')`` when ffmpeg fails; the caller probes the file to name the cause.
    ``MediaError(TIMED_OUT)`` when it runs past ``timeout_for(duration)``."""
    process, read_fd = _start_with_audio_pipe(
        lambda audio_fd: _decode_command(path, start, duration, num_frames, short_side, jpeg_qscale, sample_rate,
                                         audio_fd), with_audio=sample_rate is not None)
    chunks: list[bytes] = []
    reader = _drain(read_fd, chunks) if read_fd is not None else None
    try:
        stdout, stderr = _finish(process, f"{path}: ffmpeg decoding {start:.3f}-{start + duration:.3f} s",
                                 timeout_for(duration))
    finally:
        if reader is not None:  # ends at EOF: the audio pipe's only writer has exited (or was killed)
            reader.join()
            os.close(read_fd)
    log = stderr.decode("utf-8", "replace")
    if process.returncode != 0:
        raise MediaError("decode_error", _error_lines(log))
    return _segment(stdout, log, b"".join(chunks) if sample_rate is not None else None)


def _error_lines(log: str, limit: int = 3) -> str:
    """The lines of an ffmpeg log that say what went wrong (the last few, without the showinfo chatter)."""
    lines = [line.strip() for line in log.splitlines()
             if line.strip() and not line.startswith(("  ", "[Parsed_showinfo", "Input #", "Output #"))]
    return " | ".join(lines[-limit:]) if lines else "ffmpeg failed without a message"


def resize_image(path: str, *, short_side: int, jpeg_qscale: int) -> bytes:
    """One image file re-encoded as a JPEG of ``short_side``, resized as decode_segment resizes video frames (the
    same filter, so frames from images and from videos share one geometry). ``MediaError('bad_frame')`` names the
    file when ffmpeg cannot read it."""
    source = ffmpeg.input(path)
    scaled = _short_side_scale(source["v:0"], short_side).filter("format", "yuvj420p")
    args = ffmpeg.output(scaled, "pipe:1", format="image2pipe", vcodec="mjpeg", **{"q:v": jpeg_qscale, "frames:v": 1}
                         ).compile(cmd=ffmpeg_binary())
    command = [args[0], "-nostdin", "-hide_banner", "-loglevel", "error", *args[1:]]
    out, err, status = _run(command, f"{path}: ffmpeg", timeout_for())
    if status != 0 or not out:
        raise MediaError("bad_frame", f"{path}: {_error_lines(err.decode('utf-8', 'replace'))}")
    return out
