"""avmae installed as users install it, not as the checkout runs it.

Fast: configs by name (``--config pretrain_as2m``) resolve to the YAML files shipped inside the package.
Slow: the wheel, installed without ``-e`` into a venv, runs synth -> build -> train -> eval from a folder outside the
checkout; and a wheelhouse made by pipelines/wheelhouse.sh installs avmae with ``--no-index`` into a venv whose
only preinstalled packages are torch and what torch needs (a node with PyTorch already installed)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from avmae.config import ConfigError, find_config, load, read, shipped_dir, shipped_names
from avmae.recipe.config import RunConfig

REPO = Path(__file__).resolve().parents[1]


# --- configs by name --------------------------------------------------------------------------------------------


def test_every_shipped_yaml_has_a_name():
    yamls = sorted((REPO / "avmae" / "configs").rglob("*.yaml"))
    assert len(shipped_names()) == len(yamls) >= 20
    assert {"pretrain_as2m", "demo_pretrain", "cavmae_pretrain", "model/tiny", "model/cavmae_base"} <= set(
        shipped_names())
    assert shipped_dir() == (REPO / "avmae" / "configs").resolve() or shipped_dir() == REPO / "avmae" / "configs"


def test_a_name_finds_the_shipped_recipe_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    for spelling in ("pretrain_as2m", "pretrain_as2m.yaml", "configs/pretrain_as2m.yaml"):
        assert find_config(spelling) == shipped_dir() / "pretrain_as2m.yaml"
    assert find_config("model/tiny") == shipped_dir() / "model" / "tiny.yaml"
    config = load(RunConfig, "pretrain_as2m")  # its model's base (model/avmae_vit_l_audioset.yaml) found beside it
    assert config.model.encoder.size == "large" and config.task == "pretrain"
    assert read("model/tiny")["encoder"]["width"] == 192


def test_a_file_of_that_name_wins_over_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrain_as2m.yaml").write_text("task: finetune\n")
    assert find_config("pretrain_as2m.yaml") == Path("pretrain_as2m.yaml")
    assert read("pretrain_as2m.yaml") == {"task": "finetune"}
    assert read("pretrain_as2m")["task"] == "pretrain"  # no file named exactly that: the shipped recipe


def test_a_users_recipe_extends_a_shipped_one_by_name(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: demo_pretrain.yaml\noptim: {steps: 7}\n")
    data = read(mine)
    assert data["optim"]["steps"] == 7 and data["optim"]["lr"] == 1.0e-3  # the rest from the shipped recipe
    assert data["model"]["encoder"]["width"] == 192  # and its own base, model/tiny.yaml, inside the package


def test_an_unknown_name_is_one_line_listing_the_shipped_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        find_config("pretrain_as3m")
    message = str(err.value)
    assert "\n" not in message and message.startswith("pretrain_as3m: no such config file")
    assert all(name in message for name in shipped_names())
    with pytest.raises(ConfigError, match="no such config file"):
        find_config("../avmae/configs/pretrain_as2m")  # names stay inside the shipped folder
    from avmae.cli.train import main

    assert main(["--config", "pretrain_as3m"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("avmae-train: pretrain_as3m: no such config file") \
        and "pretrain_as2m" in lines[0]


# --- the wheel, outside the checkout ----------------------------------------------------------------------------


def _sources(into: Path) -> Path:
    """What the wheel is built from (the package, pyproject.toml, README.md), copied: setuptools reuses build/ in
    the source folder and would pack what an earlier build left there."""
    into.mkdir()
    shutil.copytree(REPO / "avmae", into / "avmae", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, into / name)
    return into


def _run(command: list, cwd: Path, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
    return result


def _venv_env(environment: Path) -> dict:
    """The venv's scripts first on PATH, and nothing of the checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{environment / 'bin'}{os.pathsep}{env.get('PATH', '')}", "OMP_NUM_THREADS": "1"}


def _avmae_file(python: Path, cwd: Path, env: dict) -> Path:
    return Path(_run([python, "-c", "import avmae; print(avmae.__file__)"], cwd, env).stdout.strip())


def _install_the_wheel(tmp_path: Path) -> tuple[Path, Path, dict]:
    """The wheel built from a copy of the sources and installed without ``-e`` into a new venv: the venv, its
    python and the environment that runs it."""
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, _sources(tmp_path / "src")], tmp_path)
    wheel = next(wheels.glob("avmae-*.whl"))
    # --system-site-packages: torch, DeepSpeed and DALI as installed here. Here avmae is also installed editable,
    # whose import hook maps `avmae` to the checkout: the venv's own site-packages comes first on sys.path, and
    # avmae.__file__ says which one is imported.
    environment = tmp_path / "venv"
    venv.create(environment, system_site_packages=True, with_pip=False)
    python = environment / "bin" / "python"
    env = _venv_env(environment)
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--ignore-installed",
          wheel], tmp_path, env)
    return environment, python, env


