"""``avmae-convert``: checkpoints of the systems avmae descends from, as avmae exports. Parsing only; the work is in
avmae.export.cavmae and avmae.models.convert_cavmae."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DESCRIPTION = """\
Convert a CAV-MAE checkpoint (the pretrained CAVMAE or a fine-tuned CAVMAEFT state dict, as released: keys prefixed
module.) to an avmae export (fp32 safetensors with its run config). Every CAV-MAE key is either loaded or dropped by
name: the never-used per-modality LayerNorms of its modality-specific and decoder blocks. The full report is written
beside the output (<out>.report.json). A fine-tuned model then runs with `avmae-eval --ckpt <out>`; a pretrained one
is a `finetune.init` or `model_init` for avmae-train.
"""

EXAMPLES = """\
examples:
  avmae-convert cavmae --src cav-mae-scale++.pth --out runs/cavmae/scale++.safetensors
  avmae-convert cavmae --src as-full-51.2.pth --out runs/cavmae/as2m_ft.safetensors --labels class_labels_indices.csv
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
    cavmae.add_argument("--label-mode", choices=["multi", "single"],
                        help="default: single for 309 classes (VGGSound), multi otherwise (AudioSet)")
    cavmae.add_argument("--json", action="store_true", help="print the whole report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from avmae.config import ConfigError, load
    from avmae.recipe.config import RunConfig
    from avmae.export.cavmae import export_cavmae, read_label_names

    try:
        config = load(RunConfig, args.config, args.set) if args.config else None
        labels = read_label_names(args.labels) if args.labels else None
        report = export_cavmae(args.src, args.out, config, labels, args.label_mode,
                               overrides=[] if args.config else args.set)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"avmae-convert: {err}", file=sys.stderr)
        return 2
    report_path = args.out.with_name(args.out.name.removesuffix(".safetensors") + ".report.json")
    report_path.write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"{report['source']} ({report['source_keys']} keys, {report['source_parameters'] / 1e6:.3f} M) -> "
              f"{args.out} [{report['task']}]: {report['mapped']} keys loaded, {len(report['dropped'])} never-used "
              f"LayerNorm keys dropped ({report['dropped_parameters']:,} parameters; listed in {report_path})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
