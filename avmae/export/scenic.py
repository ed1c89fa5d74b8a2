"""A released AV-MAE checkpoint (Scenic / Flax msgpack) as an avmae export folder.

``convert_scenic(CHECKPOINT, DIR)`` reads the parameters (``scenic_msgpack``), maps them (``scenic_mae`` for the
pretraining model, ``scenic_mbt`` for the fine-tuned one, with the shared pieces of ``scenic_layout``), checks
that they cover the avmae model the run config describes with equal shapes, and writes:

- ``DIR/export/model.safetensors``: the export (``avmae.export.format``), so ``DIR`` is a run folder that
  ``avmae-eval --ckpt DIR`` scores (a fine-tuned MBT) and ``init: {kind: avmae, path: DIR}`` starts from;
- ``DIR/run_config.yaml``: the avmae run config it carries, to start a recipe from;
- ``DIR/scenic_config.json``: the Scenic config the parameters imply, and what had to be assumed;
- ``DIR/report.json``: what was read, mapped and assumed.

What the parameters do not record (the MBT fusion layer and label mode, the pretraining strategies, inpainting) is
answered by ``ScenicOptions`` (``scenic_options``); one left None takes Scenic's recipes' value, listed as assumed,
or, where no recipe tells, the conversion asks for it.

Label order (not in any checkpoint): a 527-class head is AudioSet's, in the index order of AudioSet's
``class_labels_indices.csv``, which Scenic's AudioSet data uses for its multi-hot labels; a 309-class head is
VGGSound's, taken to be in sorted order of the class names (the common convention of VGGSound lists; Scenic's
VGGSound data reads class indices from its TFRecords, so the order is assumed, not read). ``labels`` fills the
names: AudioSet's CSV (``index,mid,display_name``: the mids in index order), a VGGSound list
(``YTID,start,label,split``) or a file of one class name per line (sorted for a single-label head).
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from avmae.config import apply_overrides, dump, from_dict
from avmae.export.format import ExportInfo, export_path, write_export
from avmae.export.load import model_for
from avmae.export.scenic_layout import Params, ScenicConversion, ScenicLayoutError
from avmae.export.scenic_mae import convert_pretraining
from avmae.export.scenic_mbt import MBT_HEAD, convert_mbt
from avmae.export.scenic_msgpack import ScenicCheckpointError, read_scenic_params
from avmae.export.scenic_options import ScenicOptions
from avmae.files import write_text_atomically
from avmae.recipe.config import RunConfig

# Assumed both: Scenic reads integer class indices from its TFRecords, whose naming is not published.
LABEL_ORDER = {527: "AudioSet's class_labels_indices.csv index order (assumed: not recorded in the checkpoint)",
               309: "VGGSound class names in sorted order (assumed: not recorded in the checkpoint)"}
DATA = {"video_norm": "zero_center"}  # Scenic's video input: uint8 / 255 * 2 - 1


class ScenicConversionError(ValueError):
    """Why a Scenic checkpoint could not become an avmae export, in one line naming the file."""


def read_label_file(path: str | Path, single_label: bool) -> list[str]:
    """Class names from AudioSet's CSV (mids in index order), a VGGSound list or one name per line."""
    with open(path, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise ScenicConversionError(f"{path}: no class names")
    header = [cell.strip() for cell in rows[0]]
    if "index" in header and "mid" in header:
        index, mid = header.index("index"), header.index("mid")
        try:
            return [row[mid] for row in sorted(rows[1:], key=lambda row: int(row[index]))]
        except (ValueError, IndexError):
            raise ScenicConversionError(f"{path}: a row without an integer index or a mid") from None
    if all(len(row) >= 3 for row in rows):  # VGGSound: YTID,start,label[,split]
        names = sorted({row[2].strip() for row in rows})
    else:
        names = [",".join(row).strip() for row in rows]
    return sorted(names) if single_label else names


def convert_scenic_params(params: dict[str, np.ndarray], options: ScenicOptions = ScenicOptions()
                          ) -> ScenicConversion:
    """Flat Scenic params -> avmae state dict and run config; ``options`` answer what the parameters do not record.
    Every parameter is used, or this raises naming the ones left over, so nothing is dropped silently."""
    p = Params(params)
    if p.prefixed(MBT_HEAD + "/"):
        conversion = convert_mbt(p, options.fusion_layer, options.label_mode)
    elif p.prefixed("decoder_projection_"):
        conversion = convert_pretraining(p, options.encoder_strategy, options.decoder_strategy, options.inpainting)
    else:
        raise ScenicLayoutError("neither an AV-MAE pretraining model (decoder_projection_*) nor an MBT classifier "
                                f"({MBT_HEAD}); top-level names {sorted({k.split('/')[0] for k in params})[:8]}")
    left = p.left_over()
    if left:
        raise ScenicLayoutError(f"{len(left)} parameters have no place in the avmae model: {left[:5]}")
    conversion.report.update(scenic_parameters=len(params),
                             scenic_values=int(sum(np.asarray(v).size for v in params.values())),
                             avmae_keys=len(conversion.state))
    return conversion


def _run_config(conversion: ScenicConversion, overrides: list[str], checkpoint: Path) -> RunConfig:
    data = copy.deepcopy(conversion.run)
    data["data"] = {**DATA, **data.get("data", {})}
    try:
        data = apply_overrides(data, list(overrides))
        # the loader's frame count and crop follow the model (a training run's validated config has them set)
        video = data["model"]["video"]
        data["data"].setdefault("num_frames", video["frames"])
        data["data"].setdefault("crop_size", video["size"])
        config = from_dict(RunConfig, data)
        config.model.validate()
        return config
    except ValueError as err:  # ConfigError included: a bad --set, or sizes the model refuses
        raise ScenicConversionError(f"{checkpoint}: the run config of the conversion is not valid: {err}") from None


def _shape_model(config: RunConfig, task: str, heads: dict[str, int], real: bool) -> torch.nn.Module:
    """The model the export describes (meta tensors unless ``real``). Shapes do not depend on the fusion layer, so a
    single-modality MBT (fusion layer = depth: no bottleneck) is built with layer 0 when the model refuses depth."""
    try:
        if real:
            torch.manual_seed(config.seed)
            return model_for(config, task, heads)
        with torch.device("meta"):
            return model_for(config, task, heads)
    except ValueError as err:
        if "fusion_layer" not in str(err):
            raise
        finetune = dataclasses.replace(config.finetune, bottleneck=dataclasses.replace(
            config.finetune.bottleneck, fusion_layer=0))
        return _shape_model(dataclasses.replace(config, finetune=finetune), task, heads, real)


def _complete(conversion: ScenicConversion, config: RunConfig, checkpoint: Path) -> dict[str, torch.Tensor]:
    """The converted state, checked against the model's keys and shapes. A single-modality MBT has no weights for
    the other modality's tokenizer and encoder, which that model never runs: they keep the model's own init."""
    expected = _shape_model(config, conversion.task, conversion.heads, real=False).state_dict()
    state = dict(conversion.state)
    filled = []
    if conversion.unused_modality:
        fresh = _shape_model(config, conversion.task, conversion.heads, real=True).state_dict()
        other = conversion.unused_modality
        for key in sorted(set(expected) - set(state)):
            if key.startswith((f"encoder.{other}.", f"tokenizer.{other}_")):
                state[key] = fresh[key]
                filled.append(key)
        conversion.report["kept_at_init"] = {"reason": f"a {conversion.run['finetune']['modality']}-only model never "
                                                       f"runs its {other} weights", "keys": len(filled)}
    missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(set(state) & set(expected))
              if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or extra or shapes:
        raise ScenicConversionError(f"{checkpoint}: the converted weights do not fit the avmae model of the config "
                                    f"(missing {missing[:3]}, unexpected {extra[:3]}, shapes {shapes[:3]})")
    return state


def convert_scenic(checkpoint: str | Path, out: str | Path, overrides: list[str] | None = None,
                   labels: str | Path | None = None, options: ScenicOptions = ScenicOptions()) -> dict:
    """Convert ``checkpoint`` and write the export folder ``out``; returns the report. ``overrides`` (``key=value``)
    change the run config (input sizes, data paths), ``labels`` names the classes (``read_label_file``); ``options``
    answer what a checkpoint does not record."""
    checkpoint, out = Path(checkpoint), Path(out)
    read = read_scenic_params(checkpoint)
    try:
        conversion = convert_scenic_params(read.params, options)
    except ScenicLayoutError as err:
        raise ScenicConversionError(f"{checkpoint}: {err}") from None
    config = _run_config(conversion, list(overrides or []), checkpoint)
    state = _complete(conversion, config, checkpoint)
    mode = conversion.report.get("label_mode", "")
    classes = conversion.heads.get("label", 0)
    names = read_label_file(labels, mode == "single") if labels else []
    if names and len(names) != classes:
        raise ScenicConversionError(f"{labels}: {len(names)} class names for a head of {classes} classes")
    order = LABEL_ORDER.get(classes, "the fine-tuning data's class index (not recorded)") if classes else ""
    model = config.model
    given = any(o.strip().startswith(("model.audio", "model.video")) for o in overrides or [])
    conversion.report["assumed"].insert(0, f"input sizes audio {model.audio.frames} x {model.audio.mel_bins}, video "
                                           f"{model.video.frames} x {model.video.size} x {model.video.size} ("
                                           + ("as given" if given else "the recipe's") + ")")
    report = {"source": str(checkpoint), "task": conversion.task, "params_at": read.layout,
              "pre_linen": read.pre_linen, "ignored_fields": read.ignored, **conversion.report,
              "label_order": order, "label_names": len(names), "out": str(out)}
    info = ExportInfo(task=conversion.task, config=config, label_mode=mode, label_names=names,
                      heads=dict(conversion.heads),
                      extra={"converted_from": str(checkpoint), "conversion": json.dumps(report),
                             **({"label_order": order} if order else {})})
    report["export"] = str(write_export(export_path(out), state, info))
    out.mkdir(parents=True, exist_ok=True)
    dump(config, out / "run_config.yaml")
    scenic = {**conversion.scenic_config, "assumed": conversion.report.get("assumed", [])}
    write_text_atomically(out / "scenic_config.json", json.dumps(scenic, indent=1))
    report["report"] = str(write_text_atomically(out / "report.json", json.dumps(report, indent=1)))
    return report


__all__ = ["ScenicCheckpointError", "ScenicConversionError", "ScenicLayoutError", "ScenicOptions", "convert_scenic",
           "convert_scenic_params", "read_label_file"]