def _assert_the_venvs_avmae_is_imported(environment: Path, python: Path, work: Path, env: dict) -> None:
    imported = _avmae_file(python, work, env)
    assert environment in imported.parents and REPO not in imported.parents, imported
    assert (imported.parent / "configs" / "pretrain_as2m.yaml").is_file()  # package data in the wheel
    assert Path(shutil.which("avmae-train", path=env["PATH"])).parent == environment / "bin"


def _synth_and_build_shards(work: Path, env: dict) -> int:
    """12 generated clips built into shards/ with a validation split; returns the validation split's size."""
    _run(["avmae-shard", "synth", "--out", "corpus", "--num", "12", "--classes", "4", "--seconds", "2",
          "--size", "96x64", "--workers", "1"], work, env)
    built = _run(["avmae-shard", "build", "--list", "corpus/corpus.csv", "--out", "shards", "--num-frames", "4",
                  "--short-side", "64", "--target-frames", "256", "--segment-seconds", "2", "--shard-size", "4",
                  "--workers", "1", "--val-fraction", "0.3", "--json", "--no-progress"], work, env)
    manifest = json.loads((work / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 12 and manifest["totals"]["failures"] == 0, built.stdout[-2000:]
    val = manifest["splits"]["val"]["samples"]
    assert val >= 2
    return val


def _pretrain_a_tiny_model(work: Path, env: dict) -> None:
    """avmae-train by recipe name, shrunk: 4 steps into run/, each logged."""
    tiny = ["model.encoder.width=64", "model.encoder.depth=2", "model.encoder.heads=2", "model.encoder.mlp=128",
            "model.encoder.joint_layers=1", "model.decoder.width=32", "model.decoder.depth=1", "model.decoder.heads=2",
            "model.decoder.mlp=64", "model.audio.frames=256", "model.video.frames=4", "model.video.size=64",
            "data.shards=shards", "data.batch_size=2", "data.workers=0", "optim.steps=4", "optim.warmup_steps=1",
            "checkpoint.every=2", "log.every=1", "log.progress=false", "log.tensorboard=false"]
    trained = _run(["avmae-train", "--config", "demo_pretrain", "--workdir", "run",
                    *[text for item in tiny for text in ("--set", item)]], work, env)
    result = json.loads([line for line in trained.stdout.splitlines() if line.startswith("{")][-1])
    assert result["step"] == 4 and result["finished"] is True
    logged = [json.loads(line)["step"] for line in (work / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert logged == [1, 2, 3, 4]


def _assert_the_installed_package_reads_the_export(python: Path, work: Path, env: dict) -> None:
    described = _run([python, "-c", "from avmae.export.format import read_export; import json; "
                      "state, info, path = read_export('run'); "
                      "print(json.dumps({'tensors': len(state), 'width': info.config.model.encoder.width, "
                      "'path': str(path)}))"], work, env)
    export = json.loads(described.stdout.strip().splitlines()[-1])
    assert export["tensors"] > 10 and export["width"] == 64 and (work / export["path"]).is_file()


def _evaluate_retrieval_on_val(work: Path, env: dict, val: int) -> None:
    _run(["avmae-eval", "--ckpt", "run", "--data", "shards", "--split", "val", "--task", "retrieval", "--out",
          "eval", "--batch-size", "2", "--workers", "0", "--backend", "torch"], work, env)
    metrics = json.loads((work / "eval" / "report.json").read_text())["metrics"]
    assert metrics["samples"] == val and metrics["chance"]["R@1"] == pytest.approx(1 / val)
    for direction in ("audio_to_video", "video_to_audio"):  # every pair ranked among val clips: R@10 = 1
        assert 0 <= metrics[direction]["R@1"] <= metrics[direction]["R@5"] <= metrics[direction]["R@10"] == 1.0


def _assert_the_library_reads_its_own_configs(python: Path, work: Path, env: dict) -> None:
    """The configs the library reads itself: CAV-MAE's architecture (the converter) and the GPU check's recipe."""
    _run(["avmae-convert", "cavmae", "--help"], work, env)
    reads = _run([python, "-c", "from avmae.models.convert_cavmae import cavmae_base; "
                  "from avmae.bench.gpu_check import RECIPE; from avmae.config import load; "
                  "from avmae.recipe.config import RunConfig; m = cavmae_base(); r = load(RunConfig, RECIPE); "
                  "print(m.encoder.size, m.decoder.depth, m.audio.frames, r.model.encoder.size)"], work, env)
    assert reads.stdout.split()[-4:] == ["base", "8", "1024", "large"]  # CAV-MAE's ViT-B; the recipe's ViT-L


@pytest.mark.slow
def test_the_wheel_runs_build_train_eval_outside_the_checkout(tmp_path):
    environment, python, env = _install_the_wheel(tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    _assert_the_venvs_avmae_is_imported(environment, python, work, env)
    val = _synth_and_build_shards(work, env)
    _pretrain_a_tiny_model(work, env)
    _assert_the_installed_package_reads_the_export(python, work, env)
    _evaluate_retrieval_on_val(work, env, val)
    _assert_the_library_reads_its_own_configs(python, work, env)


# --- an air-gapped install from a wheelhouse --------------------------------------------------------------------


def _torch_and_what_it_needs() -> list[Path]:
    """The installed files of torch, torchvision and torchaudio and of every package they require, as top-level
    entries of site-packages (package folders, modules, .dist-info folders)."""
    from packaging.requirements import Requirement

    names, seen, todo = set(), set(), [("torch", ""), ("torchvision", ""), ("torchaudio", "")]
    while todo:  # (package, extra) pairs: torch needs cuda-toolkit[cublas,cudart,...]
        name, extra = todo.pop()
        name = name.lower().replace("_", "-")
        if (name, extra) in seen:
            continue
        seen.add((name, extra))
        names.add(name)
        for text in importlib.metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": extra}):
                todo += [(requirement.name, "")] + [(requirement.name, e) for e in requirement.extras]
    entries = set()
    for name in names:
        distribution = importlib.metadata.distribution(name)
        for file in distribution.files or []:
            if file.parts[0] != ".." and not file.parts[0].endswith(".pth"):
                entries.add(Path(distribution.locate_file(file.parts[0])))
    return sorted(entries)


@pytest.mark.slow
@pytest.mark.network  # pip downloads the wheelhouse: pipelines/test.sh runs this outside the cluster's namespace
def test_a_wheelhouse_installs_avmae_with_no_index_beside_a_preinstalled_torch(tmp_path):
    wheelhouse = tmp_path / "wheelhouse"
    # This machine's Python and platform; torch left out (it is installed) and no DALI: about 130 MB of wheels.
    _run(["bash", REPO / "pipelines" / "wheelhouse.sh", wheelhouse, "--without-torch", "--dali", "none"], REPO,
         timeout=900)
    wheels = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    assert {"avmae", "deepspeed", "numpy", "scipy", "webdataset", "msgpack", "s3fs", "gcsfs"} <= wheels
    assert not wheels & {"torch", "torchvision", "torchaudio", "triton", "sympy"}  # what only torch needs
    constraints = (wheelhouse / "constraints.txt").read_text()
    assert "deepspeed==" in constraints and "torch==" not in constraints

    # The node: a venv with no site-packages but torch's own, the way a PyTorch container has it
    environment = tmp_path / "node"
    venv.create(environment, system_site_packages=False, with_pip=True)  # pip from Python's own bundled wheel
    preinstalled = tmp_path / "preinstalled"
    preinstalled.mkdir()
    for entry in _torch_and_what_it_needs():
        (preinstalled / entry.name).symlink_to(entry)
    python = environment / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout
                .strip())
    (site / "preinstalled.pth").write_text(f"{preinstalled}\n")
    # no index, mirror or find-links but the wheelhouse: no pip configuration file, no PIP_* settings
    env = {**{k: v for k, v in _venv_env(environment).items() if not k.startswith("PIP_")},
           "PIP_CONFIG_FILE": os.devnull}
    torch_before = _run([python, "-c", "import torch; print(torch.__version__)"], tmp_path, env).stdout.strip()

    # pipelines/setup.sh's air-gapped path: pip install --no-index --find-links wheelhouse -c constraints "avmae",
    # the node's torch kept (it is in range) and pinned for the install
    setup = _run(["bash", REPO / "pipelines" / "setup.sh"], tmp_path,
                 {**env, "AVMAE_PYTHON": str(python), "AVMAE_WHEELHOUSE": str(wheelhouse), "AVMAE_DALI": "none"})
    assert "installing avmae from" in setup.stderr and "installing torch" not in setup.stderr, setup.stderr
    _run([python, "-m", "pip", "check"], tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    imported = _avmae_file(python, work, env)
    assert environment in imported.parents, imported
    after = _run([python, "-c", "import torch, deepspeed, webdataset, scipy, s3fs, gcsfs, msgpack; "
                  "print(torch.__version__, torch.__file__)"], work, env).stdout.splitlines()[-1].split()
    assert after[0] == torch_before and Path(after[1]).parent.parent == preinstalled  # torch kept, not replaced
    model = _run(["avmae-bench", "model", "--config", "model/tiny", "--batch-size", "1", "--steps", "1"], work, env)
    counts = json.loads(model.stdout[model.stdout.index("{\n"):])
    # the shipped tiny model built and stepped by the installed packages
    assert counts["parameters"]["closed_form_equals_model"] is True and counts["parameters"]["total"] > 10**6
    assert counts["cpu_step"]["batch_size"] == 1 and counts["cpu_step"]["seconds"] > 0
