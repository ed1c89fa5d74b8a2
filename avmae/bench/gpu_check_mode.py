"""The sizes of the GPU acceptance check (gpu_check.py): the recipe's own on a GPU, tiny on a CPU. Only sizes and
the device differ between the two; every step runs the same code (one code path for CPU and GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckMode:
    device: str  # "cuda" or "cpu"
    # Corpus (avmae.shard.inputs.synth.make_corpus: distinct classes, so evaluation scores are not all ties) and its
    # build.
    clips: int
    classes: int
    clip_seconds: float
    clip_size: tuple[int, int]  # width, height
    shard_flags: tuple[str, ...]  # avmae-shard build flags beyond the defaults (the recipe's geometry)
    # The recipe's step (configs/pretrain_as2m.yaml): overrides of its model (none: ViT-L as written) and steps.
    recipe_model: tuple[str, ...]
    recipe_steps: int
    recipe_warmup: int  # first logged steps left out of the step time (allocator, kernel choice, DALI start)
    sweep_batches: tuple[int, ...]  # per-GPU batches of the recipe's step, the recipe's own (batch_size) first
    # The small model of the 50-step run and the fine-tune whose evaluation both loaders score.
    check_model: tuple[str, ...]
    batch_size: int  # per process
    workers: int  # DALI threads / torch DataLoader workers (the recipe's 8 on a GPU)
    steps: int
    stop_after: int
    finetune_steps: int
    decode_batches: int
    feed_iterations: int  # pipeline runs per timed window of the feed step (3 windows)
    loss_rtol: float  # uninterrupted vs stopped-and-resumed losses
    score_atol: float  # DALI vs torch evaluation probabilities
    collective_mebibytes: float
    collective_iterations: int
    notes: tuple[str, ...] = field(default_factory=tuple)


# A small model at the shards' clip geometry, so that the 50-step run and its checkpoints test the trainer and the
# loader, not the machine's speed: configs/model/tiny.yaml's widths on a GPU (milliseconds a step), the tests' tiny
# widths on a CPU (tests/helpers.py TINY_SIZES).
TINY_YAML = {"encoder": (192, 6, 3, 768, 2), "decoder": (128, 2, 4, 512)}
TESTS_TINY = {"encoder": (64, 3, 2, 128, 1), "decoder": (32, 1, 2, 64)}


def _small_model(widths: dict, frames: int, size: int, audio_frames: int) -> tuple[str, ...]:
    (width, depth, heads, mlp, joint), (d_width, d_depth, d_heads, d_mlp) = widths["encoder"], widths["decoder"]
    return ("model.encoder.size=custom", f"model.encoder.width={width}", f"model.encoder.depth={depth}",
            f"model.encoder.heads={heads}", f"model.encoder.mlp={mlp}", f"model.encoder.joint_layers={joint}",
            f"model.decoder.width={d_width}", f"model.decoder.depth={d_depth}", f"model.decoder.heads={d_heads}",
            f"model.decoder.mlp={d_mlp}", f"model.video.frames={frames}", f"model.video.size={size}",
            f"model.audio.frames={audio_frames}")


# The 10-minute budget of the GPU check. Measured on the CPU mode (2 shared cores, 2026-12-07): shards 6 s, decode
# 1 s, recipe sweep 22 s (two children, 11 s each, of which the 5 steps are ~1 s: a child's cost is its start-up -
# imports, DeepSpeed engine, DALI pipeline - and its final checkpoint), feed 1 s, collectives 7 s, resume 33 s (three
# children), eval 25 s (three children): 95 s, about 11 s per child. On the GPU the steps themselves stay small:
# ViT-L's step is 827 GFLOPs x batch; at 25-40 % of 989 TFLOP/s batch 8 takes 17-27 ms, and batch 32 and 64 are ~4x
# and ~8x that, so the sweep's 3 x 16 steps are 16 x (1 + 4 + 8) = 208 batch-8 steps, ~6 s. What costs is per child:
# start-up with a 596 M-parameter engine (~30 s) and the last step's ZeRO checkpoint (~9 GB: ~10-20 s on a local
# NVMe disk): ~60 s a sweep child, ~3 min for the sweep. Then shards (64 x 10 s clips on 16 cores, ~30 s), decode and
# feed (~20 s), NCCL on 8 GPUs (~30 s), resume and eval (six children of a small model, ~30 s each: ~3 min): about
# 7.5 min in all, 2.5 min to spare under pipelines/gpu_check.sh's 10. A batch above 64 would cost another ~60 s
# child, and 64 is already 8x the recipe's batch.
GPU = CheckMode(
    device="cuda", clips=64, classes=8, clip_seconds=10.0, clip_size=(456, 256),
    shard_flags=("--shard-size", "8"),  # avmae-shard build's defaults: 16 frames, short side 256, 1024 x 128 log-mel
    recipe_model=(), recipe_steps=16, recipe_warmup=6, sweep_batches=(8, 32, 64),
    check_model=_small_model(TINY_YAML, 16, 224, 1024), batch_size=8, workers=8, steps=50, stop_after=25, finetune_steps=20,
    decode_batches=40, feed_iterations=50,
    # bf16 on a GPU, deterministic algorithms on (gpu_check.DETERMINISTIC_TRAIN): the fused attention backward still
    # sums its partial gradients with atomic adds, so the first steps' weights differ in bf16's last bit (relative
    # 2^-8 = 3.9e-3 per rounding) and the gap grows over 50 steps of Adam at lr 1e-3; 1e-2 allows that and still
    # catches a resume that skipped or repeated batches or lost optimizer state (a loss off by several percent within
    # a few steps on this small model). The table shows the gap before the stop and after the resume apart: a gap
    # before the stop is the kernels' alone.
    loss_rtol=1e-2,
    # nvJPEG (fancy upsampling) and libjpeg-turbo differ by the IDCT's rounding, a level or two of 255 on some pixels;
    # through the fp32 classifier that is a few hundredths on a logit, half that on a probability (the argument:
    # avmae/bench/score_agreement.py). Top-1 / top-5 may differ by the close calls that gap allows, nothing more.
    score_atol=2e-2,
    collective_mebibytes=256, collective_iterations=20)

CPU = CheckMode(
    device="cpu", clips=12, classes=4, clip_seconds=2.0, clip_size=(96, 64),
    # tests/helpers.py TINY_SHARDS: 2 s segments of 8 frames at short side 72, a 208-frame log-mel
    shard_flags=("--segment-seconds", "2", "--num-frames", "8", "--short-side", "72", "--target-frames", "208",
                 "--shard-size", "3"),
    recipe_model=_small_model(TINY_YAML, 4, 64, 208), recipe_steps=5, recipe_warmup=2, sweep_batches=(4, 8),
    # 16 steps, stopped after 8: the structure of the GPU's 50 / 25 at a third of the CPU time
    check_model=_small_model(TESTS_TINY, 4, 64, 208), batch_size=4, workers=1, steps=16, stop_after=8,
    finetune_steps=4,
    decode_batches=10, feed_iterations=200,  # tiny samples: enough for CPU times to move (10 ms ticks)
    loss_rtol=0.0,  # fp32 on a CPU: every kernel deterministic, the same data and draws: equal losses, bit for bit
    score_atol=1e-4,  # both decode with libjpeg-turbo: float rounding of the two resize paths only
    collective_mebibytes=4, collective_iterations=5,
    notes=("CPU mode: tiny sizes, DALI on the CPU, gloo between 2 processes, fp32; no MFU (no GPU peak)",))
