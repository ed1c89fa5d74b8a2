"""Host synchronisations of a training step, counted on real steps of the tiny model (one process, and 2 ranks over
gloo).

A GPU step that reads a device value on the host (``.item()``, ``.tolist()``, ``bool()``/``int()``/``float()`` of a
tensor, ``.cpu()``, ``.numpy()``, ``.to("cpu")``, ``torch.cuda.synchronize``) or copies a host tensor to the device
without ``non_blocking`` (torch then waits for the copy, and so for the stream) waits for every kernel queued
before it, and the GPU idles while the host catches up. This machine has no GPU, so which tensors would live on the
device is tracked instead: the model's parameters and buffers, tensors made with an explicit ``device``, and
everything computed from them are device-bound; tensors made on the host (a mixup coin drawn without a device, a
table built at start-up) are host-bound, and reading them costs the device nothing, but moving them to the device
per step does. Each event is put down to the first source file outside torch (and outside this counter) on the
stack: an avmae file, or DeepSpeed's own, which is reported and not budgeted.

The budget: a step that is no boundary (no log record, checkpoint or signal check) makes no avmae host sync, except
those named in ``SYNCS_ALLOWED`` (per micro-step, other modules' to take out) and ``FIRST_STEP_ALLOWED`` (both in
tests/host_syncs.py, with the counter).
"""

from __future__ import annotations

import pytest

from tests.host_syncs import check_budget, counted, deepspeed_own


@pytest.mark.slow
def test_a_step_that_is_no_boundary_waits_on_the_device_only_where_the_allow_list_says(shards, tmp_path):
    (report,) = counted(tmp_path, shards, processes=1, grad_accum=2)
    found = check_budget(report, grad_accum=2)
    print(f"non-boundary steps 1, 2, 4, 5 (2 micro-steps each): avmae {found}; DeepSpeed {deepspeed_own(report)}")


@pytest.mark.slow
def test_fine_tuning_with_every_batch_augmentation_keeps_the_same_budget(shards, tmp_path):
    """SpecAugment, noise and shift, time shift, colour and mixup on every batch (its mixing path): the
    augmentations draw on the batch's device."""
    (report,) = counted(tmp_path, shards, processes=1, grad_accum=1, task="finetune",
                        augment={"mixup": 1.0, "freq_mask": 8, "time_mask": 20, "audio_noise": True,
                                 "time_shift": True, "colour": 0.8, "colour_drop": 0.1})
    found = check_budget(report, grad_accum=1)
    print(f"fine-tuning, non-boundary steps: avmae {found}; DeepSpeed {deepspeed_own(report)}")


@pytest.mark.slow
def test_two_ranks_over_gloo_keep_the_same_budget(shards, tmp_path):
    reports = counted(tmp_path, shards, processes=2, grad_accum=1)
    for report in reports:
        found = check_budget(report, grad_accum=1)
        print(f"rank: avmae {found}; DeepSpeed {deepspeed_own(report)}")
