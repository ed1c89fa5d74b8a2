"""Loader throughput: avmae's backends against a CAV-MAE-style loader on the same clips.

The baseline does what CAV-MAE's dataloader does per sample (docs/reference/cavmae.md, "Log-mel front end", "Frames"):
open one JPEG file per frame (PIL, Resize + CenterCrop/RandomResizedCrop, ToTensor, Normalize) and a 16 kHz wav
(torchaudio.load), and compute the Kaldi fbank on the fly. Its files are made once from the same shards (frames) and
source clips (audio).

``remote``: the same shards at other roots (s3://, https://, pipe:, avmae/shard_files.py), measured with the same
backends and workers; each run names its ``location``.
"""

from __future__ import annotations

import subprocess
import tarfile
import time
import wave
from pathlib import Path
from typing import Any

import torch
import torchaudio
from PIL import Image
from torchvision import transforms

from avmae.data.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from avmae.data.loader import Loader
from avmae.data.samples import frame_members, parse_metadata
from avmae.data.spec import load_spec
from avmae.data.tar_reader import IndexedShard
from avmae.shard.format import METADATA_MEMBER
from avmae.shard.inputs.items import file_stem_for_key
from avmae.shard.inputs.media import ffmpeg_binary, timeout_for
from avmae.storage import is_url


def export_cavmae_layout(spec, folder: Path, frames: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """frame_<i>/<key>.jpg and <key>.wav per sample, as CAV-MAE's extraction scripts leave them (the key made safe
    as a file name: keys are data). Returns the rows and the keys that had to be renamed, key -> file stem."""
    rows, renamed = [], {}
    for shard in spec.shards:
        indexed = set(IndexedShard(shard.tar, shard.idx).keys)
        with tarfile.open(shard.tar) as tar:
            names = tar.getnames()
            present = set(names)
            for name in names:
                if not name.endswith(f".{METADATA_MEMBER}"):
                    continue
                key = name[: -len(f".{METADATA_MEMBER}")]
                _check_sample(shard, key, name, [f"{key}.{member}" for member in frames], indexed, present)
                meta = parse_metadata(tar.extractfile(name).read())
                stem = file_stem_for_key(key)
                if stem != key:
                    renamed[key] = stem
                paths = []
                for i, member in enumerate(frames):
                    path = folder / f"frame_{i}" / f"{stem}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(tar.extractfile(f"{key}.{member}").read())
                    paths.append(str(path))
                wav = folder / "audio" / f"{stem}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                if not wav.exists():
                    length = meta["end"] - meta["start"]
                    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-ss", str(meta["start"]),
                                    "-t", str(length), "-i", meta["path"], "-vn", "-ac", "1", "-ar", "16000", str(wav)],
                                   check=True, timeout=timeout_for(length))
                rows.append({"frames": paths, "wav": str(wav)})
    return rows, renamed


def _check_sample(shard, key: str, name: str, wanted: list[str], indexed: set[str], present: set[str]) -> None:
    """A sample of the tar that its index lists, with every frame the baseline copies: else one line naming the tar
    and the member (a tar changed after its index was written; avmae-shard verify lists every such sample)."""
    if name.partition(".")[0] not in indexed:  # the index keys a member by what precedes its first dot, as DALI
        raise ValueError(f"{shard.tar}: member {name} is not listed in its index {shard.idx} (the tar changed after "
                         "the build: rebuild the index, or run avmae-shard verify on the folder)")
    for member in wanted:
        if member not in present:
            raise ValueError(f"{shard.tar}: member {member} not found, though {shard.idx} lists sample {key}")


def _load_wav(path: str) -> tuple[torch.Tensor, int]:
    """torchaudio.load of a 16-bit wav (int16 / 32768); torchaudio 2.11 needs torchcodec for it, so read it here."""
    with wave.open(path, "rb") as handle:
        rate, frames = handle.getframerate(), handle.readframes(handle.getnframes())
    samples = torch.frombuffer(bytearray(frames), dtype=torch.int16).float() / 32768
    return samples.unsqueeze(0), rate


