"""The one-command acceptance check of a GPU machine (pipelines/gpu_check.sh), and its CPU rehearsal.

Each step runs the commands a user runs (``avmae-shard build``, ``avmae-train``, ``avmae-eval``, torchrun) as child
processes, on shards built here from ffmpeg-made clips, and reads what they leave on disk:
  shards      synthetic clips (avmae.shard.inputs.synth) -> avmae-shard build
  decode      DALI's decode rate on those shards with the recipe's loader settings (``mixed`` = nvJPEG on a GPU)
  recipe      configs/pretrain_as2m.yaml's step time, MFU and peak memory (ViT-L, bf16) at several per-GPU batches
              (the recipe's 8, then 32, 64), up to the first out-of-memory; the fastest that fits is recommended
  feed        DALI's training feed alone (avmae-bench feed, data.workers processes) against the recipe step's rate
  collectives all-reduce / all-gather bandwidth on every local GPU (avmae/bench/collectives.py)
  resume      a 50-step run, and the same run stopped after 25 (``stop_after``) and resumed, both with torch's
              deterministic algorithms: equal losses (bit for bit on a CPU; within a stated tolerance in bf16 on a GPU)
  eval        a short fine-tune of that run, scored by avmae-eval through DALI and through the torch backend: the
              same samples, scores within a stated tolerance, metrics within what that tolerance allows
              (score_agreement)
On a CPU the same steps run at the sizes of gpu_check_mode.CPU. On a machine where the driver shows a GPU, ``auto``
is the GPU check, and a CPU run is a rehearsal that never passes: it cannot speak for that GPU. Only a GPU can
confirm: nvJPEG's rate and its rounding against libjpeg-turbo, bf16 numerics and MFU, NCCL's bandwidth, and that the
bf16 resume stays within its tolerance (GPU attention backward is not bit-reproducible).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import avmae
from avmae.bench.gpu_check_child import Child, StepFailed, run_child
from avmae.bench.gpu_check_mode import CPU, GPU, CheckMode
from avmae.bench.plan import HEADROOM
from avmae.bench.score_agreement import metric_tolerances
from avmae.config import load
from avmae.data.loader import build_loader
from avmae.distributed import gpus_of_machine
from avmae.eval.predictions import Predictions
from avmae.models.counts import parameter_counts, pretraining_flops
from avmae.recipe.config import RunConfig
from avmae.shard.writing.manifest import read_manifest

# The children import the avmae this process imported (a checkout's or an installed wheel's), wherever they run.
AVMAE_ROOT = Path(avmae.__file__).resolve().parents[1]
RECIPE = "pretrain_as2m"  # a shipped recipe's name (avmae.config.find_config), as a user's --config takes it
CHILD_TIMEOUT_S = 540  # one step may not eat the whole 10 minutes; a hung child is killed, and named


# The resume comparison's runs: avmae-train with torch's deterministic algorithms on, so that what can be reproduced
# bit for bit is. cuBLAS picks its reduction split by workspace, and with several workspaces in flight two runs may
# split a GEMM differently: one fixed 4096 KiB x 8 workspace makes its GEMMs reproducible (NVIDIA's cuBLAS
# documentation, "Results reproducibility"; torch's docs, "Reproducibility", which this setting comes from).
# warn_only=True: an op with no deterministic CUDA kernel warns (the warning lands in the run's log, which the check
# reads and reports) instead of stopping a run that cannot be rehearsed on a CPU. It also leaves the fused attention
# backward (flash / memory-efficient SDPA) on its default kernel, which sums dQ / dK / dV partials with atomic adds in
# whatever order the thread blocks finish: on a GPU in bf16 the two runs agree to bf16's rounding, not exactly, and
# the tolerance (gpu_check_mode.py loss_rtol) says how far. On a CPU in fp32 every kernel is deterministic: exact.
DETERMINISTIC_TRAIN = ("import runpy, torch; torch.use_deterministic_algorithms(True, warn_only=True); "
                       "torch.backends.cudnn.benchmark = False; "
                       "runpy.run_module('avmae.cli.train', run_name='__main__', alter_sys=True)")
DETERMINISTIC_ENV = {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def last_json(text: str) -> dict[str, Any]:
    lines = [line for line in text.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


class GpuCheck:
    def __init__(self, mode: CheckMode, out: Path):
        self.mode, self.out = mode, out
        self.shards = out / "shards"
        self.recipe_samples_per_s: float | None = None  # the recipe step's rate, once it passed: the feed's yardstick
        python_path = [str(AVMAE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path)}
        if mode.device == "cpu":  # two shared cores: one thread per process, as the tests run
            self.env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")

    def python(self, *args: str) -> list[str]:
        return [sys.executable, "-m", *args]

    def _run(self, command: list[str], name: str, env: dict[str, str] | None = None) -> Child:
        """``command`` as a child of the check, logged under ``name`` in its folder (environment: the check's)."""
        return run_child(command, self.out / name, self.env if env is None else env, CHILD_TIMEOUT_S)

    # --- shards and decode ---------------------------------------------------------------------------------------

    def build_shards(self) -> dict[str, Any]:
        from avmae.shard.inputs.synth import make_corpus

        mode = self.mode
        started = time.perf_counter()
        corpus = make_corpus(self.out / "clips", mode.clips, mode.classes, seconds=mode.clip_seconds,
                             width=mode.clip_size[0], height=mode.clip_size[1], workers=os.cpu_count() or 1)
        clips_s = time.perf_counter() - started
        child = self._run(self.python("avmae.cli.shard", "build", "--list", str(corpus), "--out", str(self.shards),
                                      "--val-fraction", "0.25", "--workers", str(os.cpu_count() or 1),
                                      *mode.shard_flags, "--json", "--no-progress"), "shard_build")
        manifest = read_manifest(self.shards)
        splits = {name: split["samples"] for name, split in manifest["splits"].items()}
        return {"clips": mode.clips, "clips_seconds": clips_s, "build_seconds": child.seconds,
                "samples": manifest["totals"]["samples"], "failures": manifest["totals"]["failures"],
                "splits": splits, "shards": sum(len(split["shards"]) for split in manifest["splits"].values()),
                "ok": manifest["totals"]["failures"] == 0 and min(splits.get("val", 0), splits.get("train", 0)) > 0}

    def recipe_config(self, model: tuple[str, ...], *extra: str) -> list[str]:
        """--set items: the recipe on these shards and this machine, with ``model`` overrides."""
        mode = self.mode
        return [f"data.shards={self.shards}", f"data.batch_size={mode.batch_size}", f"data.workers={mode.workers}",
                "data.backend=dali", "log.every=1", "log.progress=false", "log.tensorboard=false",
                "checkpoint.keep=1", *model, *extra]

    def decode(self) -> dict[str, Any]:
        """Training batches of the recipe's loader (DALI: the frames decoded, resized-cropped, flipped, normalised on
        the device), timed after the first (pipeline build), as the trainer receives them."""
        config = load(RunConfig, RECIPE, self.recipe_config(self.mode.recipe_model)).validate()
        device = torch.device(self.mode.device, 0) if self.mode.device == "cuda" else torch.device("cpu")
        stream = iter(build_loader(config.data, config.data.train_split, train=True, device=device))
        next(stream)
        started = time.perf_counter()
        for _ in range(self.mode.decode_batches):
            batch = next(stream)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - started
        samples = self.mode.decode_batches * config.data.batch_size
        return {"dali_device": "mixed" if device.type == "cuda" else "cpu", "batch_size": config.data.batch_size,
                "threads": config.data.workers, "frames_per_sample": config.data.num_frames,
                "crop": config.data.crop_size, "video": list(batch["video"].shape),
                "samples_per_s": samples / seconds, "frames_per_s": samples * config.data.num_frames / seconds,
                "ok": True}

    def feed(self) -> dict[str, Any]:
        """DALI's training feed alone, as ``avmae-bench feed`` measures it: the recipe's batch and frames read and
        checked by data.workers worker processes, no decode. A GPU must be fed several times what it consumes (4x,
        docs/performance.md#the-dali-feed): compared with the recipe step's rate measured before it."""
        from avmae.bench.feed import bench_feed

        config = load(RunConfig, RECIPE, self.recipe_config(self.mode.recipe_model)).validate()
        run = bench_feed(self.shards, config.data.train_split, [config.data.workers],
                         batch_size=config.data.batch_size, num_frames=config.data.num_frames,
                         iterations=self.mode.feed_iterations, repeats=3)["runs"][0]
        result = {"workers": config.data.workers, "batch_size": config.data.batch_size,
                  "frames_per_sample": config.data.num_frames, "samples_per_s": run["samples_per_s"]["median"],
                  "trainer_cpu_ms_per_sample": run["trainer_cpu_ms_per_sample"]["median"],
                  "worker_cpu_ms_per_sample": run["worker_cpu_ms_per_sample"]["median"], "ok": True}
        if self.recipe_samples_per_s:  # the recipe step passed
            result["times_the_recipe_step"] = result["samples_per_s"] / self.recipe_samples_per_s
        return result

    # --- the recipe's step ---------------------------------------------------------------------------------------

    def train(self, name: str, *items: str, deterministic: bool = False) -> tuple[Child, dict[str, Any], Path]:
        workdir = self.out / name
        sets = [text for item in items for text in ("--set", item)]
        command, env = self.python("avmae.cli.train", "--config", str(RECIPE), "--workdir", str(workdir), *sets), self.env
        if deterministic:
            command = [sys.executable, "-c", DETERMINISTIC_TRAIN, "--config", str(RECIPE), "--workdir", str(workdir),
                       *sets]
            env = {**env, **DETERMINISTIC_ENV}
        child = self._run(command, f"{name}_train", env)
        return child, last_json(child.stdout), workdir

    def recipe_step(self) -> dict[str, Any]:
        """The recipe's step at each per-GPU batch of ``mode.sweep_batches`` (the recipe's own first), smallest first,
        until one runs out of memory (recorded, not a failure: the sweep's end). The recommended batch is the fastest
        (samples/s) whose peak memory leaves the capacity plan's headroom free (avmae/bench/plan.py HEADROOM): the
        caching allocator's fragmentation, the CUDA context and NCCL's buffers are not in max_memory_allocated."""
        mode = self.mode
        limit_gib = None
        if mode.device == "cuda":
            limit_gib = torch.cuda.get_device_properties(0).total_memory * (1 - HEADROOM) / 2**30
        sweep: list[dict[str, Any]] = []
        for batch in mode.sweep_batches:
            try:
                sweep.append(self.recipe_at(batch))
            except StepFailed as err:
                if not out_of_memory(self.out / f"recipe_b{batch}_train"):
                    raise
                if batch == mode.batch_size:
                    raise StepFailed(f"the recipe's own batch {batch} runs out of GPU memory: {err}") from None
                sweep.append({"batch_per_gpu": batch, "out_of_memory": True})
                break
            finally:
                _remove(self.out / f"recipe_b{batch}" / "checkpoints")  # ViT-L's ZeRO checkpoint: ~9 GB of disk
        recommended = recommend_batch(sweep, limit_gib)
        own = next(run for run in sweep if run["batch_per_gpu"] == mode.batch_size)
        self.recipe_samples_per_s = own["samples_per_s"]
        return {**own, "sweep": sweep, "recommended_batch_per_gpu": recommended, "memory_limit_gib": limit_gib,
                "headroom": HEADROOM, "out_of_memory_at": next((run["batch_per_gpu"] for run in sweep
                                                                if run.get("out_of_memory")), None), "ok": True}

    def recipe_at(self, batch: int) -> dict[str, Any]:
        """configs/pretrain_as2m.yaml at ``batch`` per GPU: step time, samples/s, MFU, peak memory, from the
        trainer's own metrics after ``mode.recipe_warmup`` steps."""
        mode = self.mode
        items = self.recipe_config(mode.recipe_model, f"data.batch_size={batch}", f"optim.steps={mode.recipe_steps}",
                                   "optim.warmup_steps=1", f"checkpoint.every={mode.recipe_steps}",
                                   "checkpoint.export=false")
        child, _, workdir = self.train(f"recipe_b{batch}", *items)
        config = load(RunConfig, RECIPE, items).validate()
        timed = [m for m in metrics(workdir) if m["step"] > mode.recipe_warmup and "samples_per_s" in m]
        rate = statistics.median(m["samples_per_s"] for m in timed)
        flops = pretraining_flops(config.model)["forward_backward"]
        return {"model_parameters_millions": parameter_counts(config.model)["total"] / 1e6,
                "precision": "bf16" if mode.device == "cuda" else "fp32", "batch_per_gpu": config.data.batch_size,
                "steps_timed": len(timed), "step_seconds": config.data.batch_size / rate, "samples_per_s": rate,
                "achieved_tflops": rate * flops / 1e12, "gflops_per_sample": flops / 1e9,
                "mfu": statistics.median(m["mfu"] for m in timed) if "mfu" in timed[0] else None,
                "peak_tflops": config.peak_tflops if mode.device == "cuda" else None,
                "peak_gpu_memory_gib": max(m["peak_memory_gb"] for m in timed) if "peak_memory_gb" in timed[0]
                else None, "peak_host_rss_gib": child.max_rss_gib, "encoder": config.model.encoder.size,
                "seconds": child.seconds}

    # --- collectives ---------------------------------------------------------------------------------------------

    def collectives(self) -> dict[str, Any]:
        mode = self.mode
        processes = torch.cuda.device_count() if mode.device == "cuda" else 2  # gloo: 2 CPU processes stand in
        if processes < 2:
            return {"processes": processes, "ok": True,
                    "note": "one GPU: no NCCL traffic to measure (all-reduce over one rank copies nothing)"}
        from avmae.distributed import free_port

        out = self.out / "collectives.json"
        self._run(self.python("torch.distributed.run", f"--nproc_per_node={processes}",
                              f"--master_port={free_port()}", "-m", "avmae.bench.collectives", str(out),
                              str(mode.collective_mebibytes), str(mode.collective_iterations)), "collectives")
        return {**json.loads(out.read_text()), "ok": True}

    # --- 50 steps, stopped and resumed ---------------------------------------------------------------------------

    def resume(self) -> dict[str, Any]:
        mode = self.mode
        items = self.recipe_config(mode.check_model, f"optim.steps={mode.steps}", "optim.warmup_steps=5",
                                   "optim.lr=1e-3", f"checkpoint.every={mode.steps}")
        _, straight, straight_dir = self.train("straight", *items, deterministic=True)
        _, stopped, resumed_dir = self.train("resumed", *items, f"stop_after={mode.stop_after}", deterministic=True)
        stopped_log = (self.out / "resumed_train.err").read_text()  # the second run writes the same log
        _, resumed, _ = self.train("resumed", *items, deterministic=True)
        expected = {m["step"]: m["loss"] for m in metrics(straight_dir) if "loss" in m}
        got = {m["step"]: m["loss"] for m in metrics(resumed_dir) if "loss" in m}
        steps = list(range(1, mode.steps + 1))

        def gap(span) -> float:
            return max(abs(got[s] - expected[s]) / max(abs(expected[s]), 1e-12) for s in span)

        complete = sorted(p.parent.name for p in (resumed_dir / "checkpoints").glob("step*/complete.json"))
        logged = sorted(got) == steps == sorted(expected)
        before = gap(range(1, mode.stop_after + 1)) if logged else None
        after = gap(range(mode.stop_after + 1, mode.steps + 1)) if logged else None
        ok = (logged and straight.get("finished") is True and stopped.get("step") == mode.stop_after
              and stopped.get("finished") is False and resumed.get("step") == mode.steps
              and resumed.get("finished") is True and max(before, after) <= mode.loss_rtol)
        logs = [(self.out / "straight_train.err").read_text(), stopped_log, (self.out / "resumed_train.err").read_text()]
        return {"steps": mode.steps, "stopped_at": stopped.get("step"), "resumed_to": resumed.get("step"),
                "checkpoints": complete, "all_steps_logged": logged, "max_rel_gap_before_stop": before,
                "max_rel_gap_after_resume": after, "rtol": mode.loss_rtol,
                "exact": bool(logged and before == 0.0 and after == 0.0), "deterministic_algorithms": True,
                "nondeterministic_ops": nondeterministic_ops(logs),
                "first_loss": expected.get(1), "last_loss": expected.get(mode.steps), "ok": bool(ok)}

    # --- evaluation through both loaders ------------------------------------------------------------------------

    def evaluation(self) -> dict[str, Any]:
        mode = self.mode
        self.train("finetune", *self.recipe_config(
            mode.check_model, "task=finetune", "init.kind=avmae", f"init.path={self.out / 'resumed'}",
            f"optim.steps={mode.finetune_steps}", "optim.warmup_steps=1", "optim.lr=1e-3",
            f"checkpoint.every={mode.finetune_steps}"))
        reports, scores = {}, {}
        for backend in ("dali", "torch"):
            out = self.out / f"eval_{backend}"
            self._run(self.python("avmae.cli.eval", "--ckpt", str(self.out / "finetune"), "--data", str(self.shards),
                                  "--split", "val", "--task", "vggsound", "--backend", backend, "--device",
                                  mode.device, "--batch-size", str(mode.batch_size), "--workers", str(mode.workers),
                                  "--out", str(out)), f"eval_{backend}")
            reports[backend] = json.loads((out / "report.json").read_text())
            scores[backend] = Predictions.load(out / "predictions.npz")
        dali, on_torch = scores["dali"], scores["torch"]
        same_keys = list(dali.keys) == list(on_torch.keys)
        gap = max(float(np.abs(dali.scores[h] - on_torch.scores[h]).max()) for h in dali.scores) if same_keys else None
        metrics_dali, metrics_torch = reports["dali"]["metrics"], reports["torch"]["metrics"]
        numbers = sorted(k for k, v in metrics_torch.items() if isinstance(v, (int, float)))
        # The check's task (vggsound) has one single-label head: its top-k may differ by the close calls the measured
        # gap allows (score_agreement.py); every other number must be equal.
        (head,) = on_torch.scores
        tolerances = (metric_tolerances(on_torch.scores[head], on_torch.targets[head], gap or 0.0, numbers)
                      if same_keys else {})
        within = same_keys and all(metrics_dali.get(k) is not None and
                                   abs(metrics_dali[k] - metrics_torch[k]) <= tolerances[k] for k in numbers)
        equal = same_keys and all(metrics_dali.get(k) == metrics_torch[k] for k in numbers)
        return {"split": "val", "samples": len(on_torch.keys), "same_keys": same_keys,
                "metrics_dali": {k: metrics_dali.get(k) for k in numbers},
                "metrics_torch": {k: metrics_torch[k] for k in numbers},
                "metrics_equal": bool(equal), "metric_tolerances": tolerances, "metrics_within": bool(within),
                "max_score_gap": gap, "score_atol": mode.score_atol,
                "ok": bool(within and gap is not None and gap <= mode.score_atol)}


def recommend_batch(sweep: list[dict[str, Any]], limit_gib: float | None) -> int | None:
    """Marks each batch that ran ``fits`` (peak GPU memory within ``limit_gib``; None: no GPU, no limit) and returns
    the batch with the most samples/s among those that fit (None when none does)."""
    ran = [run for run in sweep if not run.get("out_of_memory")]
    for run in ran:
        run["fits"] = limit_gib is None or run["peak_gpu_memory_gib"] <= limit_gib
    fitting = [run for run in ran if run["fits"]]
    return max(fitting, key=lambda run: run["samples_per_s"])["batch_per_gpu"] if fitting else None


def nondeterministic_ops(logs: list[str]) -> list[str]:
    """torch's warnings, under warn_only determinism, of the ops that ran their non-deterministic kernel (each once):
    "... does not have a deterministic implementation ..." and the fused attention's "... defaults to a
    non-deterministic algorithm ..."."""
    found = []
    for text in logs:
        for line in text.splitlines():
            if ("deterministic implementation" in line or "non-deterministic algorithm" in line) and \
                    line.strip() not in found:
                found.append(line.strip())
    return found


def out_of_memory(log: Path) -> bool:
    """Whether a child's stderr shows torch's CUDA allocator failing (torch.OutOfMemoryError: "CUDA out of
    memory. Tried to allocate ...")."""
    err = Path(f"{log}.err")
    return err.exists() and ("CUDA out of memory" in (text := err.read_text()) or "OutOfMemoryError" in text)


def metrics(workdir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def machine(mode: CheckMode) -> dict[str, Any]:
    import platform

    info = {"mode": mode.device, "host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "visible_gpus": gpus_of_machine().count}
    if mode.device == "cuda":
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def rehearsal_only(mode: CheckMode, gpus: int) -> str | None:
    """Why a run cannot pass on this machine although its steps may: the CPU mode beside GPUs the driver shows."""
    if mode.device == "cpu" and gpus > 0:
        return f"{gpus} GPU(s) visible: a CPU rehearsal says nothing about them (run --mode cuda)"
    return None


def run_check(out: Path, mode: CheckMode | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Every step in order; a failed step is recorded with its one line and the steps that need it are skipped.
    ``out/gpu_check.json`` is rewritten after each step, so a check cut short still leaves what it measured."""
    mode = mode or (GPU if torch.cuda.is_available() or gpus_of_machine().count else CPU)
    out = Path(out).absolute()  # the children run inside it
    out.mkdir(parents=True, exist_ok=True)
    check = GpuCheck(mode, out)
    result: dict[str, Any] = {"machine": machine(mode), "notes": list(mode.notes), "steps": {}}
    started = time.perf_counter()
    gpus = result["machine"]["visible_gpus"]
    if rehearsal_only(mode, gpus):
        result["rehearsal_only"] = rehearsal_only(mode, gpus)
        result["notes"].append(f"NOT A GPU CHECK: {result['rehearsal_only']}")
    if mode.device == "cuda" and not torch.cuda.is_available():  # every step would fail the same way: say it once
        result["steps"]["cuda"] = {"ok": False, "seconds": 0.0, "error": (
            f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none: a CPU build'}) cannot use a GPU here "
            f"({gpus} shown by the NVIDIA driver): install a torch built for this driver's CUDA")}
        result.update(wall_seconds=0.0, passed=False)
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
        return result
    needs = {"decode": "shards", "recipe": "shards", "feed": "shards", "resume": "shards", "eval": "resume"}
    for name, step in (("shards", check.build_shards), ("decode", check.decode), ("recipe", check.recipe_step),
                       ("feed", check.feed), ("collectives", check.collectives), ("resume", check.resume),
                       ("eval", check.evaluation)):
        before = needs.get(name)
        if before and not result["steps"].get(before, {}).get("ok"):
            result["steps"][name] = {"ok": False, "error": f"skipped: step {before} did not pass"}
            continue
        step_started = time.perf_counter()
        try:
            result["steps"][name] = step()
        except (StepFailed, OSError, ValueError, RuntimeError, KeyError, StopIteration) as err:
            result["steps"][name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        result["steps"][name]["seconds"] = time.perf_counter() - step_started
        log(f"gpu_check: {name}: {'ok' if result['steps'][name]['ok'] else result['steps'][name]['error']} "
            f"({result['steps'][name]['seconds']:.0f} s)")
        result["wall_seconds"] = time.perf_counter() - started
        result["passed"] = all(s["ok"] for s in result["steps"].values()) and "rehearsal_only" not in result
        (out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    return result
