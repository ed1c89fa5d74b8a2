"""What the tests share: the one tiny model of the training tests, the one tiny shard build, a run config
writer, a two-process torchrun launcher and the metrics reader. Fixtures built on them are in conftest.py."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import unicodedata
from pathlib import Path

import yaml

from avmae.cli.shard import main as shard_main

REPO = Path(__file__).resolve().parents[1]

# The tiny model's sizes: the training tests' model below, and every recipe shrunk by tests/test_recipes.py (which
# keeps the recipe's fusion, decoder kind, masking and losses).
TINY_SIZES = {"encoder": {"size": "custom", "width": 64, "depth": 3, "heads": 2, "mlp": 128},
              "decoder": {"width": 32, "depth": 1, "heads": 2, "mlp": 64},
              "audio": {"frames": 208}, "video": {"size": 64}}
TINY_MODEL = {
    "encoder": {**TINY_SIZES["encoder"], "fusion": "mid", "joint_layers": 1},
    "decoder": {"kind": "shared", **TINY_SIZES["decoder"]},
    "mask": {"audio_ratio": 0.7, "video_ratio": 0.75, "video_mode": "tube"},
    "contrastive": {"weight": 0.01},
    "audio": {**TINY_SIZES["audio"], "mel_bins": 128, "patch": 16},
    "video": {"frames": 4, **TINY_SIZES["video"], "patch": 16, "tubelet": 2},
    "norm_pix_loss": True,
}


def set_items(values: dict, prefix: str) -> list[str]:
    """``--set`` items for every leaf of a nested dict: ``({"encoder": {"width": 64}}, "model")`` gives
    ``["model.encoder.width=64"]``."""
    items = []
    for name, value in values.items():
        key = f"{prefix}.{name}"
        items += set_items(value, key) if isinstance(value, dict) else [f"{key}={value}"]
    return items


def run_config(tmp_path: Path, shards: Path, **sections) -> Path:
    config = {
        "task": "pretrain", "model": TINY_MODEL,
        "data": {"shards": str(shards), "batch_size": 4, "workers": 0, "num_frames": 4, "crop_size": 64,
                 "shuffle_buffer": 4},
        "optim": {"steps": 8, "lr": 2e-3, "warmup_steps": 2},
        "checkpoint": {"every": 4, "keep": 2}, "log": {"every": 1, "progress": False, "tensorboard": True},
        "zero_stage": 2, "workdir": str(tmp_path / "run"),
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values} if isinstance(values, dict) and name in config else values
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def initialised_export(root: Path, shards: Path) -> Path:
    """A classifier export of the tiny model for ``shards``' labels, its weights as initialised (for tests in which
    the weights are not under test), at ``root``/run/export/model.safetensors."""
    from avmae.config import load
    from avmae.data.spec import load_spec
    from avmae.export.format import ExportInfo, write_export
    from avmae.export.load import model_for
    from avmae.recipe.config import RunConfig

    config = load(RunConfig, run_config(root, shards, task="finetune"))
    spec = load_spec(shards, "train")
    heads = {"label": len(spec.label_names)}
    info = ExportInfo(task="finetune", config=config, label_mode=str(spec.label_mode),
                      label_names=list(spec.label_names), heads=heads)
    return write_export(root / "run" / "export" / "model.safetensors",
                        model_for(config, "finetune", heads).state_dict(), info)


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(config: Path, *overrides: str, processes: int = 2) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={free_port()}", "-m", "avmae.cli.train", "--config", str(config)]
    for item in overrides:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# The tiny shard geometry of the training tests: 2 s segments of 8 frames at short side 72, a 208-frame log-mel. Keys
# are the parameters of avmae-shard build (``num_frames`` for ``--num-frames``).
TINY_SHARDS = {"segment_seconds": "2", "num_frames": "8", "short_side": "72", "target_frames": "208",
               "shard_size": "2", "val_fraction": "0.25", "workers": "1"}
# Smaller still, for tests of the build itself (what becomes a sample or a failure, files, errors), not of its
# pixels or sounds: 2 frames of 32 px, a 64 x 32 log-mel, every input in split train.
SMALL_BUILD = {"num_frames": "2", "short_side": "32", "target_frames": "64", "num_mel_bins": "32", "val_fraction": "0"}


def build_flags(**options) -> list[str]:
    """TINY_SHARDS as ``avmae-shard build`` flags, ``options`` replacing or adding values."""
    chosen = {**TINY_SHARDS, **{name: str(value) for name, value in options.items()}}
    return [text for name, value in chosen.items() for text in (f"--{name.replace('_', '-')}", value)]


def build_arguments(corpus: Path, out: Path, *extra: str, as_json: bool = True, **options) -> list[str]:
    """``avmae-shard build`` arguments for ``corpus`` (a list file: ``--list``; a folder: ``--src``) into ``out``
    with the tiny geometry (``options`` replace its values, see build_flags); ``extra`` are more arguments (a list's
    ``--src``, switches)."""
    source = ["--src" if Path(corpus).is_dir() else "--list", str(corpus)]
    return ["build", *source, "--out", str(out), *build_flags(**options), *extra, *(["--json"] if as_json else [])]


def build_shards(corpus: Path, out: Path, *extra: str, exit_code: int = 0, as_json: bool = True, **options) -> Path:
    """``avmae-shard build`` (build_arguments), asserting its exit code; returns ``out``."""
    assert shard_main(build_arguments(corpus, out, *extra, as_json=as_json, **options)) == exit_code
    return out


def shard_members(folder: Path) -> dict[str, dict[str, bytes]]:
    """Every sample of the shard tars in ``folder``: its key -> its members' bytes by extension (``"json"``,
    ``"npy"``, ``"00.jpg"``: the member name after the key's dot, as webdataset splits it)."""
    import tarfile

    samples: dict[str, dict[str, bytes]] = {}
    for tar_path in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                key, _, ext = member.name.partition(".")
                samples.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return samples


def training_skips(config, batches: int) -> list[list[dict]]:
    """The ``skipped`` records of the first ``batches`` training batches of a loader over ``config`` (a DataConfig)."""
    from avmae.data.loader import build_loader

    stream = iter(build_loader(config, "train", train=True))
    return [next(stream)["skipped"] for _ in range(batches)]


def markdown_slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (and so MkDocs) gives a heading: code marks and punctuation dropped, lower
    case, runs of spaces and hyphens as one hyphen (Python-Markdown ``markdown/extensions/toc.py``, ``slugify``)."""
    text = unicodedata.normalize("NFKD", heading.replace("`", "")).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def markdown_anchors(page: Path) -> set[str]:
    """The anchors of a Markdown page's headings (fenced code left out)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {markdown_slug(heading) for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, flags=re.M)}
