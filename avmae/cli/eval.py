"""``avmae-eval``: metrics of a checkpoint on a sharded split, recomputation from saved predictions, and
reconstruction figures. Parsing and file output only; the work is in avmae.eval."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

DESCRIPTION = """\
Evaluate an avmae checkpoint (an export/*.safetensors file or a run folder) on a shard split:
  audioset   mAP (classes without positives are excluded and counted; mAP_sklearn scores them 0), mAUC, d-prime
  vggsound   top-1 / top-5 accuracy (any single-label set)
  epic       verb, noun and action top-1 / top-5 (action = argmax of the verb x noun softmax product)
  retrieval  audio->video and video->audio R@1/5/10 and median rank from a pretraining checkpoint
Runs in one process or under torchrun / srun (every sample counted once). Writes report.json, predictions.npz
(recompute with `avmae-eval metrics`), per-class AP CSV and PNG plots to --out.
"""

EXAMPLES = """\
examples:
  avmae-eval --ckpt runs/finetune_as20k --data /data/as_eval --split test --task audioset --views 4
  avmae-eval --ckpt runs/pretrain --data shards --split val --task retrieval
  avmae-eval --ckpt runs/pretrain --data shards --split val --task vggsound --linear-probe
  avmae-eval metrics --pred out/predictions.npz --task audioset
  avmae-eval reconstruct --ckpt runs/pretrain --data shards --split val --num 4 --out figures/
"""


def _eval_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avmae-eval", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="exported .safetensors or a run folder")
    parser.add_argument("--weights", default="model", choices=["model", "best", "averaged"],
                        help="which export of a run folder")
    parser.add_argument("--data", required=True, help="shard folder (avmae-shard build)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--task", required=True, choices=["audioset", "vggsound", "epic", "retrieval"])
    parser.add_argument("--modality", choices=["av", "audio", "video"], help="inputs used (default: as trained)")
    parser.add_argument("--alone-norms", choices=["own", "averaged"], default="own",
                        help="one modality given to a model with per-modality norms (CAV-MAE): its own norms "
                             "(CAV-MAE's audioonly/videoonly) or the mean of that and the joint norms "
                             "(missingaudioonly/missingvideoonly)")
    parser.add_argument("--views", type=int, default=1, help="temporal views per clip, probabilities averaged")
    parser.add_argument("--linear-probe", action="store_true",
                        help="train a linear head on frozen features of --train-split, score --split")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--out", type=Path, help="report folder (default: <run>/eval_<task>_<split>)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backend", default="auto", choices=["auto", "dali", "webdataset"])
    parser.add_argument("--device", choices=["cpu", "cuda"])
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def _out_dir(args) -> Path:
    if args.out:
        return args.out
    ckpt = Path(args.ckpt)
    run = ckpt if ckpt.is_dir() else ckpt.parent.parent
    return run / f"eval_{args.task}_{args.split}{'_probe' if args.linear_probe else ''}"


def _run_eval(args) -> int:
    import torch.distributed as dist

    try:
        return _evaluate(args)
    finally:
        if dist.is_initialized():  # every rank leaves together; a rank exiting alone aborts the others in gloo
            dist.barrier()
            dist.destroy_process_group()


def _evaluate(args) -> int:
    from avmae.config import to_dict
    from avmae.eval import report as reports
    from avmae.export.load import load_model
    from avmae.distributed import setup_distributed
    from avmae.eval.runner import classify, embeddings, retrieve, versions

    dist_info = setup_distributed(args.device)
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world
    loaded = load_model(args.ckpt, args.weights, args.modality)
    if hasattr(loaded.model, "alone_norms"):
        loaded.model.alone_norms = args.alone_norms
    common = dict(batch_size=args.batch_size, workers=args.workers, backend=args.backend, device=device,
                  rank=rank, world=world)
    result: dict[str, Any] = {"checkpoint": str(loaded.path), "task": args.task, "data": args.data,
                              "split": args.split, "modality": args.modality or loaded.config.finetune.modality,
                              "alone_norms": args.alone_norms,
                              "config": to_dict(loaded.config), "versions": versions(), "world_size": world}
    arrays = None
    if args.task == "retrieval":
        result["metrics"] = retrieve(loaded, args.data, args.split, **common)
    elif args.linear_probe:
        from avmae.eval.probe import linear_probe

        train = embeddings(loaded, args.data, args.train_split, **common)
        test = embeddings(loaded, args.data, args.split, **common)
        spec = test["spec"]
        result["metrics"] = linear_probe(train, test, spec.label_mode == "multi", len(spec.label_names))
        result["linear_probe"] = {"train_split": args.train_split, "features": "audio and video pooled, concatenated"}
    else:
        metrics, arrays = classify(loaded, args.data, args.split, args.task, views=args.views, **common)
        result.update({k: metrics.pop(k) for k in ("views", "view_aggregation", "label_set_hash", "features")})
        result["metrics"] = metrics
    if rank != 0:
        return 0
    out = _out_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    if arrays is not None:
        _write_predictions(out, arrays, result)
    reports.write_json(result, out / "report.json")
    if args.json:
        print((out / "report.json").read_text())
    else:
        reports.print_table(result, f"{args.task} on {args.data} [{args.split}] → {out}")
    return 0


def _write_predictions(out: Path, arrays: dict[str, Any], result: dict[str, Any]) -> None:
    from avmae.eval import report as reports

    metrics = result["metrics"]
    names = metrics.pop("label_names")
    heads = [k.removeprefix("scores_") for k in arrays if k.startswith("scores_")]
    if heads == ["label"]:
        np.savez(out / "predictions.npz", scores=arrays["scores_label"], targets=arrays["targets_label"],
                 keys=arrays["keys"])
    else:
        np.savez(out / "predictions.npz", keys=arrays["keys"], **{k: v for k, v in arrays.items() if k != "keys"})
    label_mode = metrics.pop("label_mode")
    if label_mode == "multi":
        ap = np.array(metrics.pop("per_class_ap"), dtype=float)
        reports.write_per_class_csv(ap, names, arrays["targets_label"], out / "per_class_ap.csv")
        reports.plot_per_class_ap(ap, names, out / "per_class_ap.png")
        metrics["empty_class_handling"] = ("classes without positives are left out of mAP (and counted); "
                                           "mAP_sklearn scores them 0 like scikit-learn >= 1.1")
    elif label_mode == "single":
        confusions = reports.top_confusions(arrays["scores_label"], arrays["targets_label"], names)
        reports.plot_confusions(confusions, out / "confusions.png")
        result["top_confusions"] = confusions


def _run_metrics(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avmae-eval metrics", description="Recompute metrics from predictions.npz")
    parser.add_argument("--pred", type=Path, required=True)
    parser.add_argument("--task", required=True, choices=["audioset", "vggsound", "epic"])
    args = parser.parse_args(argv)
    import json

    from avmae.eval.metrics import epic_metrics, multilabel_metrics, single_label_metrics

    data = np.load(args.pred)
    if args.task == "audioset":
        metrics = multilabel_metrics(data["scores"], data["targets"])
        metrics.pop("per_class_ap")
    elif args.task == "vggsound":
        metrics = single_label_metrics(data["scores"], data["targets"])
    else:
        metrics = epic_metrics(data["scores_verb"], data["scores_noun"], data["targets_verb"], data["targets_noun"])
    print(json.dumps(metrics, indent=1, sort_keys=True))
    return 0


def _run_reconstruct(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avmae-eval reconstruct",
                                     description="PNG figures: original / masked / reconstructed frames and log-mel")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--num", type=int, default=4, help="samples")
    parser.add_argument("--seed", type=int, default=0, help="mask draw")
    parser.add_argument("--out", type=Path, default=Path("reconstructions"))
    args = parser.parse_args(argv)
    import dataclasses

    from avmae.data.loader import Loader
    from avmae.export.load import load_model
    from avmae.recipe.geometry import load_run_spec
    from avmae.eval.reconstruct import reconstruct_batch, save_figure

    loaded = load_model(args.ckpt)
    if loaded.task != "pretrain":
        print(f"avmae-eval reconstruct: {loaded.path} is not a pretraining checkpoint", file=sys.stderr)
        return 2
    if loaded.config.mavil.teacher:
        print(f"avmae-eval reconstruct: {loaded.path} is a MAViL stage-2 model; it predicts its teacher's features, "
              "not pixels: reconstruct from the stage-1 teacher", file=sys.stderr)
        return 2
    config = dataclasses.replace(loaded.config.data, shards=args.data, batch_size=args.num, workers=0)
    spec = load_run_spec(loaded.config, args.split, shards=args.data)
    batch = next(iter(Loader(spec, config, train=False)))
    recon = reconstruct_batch(loaded, batch["audio"], batch["video"], args.seed)
    for index, key in enumerate(batch["key"][: args.num]):
        path = args.out / f"{key}.png"
        save_figure(recon, index, key, config, path)
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "metrics":
            return _run_metrics(argv[1:])
        if argv and argv[0] == "reconstruct":
            return _run_reconstruct(argv[1:])
        return _run_eval(_eval_parser().parse_args(argv))
    except (ValueError, FileNotFoundError) as err:
        print(f"avmae-eval: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