class CavmaeStyleDataset(torch.utils.data.Dataset):
    def __init__(self, rows, target_frames: int, crop: int, train: bool, mean: float, std: float):
        self.rows, self.target_frames, self.mean, self.std = rows, target_frames, mean, std
        spatial = transforms.RandomResizedCrop(crop) if train else transforms.Compose(
            [transforms.Resize(crop, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(crop)])
        self.image = transforms.Compose([spatial, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        waveform, rate = _load_wav(row["wav"])
        waveform = waveform - waveform.mean()
        fbank = torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=rate, use_energy=False,
                                                  window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        pad = self.target_frames - fbank.shape[0]
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, pad)) if pad > 0 else fbank[: self.target_frames]
        video = torch.stack([self.image(Image.open(path).convert("RGB")) for path in row["frames"]])
        return (fbank - self.mean) / self.std, video


def _rate(iterator, batches: int, batch_size: int, frames: int) -> dict[str, float]:
    next(iterator)  # start-up (workers, pipeline build) is not throughput
    started = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    seconds = time.perf_counter() - started
    samples = batches * batch_size
    return {"samples_per_s": round(samples / seconds, 1), "frames_per_s": round(samples * frames / seconds, 1)}


def _location(root: str | Path) -> str:
    return str(root).split(":", 1)[0] if is_url(root) else "local"


def bench_loader(data: str | Path, split: str, backends: list[str], workers: list[int], *, batch_size: int,
                 batches: int, num_frames: int, crop: int, train: bool, scratch: Path, threads: int = 1,
                 remote: list[str] = ()) -> dict[str, Any]:
    # The receiving process's threads: with more than the cores the workers leave free, its OpenMP threads spin
    # against them (2 threads cost 4.0 ms of CPU per sample in the main process against 2.1 with 1, measured).
    torch.set_num_threads(threads)
    spec = load_spec(data, split)
    if spec.samples < batch_size:  # a training loader drops the incomplete batch: there would be no batch, ever
        raise ValueError(f"{data}: split {split!r} holds {spec.samples} samples, fewer than one batch of {batch_size}")
    results: dict[str, Any] = {"data": str(data), "split": split, "samples": spec.samples, "batch_size": batch_size,
                               "frames_per_sample": num_frames, "crop": crop, "train_augmentation": train,
                               "receiving_threads": threads, "runs": []}
    for root in [data, *remote]:
        located = spec if root is data else load_spec(root, split)
        if located.samples != spec.samples:
            raise ValueError(f"{root}: split {split!r} holds {located.samples} samples, {data} {spec.samples}: "
                             "not the same shards")
        for backend in backends:
            for count in workers:
                config = DataConfig(shards=str(root), backend=backend, batch_size=batch_size, workers=count,
                                    num_frames=num_frames, crop_size=crop, shuffle_buffer=16)
                stream = iter(_forever(lambda: Loader(located, config, train=train)))  # the spec read above
                results["runs"].append({"loader": backend, "location": _location(root), "workers": count,
                                        **_rate(stream, batches, batch_size, num_frames)})
    if is_url(data):  # the baseline reads local tars and source clips
        return results
    rows, renamed = export_cavmae_layout(spec, scratch, frame_members(spec.features["num_frames"], num_frames))
    if renamed:
        results["unsafe_keys"] = renamed
    dataset = CavmaeStyleDataset(rows, spec.features["target_frames"], crop, train, spec.logmel_mean, spec.logmel_std)
    for count in workers:
        def make():
            return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=train, num_workers=count,
                                               drop_last=True, persistent_workers=False)
        results["runs"].append({"loader": "cavmae_style", "workers": count,
                                **_rate(iter(_forever(make)), batches, batch_size, num_frames)})
    best = {}
    for run in results["runs"]:
        if run.get("location", "local") == "local":
            best[run["loader"]] = max(best.get(run["loader"], 0), run["samples_per_s"])
    if "cavmae_style" in best:
        results["speedup_over_cavmae_style"] = {name: round(rate / best["cavmae_style"], 2)
                                                for name, rate in best.items() if name != "cavmae_style"}
    return results


def _forever(make):
    """Batches from loaders made by ``make``, one after another (evaluation loaders end)."""
    while True:
        batches = 0
        for batch in make():
            batches += 1
            yield batch
        if not batches:  # a loader that gives nothing would be re-made forever
            raise RuntimeError("a loader gave no batch at all")
