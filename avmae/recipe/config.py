"""The run configuration of ``avmae-train``: task, model, data, augmentation, optimisation, DeepSpeed, checkpoints,
logging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avmae.config import ConfigError, at_least
from avmae.data.config import AugmentConfig, DataConfig
from avmae.models.config import BottleneckConfig, MAViLConfig, ModelConfig


@dataclass
class OptimConfig:
    steps: int = 1000  # optimizer steps of the whole run; the schedule is by step, not by epoch
    optimizer: Literal["adamw", "sgd"] = "adamw"  # sgd: MBT fine-tuning, momentum 0.9 (docs/reference/avmae_scenic.md)
    momentum: float = 0.9  # sgd only
    lr: float = 6e-4  # AV-MAE AudioSet pretraining: 3e-4 x 512/256 (docs/reference/avmae_scenic.md)
    min_lr: float = 0.0
    warmup_steps: int = 0
    betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.05
    grad_clip: float = 0.0  # 0 = off
    layer_decay: float = 1.0  # fine-tuning: lr x decay^(depth - layer) for encoder layers (BEiT / AudioMAE 0.75)
    head_lr_scale: float = 1.0  # fine-tuning: the heads learn this much faster (CAV-MAE: x10 .. x100)
    # After warmup: half-cycle cosine to min_lr, or steps: lr x gamma^(milestones passed), CAV-MAE's MultiStepLR
    # (its milestones are epochs; here they are optimizer steps, epoch x steps per epoch).
    schedule: Literal["cosine", "step"] = "cosine"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.5
    # torch's fused AdamW kernel (one kernel for every parameter instead of a chain of foreach ops). auto: on CUDA
    # only. torch 2.11 has a fused CPU AdamW too, but a CPU run is a test or the demo, whose recorded numbers come
    # from the reference (foreach) update; true asks for it on the CPU as well. SGD is never fused here.
    fused: Literal["auto", "true", "false"] | bool = "auto"

    def fused_on(self, device_type: str) -> bool:
        """Whether AdamW runs fused on a device of ``device_type``."""
        if self.fused == "auto":
            return device_type == "cuda"
        return self.fused in (True, "true")


@dataclass
class CheckpointConfig:
    every: int = 500  # steps
    keep: int = 3  # newest complete checkpoints kept
    export: bool = True  # consolidated fp32 safetensors of the final (and best) weights
    average_last: int = 0  # fine-tuning: also export the mean of the last N checkpoints (CAV-MAE weight averaging)


@dataclass
class GuardConfig:
    """What the trainer tolerates before it ends the job: a step whose loss or gradient norm is not finite on any
    rank is skipped on every rank (no update) and counted; past either budget the run stops. A collective that waits
    longer than collective_timeout_s for a dead or hung rank ends the job (and requeues a SLURM job, max_requeues
    times at most)."""

    nonfinite_in_row: int = 5  # skipped steps in a row
    nonfinite_total: int = 50  # skipped steps over the whole run (resumes included)
    collective_timeout_s: float = 1800.0  # torch's process-group timeout, for every collective
    # Under SLURM, a job whose collective failed (a rank or a node was lost) requeues itself to resume from its
    # newest checkpoint, at most this many times (counted in the run folder: signals.requeue_after_lost_rank); 0:
    # never, a person requeues it.
    max_requeues: int = 3
    # Steps between the ranks' agreements on a stop signal (SIGUSR1 / SIGTERM), also made at every log and
    # checkpoint step. Each is a collective and a host sync, so not every step; SLURM's USR1 comes minutes ahead,
    # and its SIGTERM KillWait (30 s by default) spans many steps at any size the recipes run.
    signal_check_every: int = 10


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    progress: bool = True  # rich live line on rank 0


@dataclass
class FinetuneConfig:
    heads: dict = field(default_factory=dict)  # {} = from the data's labels
    modality: Literal["av", "audio", "video"] = "av"
    # auto: BCE for multi-label data, CE otherwise; bce_sum: BCE summed over classes (AV-MAE / Scenic), not averaged
    loss: Literal["auto", "bce", "bce_sum", "ce"] = "auto"
    label_smoothing: float = 0.0
    modality_dropout: float = 0.0
    # pooled: mean of each present modality's tokens, one set of logits (CAV-MAE); bottleneck: AV-MAE's MBT
    # fine-tuning model (separate encoders fused through bottleneck tokens, logits averaged over modalities)
    classifier: Literal["pooled", "bottleneck"] = "pooled"
    bottleneck: BottleneckConfig = field(default_factory=BottleneckConfig)
    eval_every: int = 0  # steps between evaluations on data.eval_split (0 = only at the end)
    eval_batches: int = 0  # 0 = the whole evaluation split

    # Keys that left this section (the starting weights have one knob, the top-level init); avmae.config.from_dict
    # points a recipe that still sets them to their place.
    MOVED_KEYS = {"init": "the top-level init: {kind: avmae, path: ...}"}


@dataclass
class ModelInitConfig:
    """The one knob for the weights a new run starts from (a resumed checkpoint aside; avmae/export/init.py loads
    them). avmae: an avmae export (.safetensors) or run folder, e.g. fine-tuning from a pretraining run; vit: an
    ImageNet ViT / MAE checkpoint in the timm layout (CAV-MAE's initialisation, avmae/models/init_from_vit.py);
    cavmae: a CAV-MAE checkpoint (converted on the fly). A classifier takes the encoder of any of them; a pretraining
    model takes all of a cavmae / avmae checkpoint (continued pretraining) and what fits of a ViT."""

    kind: Literal["none", "avmae", "vit", "cavmae"] = "none"
    path: str = ""
    video_inflation: Literal["average", "central"] = "average"  # vit: how the 2-D patch kernel becomes a tubelet
    # avmae, fine-tuning: "fresh" leaves the audio patch embedding at the new model's initialisation, as Scenic's own
    # AV-MAE fine-tuning does (its transfer renames embedding_spectrogram to embedding_spec, a name MBT never reads;
    # docs/scenic_recipes.md); "pretrained" (avmae's default) takes it from the checkpoint like every other weight.
    audio_patch_embedding: Literal["pretrained", "fresh"] = "pretrained"


@dataclass
class RunConfig:
    MOVED_KEYS = {"model_init": "init: {kind, path, video_inflation} (renamed)"}  # see FinetuneConfig.MOVED_KEYS

    task: Literal["pretrain", "finetune"] = "pretrain"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training only: evaluation never reads it
    optim: OptimConfig = field(default_factory=OptimConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    mavil: MAViLConfig = field(default_factory=MAViLConfig)  # pretraining: MAViL's extra terms and its stage 2
    init: ModelInitConfig = field(default_factory=ModelInitConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)  # non-finite steps, collective timeouts
    zero_stage: int = 2  # ZeRO 2 shards optimizer states and gradients; 3 also shards parameters
    # Elements per ZeRO gradient-reduce / all-gather bucket; ZeRO-3's live-parameter cap (2x) and prefetch bucket
    # (1/10) follow it. 5e7, a tenth of DeepSpeed's default 5e8: ZeRO-2 reduces a bucket when it is full
    # (deepspeed/runtime/zero/stage_1_and_2.py, reduce_independent_p_g_buckets_and_remove_grads), and 5e8 is
    # 84 % of ViT-L's 596 M parameters, so nothing would be reduced before the backward was nearly over and the
    # reduction could not overlap it; 5e7 gives about a dozen buckets per ViT-L backward. Each bucket is also memory
    # every rank holds (5e8 fp32 elements are 2 GB).
    zero_bucket_elements: int = 50_000_000
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    grad_accum: int = 1
    seed: int = 0
    workdir: str = "runs/default"
    stop_after: int = 0  # leave (with a checkpoint) after this many steps of this process; 0 = run to the end
    peak_tflops: float = 989.0  # per GPU, dense bf16 (H100 SXM), for the MFU estimate
    # torch.compile (inductor) each transformer block of the model in place (parameter names, checkpoints and
    # exports unchanged); the first steps then wait for the compiler.
    compile: bool = False

    def validate(self) -> "RunConfig":
        self.model.validate()
        self._clip_geometry()
        if self.zero_stage not in (1, 2, 3):
            raise ConfigError(f"zero_stage must be 1, 2 or 3, got {self.zero_stage}")
        at_least(1_000_000, {"zero_bucket_elements": self.zero_bucket_elements})
        if self.compile and self.zero_stage == 3:  # ZeRO-3 gathers each layer's parameters in module hooks
            raise ConfigError("compile: true is built and tested with zero_stage 1 and 2; with zero_stage 3 the "
                              "compiled blocks would run ZeRO-3's parameter-gathering hooks inside the graph")
        # Counts and intervals: a zero interval divides by zero mid-run, a zero batch hangs the loader.
        at_least(1, {"optim.steps": self.optim.steps, "grad_accum": self.grad_accum,
                     "checkpoint.every": self.checkpoint.every, "log.every": self.log.every,
                     "data.batch_size": self.data.batch_size,
                     "guard.signal_check_every": self.guard.signal_check_every, "data.views": self.data.views,
                     "augment.train_offsets": self.augment.train_offsets,
                     "augment.jitter_short_side": self.augment.jitter_short_side})
        at_least(0, {"data.workers": self.data.workers, "data.shuffle_buffer": self.data.shuffle_buffer,
                     "augment.freq_mask": self.augment.freq_mask, "augment.time_mask": self.augment.time_mask,
                     "augment.freq_masks": self.augment.freq_masks, "augment.time_masks": self.augment.time_masks,
                     "data.eval_short_side": self.data.eval_short_side, "augment.mixup": self.augment.mixup,
                     "optim.warmup_steps": self.optim.warmup_steps, "optim.lr": self.optim.lr,
                     "optim.min_lr": self.optim.min_lr, "optim.weight_decay": self.optim.weight_decay,
                     "optim.grad_clip": self.optim.grad_clip, "checkpoint.keep": self.checkpoint.keep,
                     "checkpoint.average_last": self.checkpoint.average_last,
                     "finetune.eval_every": self.finetune.eval_every,
                     "finetune.eval_batches": self.finetune.eval_batches, "stop_after": self.stop_after,
                     "data.frame_stride": self.data.frame_stride})
        if self.data.frame_stride and self.augment.train_offsets != 1:
            raise ConfigError("data.frame_stride takes a window at a random offset in training; augment.train_offsets "
                              f"(CAV-MAE's offsets of spread frames) must stay 1, got {self.augment.train_offsets}")
        if not 0 <= self.data.view < self.data.views:
            raise ConfigError(f"data.view must be in [0, data.views = {self.data.views}), got {self.data.view}")
        if not self.data.shards:
            raise ValueError("data.shards is not set: point it at a folder made by avmae-shard build")
        if (min(self.guard.nonfinite_in_row, self.guard.nonfinite_total) < 1 or self.guard.collective_timeout_s <= 0
                or self.guard.max_requeues < 0):
            raise ValueError("guard.nonfinite_in_row and guard.nonfinite_total must be at least 1, "
                             "guard.collective_timeout_s above 0, guard.max_requeues at least 0")
        if self.init.audio_patch_embedding == "fresh" and (self.init.kind != "avmae" or self.task != "finetune"):
            raise ConfigError("init.audio_patch_embedding: fresh is Scenic's pretrain-to-fine-tune transfer: it "
                              f"needs init.kind avmae and task finetune (got {self.init.kind}, {self.task})")
        if self.init.kind != "none" and not self.init.path:
            raise ConfigError(f"init.kind {self.init.kind} needs init.path (the file or run folder to start from)")
        if self.optim.schedule == "step" and list(self.optim.milestones) != sorted(self.optim.milestones):
            raise ValueError(f"optim.milestones must be increasing, got {list(self.optim.milestones)}")
        if self.task == "finetune" and self.finetune.loss.startswith("bce") and self.finetune.heads.get("verb"):
            raise ValueError("Epic-Kitchens verb/noun heads are single-label: use finetune.loss ce")
        self._mixup()
        self._video_augment()
        return self

    def _mixup(self) -> None:
        augment = self.augment
        if self.task != "finetune" or augment.mixup <= 0:
            return
        if augment.mixup_alpha <= 0:
            raise ConfigError(f"augment.mixup_alpha must be above 0 (Beta(alpha, alpha)), got {augment.mixup_alpha}")
        if augment.mixup_per_modality and self.finetune.classifier != "bottleneck":
            raise ConfigError("augment.mixup_per_modality mixes each modality's targets with its own lambda, so it "
                              "needs finetune.classifier: bottleneck (a loss per modality's logits); got "
                              f"{self.finetune.classifier!r}")

    def _video_augment(self) -> None:
        augment = self.augment
        jitter = augment.scale_jitter
        if len(jitter) != 2 or not 0 < jitter[0] <= jitter[1]:
            raise ConfigError(f"augment.scale_jitter must be two factors 0 < low <= high, got {augment.scale_jitter}")
        for key in ("scale_jitter_prob", "colour", "colour_drop"):
            if not 0 <= getattr(augment, key) <= 1:
                raise ConfigError(f"augment.{key} is a probability, in [0, 1]; got {getattr(augment, key)}")

    def _clip_geometry(self) -> None:
        """The model config is the home of the clip geometry: the loader's frame count and crop follow it. Set to
        anything else they would feed the model another grid than the one it describes (and its MFU neither), so
        they are refused here (and by the model itself), unless model.other_grids asks for other sizes on purpose."""
        for data_key, model_key, model_value in (("num_frames", "video.frames", self.model.video.frames),
                                                 ("crop_size", "video.size", self.model.video.size)):
            value = getattr(self.data, data_key)
            if value is None:
                setattr(self.data, data_key, model_value)
            elif value != model_value and not self.model.other_grids:
                raise ConfigError(f"data.{data_key} is {value} but model.{model_key} is {model_value}: the loader "
                                  f"follows the model; leave data.{data_key} unset or equal")
