"""``avmae-convert``: checkpoints of the systems avmae descends from, as avmae exports. Parsing only; the work is in
avmae.export.cavmae and avmae.models.convert_cavmae (CAV-MAE), avmae.export.scenic (Google's AV-MAE in Scenic)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avmae.cli.flags import add_fields, dashed, flag_fields, from_args
from avmae.export.cavmae_options import CavmaeOptions
from avmae.export.scenic_options import ScenicOptions

DESCRIPTION = """\
Convert a checkpoint of a system avmae descends from to an avmae export.

cavmae: a CAV-MAE checkpoint (the pretrained CAVMAE or a fine-tuned CAVMAEFT state dict, as released: keys prefixed
module.) to an avmae export (fp32 safetensors with its run config). Every CAV-MAE key is either loaded or dropped by
name: the never-used per-modality LayerNorms of its modality-specific and decoder blocks. The full report is written
beside the output (<out>.report.json). A fine-tuned model then runs with `avmae-eval --ckpt <out>`; a pretrained one
is an `init.path` (`init.kind: avmae`) for avmae-train.

scenic: a released AV-MAE checkpoint of Google's Scenic (Flax msgpack, the file named `checkpoint`): the pretraining
model or an MBT fine-tune (audio+video, audio or video). Sizes, fusion strategy and classes are read off the
parameters; the run config makes avmae compute what Scenic computes (1-D position tables, tanh GELU, ...). The
output folder holds export/model.safetensors, run_config.yaml, scenic_config.json and report.json; it is a run folder
for `avmae-eval --ckpt DIR` and `init: {kind: avmae, path: DIR}`.
"""

EXAMPLES = """\
examples:
  avmae-convert cavmae --src cav-mae-scale++.pth --out runs/cavmae/scale++.safetensors
  avmae-convert cavmae --src as-full-51.2.pth --out runs/cavmae/as2m_ft.safetensors --labels class_labels_indices.csv \\
      --label-mode multi
  avmae-eval --ckpt runs/cavmae/as2m_ft.safetensors --data /data/as_eval --split test --task audioset --views 10
  avmae-convert cavmae --src vgg_65.5.pth --out vgg.safetensors --config configs/cavmae_finetune_vggsound.yaml
  avmae-convert scenic av_mae/audioset/pretrain/checkpoint --out runs/scenic_as_pretrain
  avmae-convert scenic av_mae/audioset/finetune_av/checkpoint --out runs/scenic_as_mbt \
      --labels class_labels_indices.csv
  avmae-eval --ckpt runs/scenic_as_mbt --data /data/as_eval --split test --task audioset
"""

SCENIC_HELP = """\
Convert a released AV-MAE checkpoint of Google's Scenic (google-research/scenic, scenic/projects/av_mae; Flax msgpack,
params at 'params' or 'optimizer/target', optimiser state ignored) to an avmae export folder. What a checkpoint does not
record has defaults from Scenic's recipes, listed as assumed in report.json and scenic_config.json: input sizes
(audio 1000 x 128; video 16 x 224 x 224 pretraining, 32 x 224 x 224 fine-tuning; change them with --set), the MBT fusion
layer (18 for a 527-class head, AudioSet; 16 for 309, VGGSound) and the label order (AudioSet's
class_labels_indices.csv index order; VGGSound's sorted class names).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avmae-convert", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="system", required=True)
    cavmae = sub.add_parser("cavmae", help="YuanGongND/cav-mae checkpoints (CAVMAE / CAVMAEFT)")
    cavmae.add_argument("--src", type=Path, required=True, help="CAV-MAE .pth state dict")
    cavmae.add_argument("--out", type=Path, required=True, help="avmae export to write (.safetensors)")
    add_fields(cavmae, CavmaeOptions)
    cavmae.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    cavmae.add_argument("--labels", type=Path, help="CAV-MAE label CSV (index,mid,display_name): names of the classes")
    cavmae.add_argument("--json", action="store_true", help="print the whole report")

    scenic = sub.add_parser("scenic", help="google-research/scenic AV-MAE checkpoints (pretrained, MBT fine-tuned)",
                            description=SCENIC_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    scenic.add_argument("checkpoint", type=Path, help="the Flax msgpack checkpoint file")
    scenic.add_argument("--out", type=Path, required=True, help="export folder to write (a run folder)")
    scenic.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a run-config value, e.g. model.video.frames=16 or data.shards=/data/as")
    scenic.add_argument("--labels", type=Path, help="class names: AudioSet's class_labels_indices.csv, a VGGSound list "
                                                    "(YTID,start,label,split) or one name per line")
    add_fields(scenic, ScenicOptions)
    scenic.add_argument("--json", action="store_true", help="print the whole report")
    return parser


# library terms -> this CLI's: the options' fields are their flags
FLAGS = {"finetune.loss": "--set finetune.loss",
         **{item.name: dashed(item.name) for options in (ScenicOptions, CavmaeOptions) for item in flag_fields(options)}}


def _convert_cavmae(args) -> dict:
    from avmae.export.cavmae import convert_files

    report = convert_files(args.src, args.out, args.set, args.labels, from_args(CavmaeOptions, args))
    if not args.json:
        print(f"{report['source']} ({report['source_keys']} keys, {report['source_parameters'] / 1e6:.3f} M) -> "
              f"{args.out} [{report['task']}]: {report['mapped']} keys loaded, {len(report['dropped'])} never-used "
              f"LayerNorm keys dropped ({report['dropped_parameters']:,} parameters; listed in {report['report']})")
    return report


def _convert_scenic(args) -> dict:
    from avmae.export.scenic import convert_scenic

    report = convert_scenic(args.checkpoint, args.out, args.set, args.labels, from_args(ScenicOptions, args))
    if not args.json:
        what = (f"{report['encoder_strategy']} + {report['decoder_strategy']}" if report["task"] == "pretrain" else
                f"MBT {'+'.join(report['modalities'])}, {report['classes']} classes, fusion layer "
                f"{report['fusion_layer']}")
        print(f"{report['source']} ({report['scenic_parameters']} params at {report['params_at']}) -> "
              f"{report['export']} [{report['task']}: {what}]; {len(report['assumed'])} settings assumed, listed in "
              f"{report['report']}")
    return report


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from avmae.config import ConfigError

    try:
        report = _convert_scenic(args) if args.system == "scenic" else _convert_cavmae(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError, OSError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        for name, flag in FLAGS.items():
            message = message.replace(f"give {name}", f"give {flag}")
        print(f"avmae-convert: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
