"""Scenic's AV-MAE fine-tuning augmentations as batch operations (avmae/data/augment.py): SpecAugment with several
masks, a circular time shift, and mixup of the batch with its reverse on every batch with a lambda per modality;
each checked against a reference written here, and the fine-tuning step's loss against each modality's own targets.
The recipes' Scenic values are in tests/test_recipes.py (the intended differences)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from avmae.data.augment import circular_time_shift, mixup, spec_augment
from avmae.data.config import AugmentConfig


# --- SpecAugment with several masks -------------------------------------------------------------------------------

def reference_bands(widths_u: torch.Tensor, starts_u: torch.Tensor, size: int, length: int) -> torch.Tensor:
    """lingvo's SpectrumAugmenter._GetMask, one mask at a time in Python: width = floor(u1 * max), start =
    floor(u2 * (length - width + 1)), positions start .. start + width - 1; the union over the masks."""
    batch, count = widths_u.shape
    masked = torch.zeros(batch, length, dtype=torch.bool)
    for i in range(batch):
        for k in range(count):
            width = math.floor(widths_u[i, k].item() * min(size, length))
            start = math.floor(starts_u[i, k].item() * (length - width + 1))
            masked[i, start:start + width] = True
    return masked


def test_several_masks_equal_lingvos_masks_with_the_drawn_numbers():
    batch, frames, bins = 6, 100, 128
    audio = torch.randn(batch, frames, bins)
    out = spec_augment(audio, freq_mask=36, time_mask=48, freq_masks=2, time_masks=4,
                       generator=torch.Generator().manual_seed(5))
    # The same generator's numbers, in the order the operation draws them: frequency widths, starts, then time.
    g = torch.Generator().manual_seed(5)
    freq = reference_bands(torch.rand(batch, 2, generator=g), torch.rand(batch, 2, generator=g), 36, bins)
    time = reference_bands(torch.rand(batch, 4, generator=g), torch.rand(batch, 4, generator=g), 48, frames)
    keep = ~freq[:, None, :] & ~time[:, :, None]
    assert torch.equal(out, audio * keep)
    assert freq.any() and time.any()  # the draws did mask something


def runs(masked_row: torch.Tensor) -> int:
    """How many separate masked bands a boolean row holds."""
    starts = masked_row[0:1].long().sum() + (masked_row[1:] & ~masked_row[:-1]).sum()
    return int(starts)


def test_mask_counts_widths_and_bounds_over_many_draws():
    batch, frames, bins = 4000, 60, 128
    ones = torch.ones(batch, frames, bins)
    freq_only = spec_augment(ones, freq_mask=36, time_mask=0, freq_masks=2, generator=torch.Generator().manual_seed(0))
    masked_bins = freq_only[:, 0, :] == 0
    assert torch.equal(freq_only, ones * ~masked_bins[:, None, :])  # a frequency mask is whole columns
    per_clip = masked_bins.sum(dim=1)
    assert int(per_clip.max()) <= 2 * 35 and max(runs(row) for row in masked_bins[:500]) <= 2
    # Two independent widths uniform on {0..35}: each covers 17.5 bins on average; together, less their overlap.
    one = spec_augment(ones, freq_mask=36, time_mask=0, freq_masks=1, generator=torch.Generator().manual_seed(1))
    single = (one[:, 0, :] == 0).sum(dim=1).float()
    assert abs(single.mean().item() - 17.5) < 0.6 and int(single.max()) == 35 and int(single.min()) == 0
    assert 30.0 < per_clip.float().mean().item() < 35.0
    # Every bin can be masked: a start is uniform over where the band fits, edges included.
    assert bool(masked_bins.any(dim=0).all())

    time_only = spec_augment(ones, freq_mask=0, time_mask=48, time_masks=4, generator=torch.Generator().manual_seed(2))
    masked_frames = time_only[:, :, 0] == 0
    assert torch.equal(time_only, ones * ~masked_frames[:, :, None])  # a time mask is whole rows
    assert int(masked_frames.sum(dim=1).max()) <= frames  # 4 x 47 frames cannot exceed the clip
    assert max(runs(row) for row in masked_frames[:500]) <= 4
    assert bool(masked_frames.any(dim=0).all())


def test_one_mask_of_each_is_the_default():
    assert (AugmentConfig().freq_masks, AugmentConfig().time_masks) == (1, 1)
    audio = torch.randn(8, 50, 32)
    one = spec_augment(audio, 10, 20, generator=torch.Generator().manual_seed(3))
    also = spec_augment(audio, 10, 20, generator=torch.Generator().manual_seed(3), freq_masks=1, time_masks=1)
    assert torch.equal(one, also)
    assert torch.equal(spec_augment(audio, 10, 20, freq_masks=0, time_masks=0), audio)


# --- circular time shift ------------------------------------------------------------------------------------------

def test_the_shift_is_torch_roll_per_clip_with_the_drawn_shift():
    batch, frames = 5, 40
    audio = torch.randn(batch, frames, 16)
    out = circular_time_shift(audio, generator=torch.Generator().manual_seed(7))
    shifts = torch.randint(0, frames, (batch, 1), generator=torch.Generator().manual_seed(7))[:, 0]
    for i in range(batch):
        assert torch.equal(out[i], torch.roll(audio[i], int(shifts[i]), dims=0))
    assert len(set(shifts.tolist())) > 1  # each clip its own shift


def test_shifts_are_uniform_over_the_clip_length():
    batch, frames = 20000, 10
    ramp = torch.arange(frames, dtype=torch.float32)[None, :, None].expand(batch, frames, 1).contiguous()
    out = circular_time_shift(ramp, generator=torch.Generator().manual_seed(0))
    shifts = (frames - out[:, 0, 0].long()) % frames  # out[0] = in[-shift]
    counts = torch.bincount(shifts, minlength=frames).float()
    assert counts.numel() == frames  # never frames or more
    expected = batch / frames
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 27.9  # chi-square, 9 degrees of freedom, p = 0.001
    assert torch.equal(out.sort(dim=1).values, ramp)  # a permutation of each clip: nothing lost


# --- mixup: every batch, the reversed batch, a lambda per modality ------------------------------------------------

def a_batch(size=6, classes=5, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"audio": torch.randn(size, 20, 8, generator=g), "video": torch.randn(size, 2, 3, 4, 4, generator=g),
            "label": torch.randint(0, 2, (size, classes), generator=g)}


def test_per_modality_mixup_is_scenics_formula_with_the_drawn_lambdas():
    batch = a_batch()
    torch.manual_seed(0)
    out = mixup(batch, {"label": 5}, probability=1.0, alpha=0.5, scope="batch", per_modality=True)
    lam = out["mixup_lambda_by_modality"]
    y = batch["label"].float()
    for name in ("audio", "video"):
        assert lam[name].shape == (6,) and torch.all(lam[name] == lam[name][0])  # one lambda for the batch
        w = lam[name][0]
        x = batch[name]
        assert torch.allclose(out[name], w * x + (1 - w) * x.flip(0))  # partner: sample i with sample B-1-i
        # the label mixed with the same modality's lambda (scenic av_mae train_utils.mixup_modalities)
        assert torch.allclose(out["targets_by_modality"][name]["label"], w * y + (1 - w) * y.flip(0))
    assert lam["audio"][0] != lam["video"][0]
    assert "targets" not in out  # no joint label under mixmod
    # The lambda read back from the mixed audio itself agrees with the one reported.
    x = batch["audio"]
    recovered = ((out["audio"] - x.flip(0)) / (x - x.flip(0)))[0, 0, 0]
    assert torch.isclose(recovered, lam["audio"][0], atol=1e-4)
    assert torch.equal(out["mixup_partner"], torch.arange(5, -1, -1))


def test_one_lambda_for_both_modalities_without_per_modality():
    batch = a_batch(seed=1)
    torch.manual_seed(1)
    out = mixup(batch, {"label": 5}, probability=1.0, alpha=0.5, scope="batch", per_modality=False)
    lam = out["mixup_lambda_by_modality"]
    assert torch.equal(lam["audio"], lam["video"])
    assert torch.equal(out["targets"]["label"], out["targets_by_modality"]["video"]["label"])


def test_beta_half_lambdas_and_every_batch_mixed():
    torch.manual_seed(0)
    batch = a_batch(size=2)
    draws = [mixup(batch, {"label": 5}, probability=1.0, alpha=0.5, scope="batch", per_modality=True)
             for _ in range(6000)]
    assert all("mixup_lambda" in d for d in draws)  # probability 1: every batch
    audio = torch.stack([d["mixup_lambda_by_modality"]["audio"][0] for d in draws])
    video = torch.stack([d["mixup_lambda_by_modality"]["video"][0] for d in draws])
    for lam in (audio, video):
        # Beta(0.5, 0.5): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 1/8, P(lambda < 0.1) = (2/pi) asin(sqrt(0.1))
        assert abs(lam.mean().item() - 0.5) < 0.015
        assert abs(lam.var().item() - 0.125) < 0.006
        assert abs((lam < 0.1).float().mean().item() - 2 / math.pi * math.asin(math.sqrt(0.1))) < 0.02
    correlation = torch.corrcoef(torch.stack([audio, video]))[0, 1].item()
    assert abs(correlation) < 0.05  # independent draws per modality


def test_a_bad_scope_is_one_clear_error():
    with pytest.raises(ValueError, match="augment.mixup_scope"):
        mixup(a_batch(), {"label": 5}, probability=1.0, scope="pairs")


# --- the fine-tuning step: each modality's loss against its own targets -------------------------------------------

def scenic_step(classifier: str = "bottleneck"):
    from avmae.models.bottleneck import BottleneckClassifier
    from avmae.models.config import BottleneckConfig
    from avmae.recipe.config import RunConfig
    from avmae.train.step import TrainStep
    from tests.tiny_models import tiny

    config = RunConfig(task="finetune")
    config.augment = dataclasses.replace(config.augment, mixup=1.0, mixup_alpha=0.5, mixup_scope="batch",
                                         mixup_per_modality=True)
    config.finetune.classifier = classifier
    model_config = tiny()
    model_config.encoder.fusion = "late"
    torch.manual_seed(0)
    model = BottleneckClassifier(model_config, {"label": 5}, bottleneck=BottleneckConfig(2, 1)).eval()
    for head in model.heads.values():  # zero-initialised heads would make every logit 0
        torch.nn.init.normal_(head.weight, std=0.1)
    return TrainStep(model, config, bf16=False, heads={"label": 5}, loss_kind="bce_sum"), model


def test_the_step_scores_each_modalitys_logits_against_its_own_mixed_targets():
    from avmae.train.losses import finetune_loss
    from tests.tiny_models import inputs

    step, model = scenic_step()
    audio, video = inputs(batch=4)
    batch = {"audio": audio, "video": video, "label": torch.randint(0, 2, (4, 5), generator=torch.Generator())}
    torch.manual_seed(3)
    loss, _ = step.forward(batch)
    torch.manual_seed(3)  # the same draws: the step's only random op here is mixup
    mixed = mixup(batch, {"label": 5}, 1.0, 0.5, scope="batch", per_modality=True)
    with torch.no_grad():
        logits = model(mixed["audio"], mixed["video"], per_modality=True)
    expected = torch.stack([finetune_loss(logits[m], mixed["targets_by_modality"][m], "bce_sum")
                            for m in ("audio", "video")]).mean()
    assert torch.allclose(loss.detach(), expected)
    # Scoring both modalities against one joint target would give another number.
    joint = torch.stack([finetune_loss(logits[m], mixed["targets_by_modality"]["audio"], "bce_sum")
                         for m in ("audio", "video")]).mean()
    assert not torch.allclose(expected, joint)


def test_per_modality_mixup_needs_the_bottleneck_classifier():
    """Refused when the config is read (RunConfig.validate), before any trainer is built."""
    from avmae.recipe.config import RunConfig

    config = RunConfig(task="finetune")
    config.data.shards = "/tmp/shards"
    config.augment = dataclasses.replace(config.augment, mixup=1.0, mixup_alpha=0.5, mixup_per_modality=True)
    config.finetune.classifier = "pooled"
    with pytest.raises(ValueError, match="finetune.classifier: bottleneck"):
        config.validate()


# --- no host syncs with Scenic's augmentations --------------------------------------------------------------------

@pytest.mark.slow
def test_scenic_augmentations_keep_the_host_sync_budget(shards, tmp_path):  # noqa: F811
    from tests.helpers import TINY_MODEL
    from tests.host_syncs import check_budget, counted

    model = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "fusion": "late"}}
    (report,) = counted(tmp_path, shards, processes=1, grad_accum=1, task="finetune", model=model,
                        finetune={"classifier": "bottleneck", "bottleneck": {"tokens": 2, "fusion_layer": 1}},
                        augment={"mixup": 1.0, "mixup_alpha": 0.5, "mixup_scope": "batch",
                                 "mixup_per_modality": True, "freq_mask": 24, "freq_masks": 2, "time_mask": 20,
                                 "time_masks": 4, "time_shift": True})
    check_budget(report, grad_accum=1)
