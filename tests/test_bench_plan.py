"""avmae-bench plan: each figure against an independent computation (DeepSpeed's own estimators, the FLOP count of
avmae/models/counts.py, a direct full-depth measurement, real shards on disk)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from avmae.bench.activations import measure_activations, step_peak_bytes
from avmae.bench.live_memory import LiveTensorBytes
from avmae.bench.model_states import (largest_layer_parameters, model_state_bytes, model_state_sources,
                                      trained_parameters)
from avmae.bench.plan import (AUDIOSET_2M_CLIPS, BUILD_CLIPS_PER_CORE_S, GIB, MEASURED_BYTES_PER_SAMPLE,
                              PlanInputs, capacity_plan)
from avmae.bench.plan_run import load_recipe
from avmae.cli.bench import main as bench_main
from avmae.config import from_dict, to_dict
from avmae.models.avmae import AVMAE
from avmae.models.config import ModelConfig
from avmae.models.counts import parameter_counts, pretraining_flops
from tests.helpers import REPO, TINY_MODEL

RECIPE = REPO / "configs" / "pretrain_as2m.yaml"
VIT_L_PARAMETERS = 595_849_984  # docs/models.md: 595.85 M (avmae-bench model); Scenic has no modality embeddings


def _tiny() -> ModelConfig:
    return from_dict(ModelConfig, json.loads(json.dumps(TINY_MODEL))).validate()


# ---- model states: DeepSpeed's own estimators -------------------------------------------------------------------

VIT_L_LARGEST_LAYER = 1024 * 4096 + 4096  # ViT-L's MLP input layer


def _deepspeed_zero2(gpus: int, parameters: int = VIT_L_PARAMETERS) -> int:
    """DeepSpeed's stage-2 bytes per GPU (no offload) on nodes of 8 GPUs: the reference the plan's figures equal."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    per_node = min(gpus, 8)
    return estimate_zero2_model_states_mem_needs(parameters, per_node, gpus // per_node, cpu_offload=False)[1]


def _deepspeed_zero3(gpus: int, offload_optimizer: bool = False) -> tuple[int, int]:
    """DeepSpeed's stage-3 bytes per GPU for ViT-L (parameters kept on the GPU) and its gathered largest layer."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    per_node = min(gpus, 8)
    _, gpu, gathered = estimate_zero3_model_states_mem_needs(
        VIT_L_PARAMETERS, VIT_L_LARGEST_LAYER, per_node, gpus // per_node, cpu_offload=offload_optimizer,
        cpu_offload_params=False)
    return gpu, gathered


@pytest.mark.parametrize("gpus", [1, 8, 64, 256])
def test_model_states_are_deepspeeds_estimates_plus_what_they_leave_out(gpus):
    p, largest = VIT_L_PARAMETERS, VIT_L_LARGEST_LAYER
    zero2, (zero3, gathered) = _deepspeed_zero2(gpus), _deepspeed_zero3(gpus)
    stage2 = model_state_bytes(p, gpus, 2)
    assert stage2["deepspeed_estimate"] == stage2["total"] == zero2
    stage3 = model_state_bytes(p, gpus, 3, largest)
    assert stage3["deepspeed_estimate"] == zero3
    # The bf16 parameter partition, left out of DeepSpeed's no-offload stage-3 figure, is what the same estimator
    # keeps on the GPU beside the gathered layer when only the optimizer is offloaded.
    with_optimizer_offloaded, _ = _deepspeed_zero3(gpus, offload_optimizer=True)
    assert stage3["zero3_bf16_parameter_partition"] == pytest.approx(with_optimizer_offloaded - gathered, abs=1)
    assert stage3["total"] == zero3 + stage3["zero3_bf16_parameter_partition"]
    # DeepSpeed has no stage-1 estimator: its stage-2 figure plus the whole bf16 gradients' unpartitioned remainder.
    stage1 = model_state_bytes(p, gpus, 1)
    assert stage1["deepspeed_estimate"] == zero2
    assert stage1["total"] == pytest.approx(zero2 + 2 * p - 2 * p / gpus, abs=1)
    assert model_state_sources(1)["deepspeed_estimate"].startswith("DeepSpeed estimate_zero2")
    assert model_state_sources(3)["deepspeed_estimate"] == "DeepSpeed estimate_zero3_model_states_mem_needs"


def test_zero2_matches_the_printed_all_cold_estimate():
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        estimate_zero2_model_states_mem_needs_all_cold(VIT_L_PARAMETERS, num_gpus_per_node=8, num_nodes=8)
    line = next(l for l in out.getvalue().splitlines() if "offload_optimizer=none" in l)
    printed = float(re.findall(r"([\d.]+)GB", line)[1])  # "per CPU | per GPU": the second figure, in GiB
    assert round(model_state_bytes(VIT_L_PARAMETERS, 64, 2)["total"] / GIB, 2) == printed


def test_parameter_count_and_largest_layer_equal_deepspeeds_count_of_the_built_model():
    from deepspeed.runtime.zero.stage3 import model_to_params

    config = _tiny()
    model = AVMAE(config)
    assert trained_parameters(config) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    total, largest = model_to_params(model)  # what estimate_zero3_model_states_mem_needs_all_live counts
    assert (parameter_counts(config)["total"], largest_layer_parameters(config)) == (total, largest)
    recipe = load_recipe(RECIPE, []).model
    assert trained_parameters(recipe) == VIT_L_PARAMETERS
    assert largest_layer_parameters(recipe) == VIT_L_LARGEST_LAYER


# ---- activations: the counter, and the extrapolation against a direct measurement --------------------------------

def test_live_tensor_bytes_counts_what_is_alive():
    weight = torch.randn(256, 1024)  # made before: its views are not counted
    with LiveTensorBytes() as live:
        x = torch.randn(64, 256)  # 64 KiB
        y = x @ weight  # 256 KiB
        z = weight.t()  # a view of a tensor from before
        del x
        w = y * 2  # 256 KiB more, x gone
    assert live.peak == 2 * 64 * 1024 * 4  # y and w; x (64 KiB) was freed before w was made
    assert live.settle() == 2 * 64 * 1024 * 4
    del y, w, z


@pytest.mark.slow  # about a minute on this loaded 2-core machine: 11 bf16 steps under the counting mode
def test_activations_extrapolated_from_shallow_models_equal_the_full_depth_model():
    config = replace(_tiny(), encoder=replace(_tiny().encoder, depth=4, joint_layers=2),
                     decoder=replace(_tiny().decoder, depth=2))
    measured = measure_activations(config)
    assert measured["depths"] == {"modality": 2, "joint": 2, "decoder": 2}
    direct = {}
    for key, checkpointing in (("stored", False), ("checkpointed", True)):
        direct[key] = step_peak_bytes(replace(config, activation_checkpointing=checkpointing))["peak"]
        assert measured[key]["bytes_per_sample"] == pytest.approx(direct[key], rel=0.02)
        assert all(size > 0 for size in measured[key]["per_block"].values())
    assert measured["checkpointed"]["bytes_per_sample"] < measured["stored"]["bytes_per_sample"]
    # Linear in the batch, which the plan relies on when it scales to the per-GPU batch.
    assert step_peak_bytes(config, batch=2)["peak"] == pytest.approx(2 * direct["stored"], rel=0.05)


# ---- the plan's arithmetic ---------------------------------------------------------------------------------------

def _activations(stored: float, checkpointed: float) -> dict:
    return {"method": "given", "stored": {"bytes_per_sample": stored, "attention_kernels": []},
            "checkpointed": {"bytes_per_sample": checkpointed, "attention_kernels": []}}


def test_plan_numbers_follow_from_the_flop_count_and_stated_constants():
    recipe = load_recipe(RECIPE, [])
    plan = capacity_plan(recipe, PlanInputs(gpus=64), _activations(400 * 2**20, 80 * 2**20))
    flops = pretraining_flops(recipe.model, global_batch=512)["forward_backward"]
    assert flops == pytest.approx(827e9, rel=1e-3)  # docs/models.md: 827 GFLOPs per sample
    per_gpu = 0.40 * 989e12 / flops
    assert plan["throughput"]["samples_per_s_per_gpu"] == pytest.approx(per_gpu)
    assert round(per_gpu) == 478 and round(per_gpu * 16, -2) == 7700  # docs/performance.md: ~480 samples/s, ~7,700 frames/s
    assert plan["loader"]["frames_per_s_per_gpu"] == pytest.approx(per_gpu * 16)
    assert plan["throughput"]["epoch_days"] == pytest.approx(AUDIOSET_2M_CLIPS / (64 * per_gpu) / 86400)
    assert plan["storage"]["dataset_tb"] == pytest.approx(AUDIOSET_2M_CLIPS * MEASURED_BYTES_PER_SAMPLE / 1e12)
    assert plan["storage"]["read_mb_per_s_per_node"] == pytest.approx(8 * per_gpu * MEASURED_BYTES_PER_SAMPLE / 1e6)
    assert plan["shard_build"]["core_hours"] == pytest.approx(AUDIOSET_2M_CLIPS / BUILD_CLIPS_PER_CORE_S / 3600)
    memory = plan["memory_gib_per_gpu"]
    assert memory["total"]["stored"] == pytest.approx((_deepspeed_zero2(64) + 2 * 5e7 * 2 + 8 * 400 * 2**20) / GIB)
    a100 = capacity_plan(recipe, PlanInputs(gpus=64, gpu="a100"), _activations(1, 1))
    assert a100["throughput"]["samples_per_s_per_gpu"] == pytest.approx(per_gpu * 312 / 989)


def test_plan_suggests_what_fits():
    recipe = load_recipe(RECIPE, [])
    usable = 80 * GIB * 0.9
    # Stored activations of 8 samples cannot fit, checkpointed ones can: checkpointing, at the cheapest stage.
    plan = capacity_plan(recipe, PlanInputs(gpus=8), _activations(usable / 8, 2 * GIB))
    memory = plan["memory_gib_per_gpu"]
    assert not memory["fits"]["stored"] and memory["fits"]["checkpointed"]
    suggested = memory["suggested"]
    assert suggested["activation_checkpointing"] and suggested["zero_stage"] == 1
    whole_gradients = 2 * VIT_L_PARAMETERS * (1 - 1 / 8)  # stage 1 (DeepSpeed's stage-2 figure has a 1/8 share)
    fixed = _deepspeed_zero2(8) + whole_gradients + 2 * 5e7 * 2
    assert suggested["max_batch_per_gpu"] == int((usable - fixed) // (2 * GIB))
    # Model states alone decide the stage: at one GPU ZeRO-1/2 keep ~10 GiB of states, so a tight budget needs 3.
    tight = usable - (_deepspeed_zero3(1)[0] + 2 * VIT_L_PARAMETERS) - 1  # + the bf16 parameters (one rank: all)
    assert capacity_plan(recipe, PlanInputs(gpus=1, batch_per_gpu=1), _activations(tight, tight))[
        "memory_gib_per_gpu"]["suggested"]["zero_stage"] == 3


def test_cli_prints_json_and_a_table(tmp_path, capsys):
    recipe = load_recipe(RECIPE, [])
    model = to_dict(recipe.model)
    model.pop("activation_checkpointing")
    cache = tmp_path / "activations.json"
    cache.write_text(json.dumps({**_activations(400 * 2**20, 80 * 2**20), "model": model}))
    assert bench_main(["plan", "--config", str(RECIPE), "--gpus", "256", "--zero", "3", "--json",
                       "--activations", str(cache)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["inputs"]["zero_stage"] == 3 and plan["inputs"]["nodes"] == 32
    sources = plan["memory_gib_per_gpu"]["sources"]  # which estimator gave each figure
    assert sources["model_states.deepspeed_estimate"] == "DeepSpeed estimate_zero3_model_states_mem_needs"
    assert sources["model_states.zero3_bf16_parameter_partition"].startswith("avmae:")
    assert plan["memory_gib_per_gpu"]["model_states"]["deepspeed_estimate"] == _deepspeed_zero3(256)[0] / GIB
    assert bench_main(["plan", "--config", str(RECIPE), "--gpus", "8", "--gpu", "a100",
                       "--activations", str(cache)]) == 0
    table = capsys.readouterr().out
    assert "measured here" in table and "DeepSpeed estimate_zero2_model_states_mem_needs" in table and "A100" in table
    assert "ZeRO-3" not in table.split("suggested")[0]  # stage 2: no stage-3 addition listed
    # A measurement of another model is refused, in one line.
    assert bench_main(["plan", "--config", str(RECIPE), "--gpus", "8", "--set", "model.decoder.depth=2",
                       "--activations", str(cache)]) == 2
    assert "another model" in capsys.readouterr().err


def test_cli_json_is_the_only_output_on_stdout(tmp_path):
    """DeepSpeed logs to stdout when first imported; in a fresh process that line must not precede the JSON."""
    model = to_dict(load_recipe(RECIPE, []).model)
    model.pop("activation_checkpointing")
    cache = tmp_path / "activations.json"
    cache.write_text(json.dumps({**_activations(1, 1), "model": model}))
    result = subprocess.run([sys.executable, "-m", "avmae.cli.bench", "plan", "--config", str(RECIPE), "--gpus", "8",
                             "--json", "--activations", str(cache)], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["memory_gib_per_gpu"]["model_states"]["total"] == _deepspeed_zero2(8) / GIB


# ---- shard bytes per sample: real shards at the recipe's geometry ------------------------------------------------

def test_bytes_per_sample_of_real_shards_matches_the_recorded_default(tmp_path, capsys):
    from avmae.bench.shard import make_bench_clips
    from avmae.bench.shard_size import shard_bytes_per_sample
    from avmae.cli.shard import main as shard_main

    clips = make_bench_clips(tmp_path / "clips", 2, workers=1)  # 10 s 640x360 H.264/AAC, as the default's
    out = tmp_path / "shards"
    assert shard_main(["build", "--src", str(clips), "--out", str(out), "--workers", "1"]) == 0
    capsys.readouterr()
    measured = shard_bytes_per_sample(out)
    on_disk = sum(f.stat().st_size for f in out.iterdir() if f.suffix in (".tar", ".idx", ".crc", ".labels"))
    assert measured["samples"] == 2 and measured["bytes_per_sample"] == on_disk / 2
    assert measured["features"]["num_frames"] == load_recipe(RECIPE, []).model.video.frames
    assert measured["bytes_per_sample"] == pytest.approx(MEASURED_BYTES_PER_SAMPLE, rel=0.03)
    cache = tmp_path / "activations.json"
    model = to_dict(load_recipe(RECIPE, []).model)
    model.pop("activation_checkpointing")
    cache.write_text(json.dumps({**_activations(1, 1), "model": model}))
    assert bench_main(["plan", "--config", str(RECIPE), "--gpus", "8", "--shards", str(out), "--json",
                       "--activations", str(cache)]) == 0
    storage = json.loads(capsys.readouterr().out)["storage"]
    assert storage["bytes_per_sample"] == measured["bytes_per_sample"] and str(out) in storage["bytes_source"]


# ---- the batch plan: the recipe's global batch on any GPU count --------------------------------------------------

# The activations the capacity plan measured for ViT-L on 2026-12-07 (docs/performance.md): 426 / 84 MiB per sample.
VIT_L_ACTIVATIONS = _activations(426 * 2**20, 84 * 2**20)


def test_batch_plan_keeps_the_recipes_global_batch_of_512():
    recipe = load_recipe(RECIPE, [])
    on_64 = capacity_plan(recipe, PlanInputs(gpus=64), VIT_L_ACTIVATIONS)["batch_plan"]
    assert on_64["global_batch"] == 512 and on_64["kept"]
    assert (on_64["batch_per_gpu"], on_64["grad_accum"]) == (8, 1) and on_64["meets_target"]
    assert on_64["activation_checkpointing"] is False
    on_8 = capacity_plan(recipe, PlanInputs(gpus=8), VIT_L_ACTIVATIONS)["batch_plan"]
    fixed = _deepspeed_zero2(8) + 2 * 5e7 * 2
    assert on_8["max_batch_per_gpu"] == int((80 * GIB * 0.9 - fixed) // (426 * 2**20)) == 166
    assert (on_8["batch_per_gpu"], on_8["grad_accum"]) == (64, 1)
    per_gpu = 0.40 * 989e12 / pretraining_flops(recipe.model, global_batch=512)["forward_backward"]
    assert on_8["optimizer_step_seconds"] == pytest.approx(64 / per_gpu)
    # 1.5 GiB a sample: 46 fit, so 64 = 32 x 2 (the largest divisor of 64 that fits)
    tight = capacity_plan(recipe, PlanInputs(gpus=8), _activations(1.5 * GIB, 0.3 * GIB))["batch_plan"]
    assert tight["max_batch_per_gpu"] == int((80 * GIB * 0.9 - fixed) // (1.5 * GIB)) == 46
    assert (tight["batch_per_gpu"], tight["grad_accum"]) == (32, 2) and tight["meets_target"]
    # On 256 GPUs the share is 2 samples: kept, but below the batch the MFU is assumed at, and said so.
    wide = capacity_plan(recipe, PlanInputs(gpus=256), VIT_L_ACTIVATIONS)["batch_plan"]
    assert (wide["batch_per_gpu"], wide["grad_accum"]) == (2, 1) and not wide["meets_target"]
    assert "below the batch 8" in wide["note"]
    # Not even one stored sample fits: checkpointed, and the share split further.
    huge = capacity_plan(recipe, PlanInputs(gpus=8), _activations(80 * GIB, 5 * GIB))["batch_plan"]
    assert huge["activation_checkpointing"] is True and huge["max_batch_per_gpu"] == 13
    assert (huge["batch_per_gpu"], huge["grad_accum"]) == (8, 8)


def test_batch_plan_of_a_count_that_does_not_divide_the_global_batch_says_so():
    recipe = load_recipe(RECIPE, [])
    odd = capacity_plan(recipe, PlanInputs(gpus=48), VIT_L_ACTIVATIONS)["batch_plan"]
    assert not odd["kept"] and odd["batch_per_gpu"] is None and "48 GPUs" in odd["note"]
    given = capacity_plan(recipe, PlanInputs(gpus=48, global_batch=480, mfu_batch=32), VIT_L_ACTIVATIONS)
    assert (given["batch_plan"]["batch_per_gpu"], given["batch_plan"]["grad_accum"]) == (10, 1)
    assert not given["batch_plan"]["meets_target"] and given["batch_plan"]["global_batch_source"] == "given"
    with pytest.raises(ValueError, match="global batch"):
        capacity_plan(recipe, PlanInputs(gpus=8, global_batch=0), VIT_L_ACTIVATIONS)


def test_cli_target_mfu_prints_the_batch_plan(tmp_path, capsys):
    model = to_dict(load_recipe(RECIPE, []).model)
    model.pop("activation_checkpointing")
    cache = tmp_path / "activations.json"
    cache.write_text(json.dumps({**VIT_L_ACTIVATIONS, "model": model}))
    assert bench_main(["plan", "--config", str(RECIPE), "--gpus", "8", "--target-mfu", "0.5", "--json",
                       "--activations", str(cache)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["batch_plan"]["target_mfu"] == 0.5 and plan["inputs"]["mfu"] == 0.5
    assert (plan["batch_plan"]["batch_per_gpu"], plan["batch_plan"]["grad_accum"]) == (64, 1)
    assert bench_main(["plan", "--config", str(RECIPE), "--gpus", "16", "--activations", str(cache)]) == 0
    table = capsys.readouterr().out
    assert "32/GPU x accumulation 1 x 16 GPUs = 512" in table
