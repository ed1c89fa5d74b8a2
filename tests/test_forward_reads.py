"""A forward and backward of the models reads nothing back from the device (no ``.item()``, no host branch on a
device value), and copies host tables to the device once: run on the meta device, which has no values, under a
recorder of such calls."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from avmae.models.avmae import AVMAE
from avmae.models.bottleneck import BottleneckClassifier
from avmae.models.classifier import AVClassifier
from avmae.models.config import BottleneckConfig
from avmae.models.tokenizers import Positions
from tests.tiny_models import late_scenic, scenic_like


class DeviceReads(TorchFunctionMode):
    """Records every call that would make the host wait for the device to finish (a value of a tensor that is not
    on the CPU read back), and every copy of a CPU tensor to another device."""

    READS = {"item", "tolist", "__int__", "__float__", "__bool__", "__index__", "nonzero", "numpy"}

    def __init__(self):
        super().__init__()
        self.reads, self.copies = [], []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.READS and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
            self.reads.append(name)
        if name == "to" and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
            targets = [a for a in (*args[1:], *(kwargs or {}).values()) if isinstance(a, (torch.device, str))]
            if any(torch.device(t).type != "cpu" for t in targets):
                self.copies.append(tuple(args[0].shape))
        return func(*args, **(kwargs or {}))


def test_a_training_forward_reads_nothing_back_and_copies_the_tables_once():
    """On the meta device (no values at all: any read would fail), with drawn masks, as in training."""
    config = scenic_like()
    config.encoder.drop_path = 0.2
    with torch.device("meta"):
        model = AVMAE(config).train()
        audio, video = torch.empty(2, 100, 128), torch.empty(2, 4, 3, 64, 64)
    with DeviceReads() as first:
        model(audio, video)["loss"].backward()
    assert first.reads == [] and len(first.copies) == 4  # encoder and decoder tables of both modalities
    with DeviceReads() as second:
        model(audio, video)["loss"].backward()
    assert second.reads == [] and second.copies == []


def test_bottleneck_forward_reads_nothing_back():
    config = late_scenic()
    config.encoder.drop_path = 0.3
    with torch.device("meta"):
        model = BottleneckClassifier(config, {"label": 5}, bottleneck=BottleneckConfig(4, 2, shared_norm=True))
        audio, video = torch.empty(2, 100, 128), torch.empty(2, 4, 3, 64, 64)
    model.train()
    model(audio, video)
    with DeviceReads() as calls:
        per = model(audio, video, per_modality=True)
        sum(p["label"].sum() for p in per.values()).backward()
    assert calls.reads == [] and calls.copies == []


def test_classifier_forward_reads_nothing_back_even_with_modality_dropout():
    with torch.device("meta"):
        model = AVClassifier(scenic_like(), {"label": 5}, modality_dropout=0.9)
        audio, video = torch.empty(2, 100, 128), torch.empty(2, 4, 3, 64, 64)
    model.eval()(audio, video)  # both modalities once: their tables reach the device
    model.train()
    with DeviceReads() as calls:
        for _ in range(4):  # whichever modalities the CPU-drawn modality dropout keeps
            model(audio, video)["label"].sum().backward()
    assert calls.reads == [] and calls.copies == []


def test_the_read_recorder_sees_a_read_and_a_copy():
    with DeviceReads() as calls:
        torch.ones(2).to("meta")
        try:
            torch.ones(1, device="meta").item()
        except RuntimeError:
            pass
    assert calls.reads == ["item"] and calls.copies == [(2,)]


def test_positions_keep_one_device_copy_per_device_and_dtype():
    positions = Positions(scenic_like(), 32)
    like = torch.empty(1, device="meta")
    first = positions("audio", (6, 8), like)
    assert first.device.type == "meta" and first.shape == (1, 48, 32)
    assert positions("audio", (6, 8), like) is first
    half = positions("audio", (6, 8), like.half())
    assert half.dtype == torch.float16 and half is not first
    assert positions.state_dict() == {}  # the copies are not saved
