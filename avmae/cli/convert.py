"""``avmae-convert``: checkpoints of the systems avmae descends from, as avmae exports. Parsing only; the work is in
avmae.export.cavmae and avmae.models.convert_cavmae."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avmae.shard.format import LabelMode

DESCRIPTION = """\
Convert a CAV-MAE checkpoint (the pretrained CAVMAE or a fine-tuned CAVMAEFT state dict, as released: keys prefixed
module.) to an avmae export (fp32 safetensors with its run config). Every CAV-MAE key is either loaded or dropped by
name: the never-used per-modality LayerNorms of its modality-specific and decoder blocks. The full report is written
beside the output (<out>.report.json). A fine-tuned model then runs with `avmae-eval --ckpt <out>`; a pretrained one
is an `init.path` (`init.kind: avmae`) for avmae-train.
"""

EXAMPLES = """\
examples:
  avmae-convert cavmae --src cav-mae-scale++.pth --out runs/cavmae/scale++.safetensors
  avmae-convert cavmae --src as-full-51.2.pth --out runs/cavmae/as2m_ft.safetensors --labels class_labels_indices.csv \\
      --label-mode multi
  avmae-eval --ckpt runs/cavmae/as2m_ft.safetensors --data /data/as_eval --split test --task audioset --views 10
  avmae-convert cavmae --src vgg_65.5.pth --out vgg.safetensors --config configs/cavmae_finetune_vggsound.yaml
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avmae-convert", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="system", required=True)
    cavmae = sub.add_parser("cavmae", help="YuanGongND/cav-mae checkpoints (CAVMAE / CAVMAEFT)")
    cavmae.add_argument("--src", type=Path, required=True, help="CAV-MAE .pth state dict")
    cavmae.add_argument("--out", type=Path, required=True, help="avmae export to write (.safetensors)")
    cavmae.add_argument("--config", type=Path, help="run YAML the model belongs to (default: cavmae_base with "
                                                    "CAV-MAE's data settings)")
    cavmae.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    cavmae.add_argument("--labels", type=Path, help="CAV-MAE label CSV (index,mid,display_name): names of the classes")
    cavmae.add_argument("--label-mode", choices=[LabelMode.MULTI.value, LabelMode.SINGLE.value],
                        help="of a fine-tuned checkpoint: multi (AudioSet) or single (VGGSound); default: as the "
                             "--config's finetune.loss says (bce: multi, ce: single)")
    cavmae.add_argument("--json", action="store_true", help="print the whole report")
    return parser


FLAGS = {"label_mode": "--label-mode", "finetune.loss": "--set finetune.loss"}  # library terms -> this CLI's


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from avmae.config import ConfigError
    from avmae.export.cavmae import convert_files

    try:
        report = convert_files(args.src, args.out, args.config, args.set, args.labels, args.label_mode)
    except (ConfigError, ValueError, FileNotFoundError, KeyError, OSError) as err:
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        for name, flag in FLAGS.items():
            message = message.replace(f"give {name}", f"give {flag}")
        print(f"avmae-convert: {message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['source']} ({report['source_keys']} keys, {report['source_parameters'] / 1e6:.3f} M) -> "
              f"{args.out} [{report['task']}]: {report['mapped']} keys loaded, {len(report['dropped'])} never-used "
              f"LayerNorm keys dropped ({report['dropped_parameters']:,} parameters; listed in {report['report']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
