"""The sizes of the GPU acceptance check (gpu_check.py): the recipe's own on a GPU, tiny on a CPU. Only sizes and
the device differ between the two; every step runs the same code (one code path for CPU and GPU)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CheckMode:
    device: str  # "cuda" or "cpu"
    # Corpus (avmae.shard.synth.make_corpus: distinct classes, so evaluation scores are not all ties) and its build.
    clips: int
    classes: int
    clip_seconds: float
    clip_size: tuple[int, int]  # width, height
    shard_flags: tuple[str, ...]  # avmae-shard build flags beyond the defaults (the recipe's geometry)
    # The recipe's step (configs/pretrain_as2m.yaml): overrides of its model (none: ViT-L as written) and steps.
    recipe_model: tuple[str, ...]
    recipe_steps: int
    recipe_warmup: int  # first logged steps left out of the step time (allocator, kernel choice, DALI start)
    # The small model of the 50-step run and the fine-tune whose evaluation both loaders score.
    check_model: tuple[str, ...]
    batch_size: int  # per process
    workers: int  # DALI threads / webdataset workers (the recipe's 8 on a GPU)
    steps: int
    stop_after: int
    finetune_steps: int
    decode_batches: int
    feed_iterations: int  # pipeline runs per timed window of the feed step (3 windows)
    loss_rtol: float  # uninterrupted vs stopped-and-resumed losses
    score_atol: float  # DALI vs webdataset evaluation probabilities
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


GPU = CheckMode(
    device="cuda", clips=64, classes=8, clip_seconds=10.0, clip_size=(456, 256),
    shard_flags=("--shard-size", "8"),  # avmae-shard build's defaults: 16 frames, short side 256, 1024 x 128 log-mel
    recipe_model=(), recipe_steps=16, recipe_warmup=6,
    check_model=_small_model(TINY_YAML, 16, 224, 1024), batch_size=8, workers=8, steps=50, stop_after=25, finetune_steps=20,
    decode_batches=40, feed_iterations=50,
    # bf16 on a GPU: attention backward kernels accumulate with atomics (not bit-reproducible run to run), so the
    # two runs agree to bf16's precision, not exactly; the table shows the gap before and after the resume apart.
    loss_rtol=1e-2,
    # nvJPEG and libjpeg-turbo round differently (a few levels of 255), then bf16: probabilities agree to ~1e-2.
    score_atol=2e-2,
    collective_mebibytes=256, collective_iterations=20)

CPU = CheckMode(
    device="cpu", clips=12, classes=4, clip_seconds=2.0, clip_size=(96, 64),
    # tests/helpers.py TINY_SHARDS: 2 s segments of 8 frames at short side 72, a 208-frame log-mel
    shard_flags=("--segment-seconds", "2", "--num-frames", "8", "--short-side", "72", "--target-frames", "208",
                 "--shard-size", "3"),
    recipe_model=_small_model(TINY_YAML, 4, 64, 208), recipe_steps=5, recipe_warmup=2,
    # 16 steps, stopped after 8: the structure of the GPU's 50 / 25 at a third of the CPU time
    check_model=_small_model(TESTS_TINY, 4, 64, 208), batch_size=4, workers=1, steps=16, stop_after=8,
    finetune_steps=4,
    decode_batches=10, feed_iterations=200,  # tiny samples: enough for CPU times to move (10 ms ticks)
    loss_rtol=1e-4,  # fp32 on a CPU is deterministic: as tests/test_trainer.py's resume test
    score_atol=1e-4,  # both decode with libjpeg-turbo
    collective_mebibytes=4, collective_iterations=5,
    notes=("CPU mode: tiny sizes, DALI on the CPU, gloo between 2 processes, fp32; no MFU (no GPU peak)",))
