"""One input item -> its samples (members of the shard tar), or a MediaError naming why it has none: a video's
segments are cut and decoded by ffmpeg here; an item of CAV-MAE's prepared data is made by from_prepared.py."""

from __future__ import annotations

import os
import stat

import numpy as np

from avmae.shard.inputs.items import ClipItem
from avmae.shard.inputs.media import MediaError, Probe, bin_centres, decode_segment, probe
from avmae.shard.inputs.source_tars import member_file, read_member
from avmae.shard.params import BuildParams, FeatureParams
from avmae.shard.samples.from_prepared import make_prepared_samples
from avmae.shard.samples.logmel import logmel, min_samples
from avmae.shard.samples.packing import Sample, pack_sample

# A stream may end up to one frame period before its nominal end without being "short"; beyond this many seconds
# past the last decoded frame, the frames aimed at are missing and the segment is re-planned or the clip fails.
_END_SLACK_SECONDS = 0.25
# A file whose streams end this much earlier than its container says is truncated, not merely short.
_TRUNCATION_SECONDS = 1.0
# A failure's detail (failures.jsonl) names the build parameter that keeps such clips.
_NO_AUDIO = "no audio stream (missing_audio 'silence' keeps such clips)"


def plan_segments(item: ClipItem, build: BuildParams, known: Probe | None) -> list[tuple[float, float]]:
    """(start, end) seconds of every segment to cut from an item. List rows give their own; plain folders follow
    ``build.segments``, which for ``middle``/``all`` needs the clip's duration from the probe."""
    if item.start is not None and item.end is not None:
        return [(item.start, item.end)]
    length = build.segment_seconds
    if build.segments == "first":
        return [(0.0, length)]
    duration = known.duration if known else None
    if duration is None:
        raise MediaError("no_duration", "the container reports no duration; cannot place middle/all segments")
    if build.segments == "middle":
        start = max(0.0, duration / 2 - length / 2)
        return [(start, min(duration, start + length))]
    count = int(duration // length)
    segments = [(i * length, (i + 1) * length) for i in range(count)]
    if duration - count * length >= build.min_seconds:
        segments.append((count * length, duration))
    return segments or [(0.0, duration)]


def _diagnose(path: str, want_audio: bool, start: float, original: MediaError) -> MediaError:
    """Turn an ffmpeg failure into the most specific reason the probe can give."""
    facts = probe(path)  # raises MediaError("unreadable") itself
    if not facts.has_video:
        return MediaError("no_video", f"no video stream (audio: {facts.audio_codec or 'none'})")
    if want_audio and not facts.has_audio:
        return MediaError("no_audio", _NO_AUDIO)
    if facts.duration is not None and start >= facts.duration:
        return MediaError("segment_out_of_range", f"segment starts at {start:.3f} s but the clip lasts {facts.duration:.3f} s")
    return original


def _frames_for_targets(frame_times: list[float], targets: list[float]) -> list[int] | None:
    """For each target time, the index of the first kept frame at or after it; None if a target lies past the last
    frame (by more than the slack): the segment is longer than the stream."""
    chosen = []
    position = 0
    for target in targets:
        while position < len(frame_times) and frame_times[position] < target - 1e-6:
            position += 1
        if position < len(frame_times):
            chosen.append(position)
        elif frame_times and target - frame_times[-1] <= _END_SLACK_SECONDS:
            chosen.append(len(frame_times) - 1)
        else:
            return None
    return chosen


def _decode(path: str, start: float, end: float, features: FeatureParams, build: BuildParams,
            facts: Probe | None):
    """Decode one segment, shortened to what the stream really holds when the clip is shorter than the segment.

    Returns (segment, chosen frame per target, start, end, has_audio)."""
    want_audio = not (facts is not None and not facts.has_audio)
    if not want_audio and build.missing_audio == "fail":
        raise MediaError("no_audio", _NO_AUDIO)
    for _attempt in range(4):
        duration = end - start
        try:
            segment = decode_segment(path, start, duration, num_frames=features.num_frames,
                                     short_side=features.short_side, jpeg_qscale=features.jpeg_qscale,
                                     sample_rate=features.sample_rate if want_audio else None)
        except MediaError as err:
            if err.reason == "timed_out":  # a probe would wait out a second deadline and hide this one
                raise
            reason = _diagnose(path, want_audio, start, err)
            if reason.reason == "no_audio" and build.missing_audio == "silence":
                want_audio = False
                continue
            raise reason from None
        targets = bin_centres(duration, features.num_frames)
        chosen = _frames_for_targets(segment.frame_times, targets) if segment.jpegs else None
        if chosen is not None:
            return segment, chosen, start, end, want_audio
        # The stream ends before the segment does: a short clip (re-plan the segment over what exists) or a
        # truncated file (the container promises more than the stream holds).
        facts = facts or probe(path)
        if facts.duration is not None and start >= facts.duration:
            raise MediaError("segment_out_of_range", f"segment starts at {start:.3f} s but the clip lasts {facts.duration:.3f} s")
        last_frame = start + segment.frame_times[-1] if segment.jpegs else start
        if facts.duration is not None and facts.duration >= end - _END_SLACK_SECONDS \
                and facts.duration - last_frame > _TRUNCATION_SECONDS:
            raise MediaError("truncated", f"the container says {facts.duration:.2f} s but frames stop at {last_frame:.2f} s")
        if facts.duration is not None and facts.duration < end - 1e-3:
            end = facts.duration
        else:
            end = min(end - 1e-3, last_frame + _END_SLACK_SECONDS)
        if end - start < build.min_seconds:
            raise MediaError("too_short", f"{max(0.0, end - start):.2f} s of video in the segment, "
                                          f"fewer than min_seconds {build.min_seconds}")
    raise MediaError("decode_error", "the decoded frames do not cover the segment even after shortening it")


def make_samples(item: ClipItem, features: FeatureParams, build: BuildParams) -> list[Sample]:
    """All samples of one input item; raises MediaError with a failure reason instead of returning none."""
    if item.fault is not None:
        raise MediaError(*item.fault)
    if item.frames_root is not None:
        return make_prepared_samples(item, features)
    if item.path is None:
        raise MediaError("missing", "no downloaded file matches this list row")
    if item.member is not None:  # a video inside a tar: its bytes, held in memory, as a seekable file for ffmpeg
        data = read_member(item.path, item.extra["v2d_member_offset"], item.extra["v2d_member_bytes"])
        with member_file(data, item.member) as path:
            try:
                return _file_samples(item, path, features, build)
            except MediaError as err:  # name the member, not the memory file ffmpeg read it through
                raise MediaError(err.reason, err.detail.replace(path, f"{item.path}#{item.member}")) from None
    return _file_samples(item, item.path, features, build)


def _file_samples(item: ClipItem, path: str, features: FeatureParams, build: BuildParams) -> list[Sample]:
    """The samples of ``item`` decoded from the media file at ``path``."""
    try:
        status = os.stat(path)
    except OSError as err:
        raise MediaError("missing", f"cannot stat the file: {err.strerror}") from None
    if not stat.S_ISREG(status.st_mode):  # a FIFO or a device would block ffmpeg, not feed it a clip
        raise MediaError("unreadable", "not a regular file (a FIFO, a device or a socket)")
    if status.st_size == 0:
        raise MediaError("empty_file", "the file has zero bytes")
    needs_probe = item.start is None and build.segments != "first"
    facts = probe(path) if needs_probe else None
    if facts is not None and not facts.has_video:
        raise MediaError("no_video", f"no video stream (audio: {facts.audio_codec or 'none'})")
    samples = []
    for index, (start, end) in enumerate(plan_segments(item, build, facts)):
        if end - start < build.min_seconds:
            raise MediaError("too_short", f"segment {start:.2f}-{end:.2f} s is shorter than min_seconds {build.min_seconds}")
        segment, chosen, start, end, has_audio = _decode(path, start, end, features, build, facts)
        samples.append(_assemble(item, index, segment, chosen, start, end, has_audio, features))
    return samples


def _assemble(item: ClipItem, index: int, segment, chosen: list[int], start: float, end: float,
              has_audio: bool, features: FeatureParams) -> Sample:
    pcm = segment.pcm if has_audio else None
    if pcm is not None and len(pcm) < min_samples(features):
        raise MediaError("audio_too_short", f"{len(pcm)} audio samples, fewer than one {features.frame_length_ms} ms window")
    if pcm is None:
        # missing_audio 'silence': the features of a silent track of the segment's length.
        pcm = np.zeros(int(round((end - start) * features.sample_rate)), dtype=np.int16)
    mel, valid = logmel(pcm, features)
    return pack_sample(item, index, jpegs=[segment.jpegs[frame] for frame in chosen],
                       frame_times=[start + segment.frame_times[i] for i in chosen],
                       repeated_frames=len(chosen) - len(set(chosen)), start=start, end=end, mel=mel, valid=valid,
                       has_audio=has_audio, audio_samples=len(pcm))
