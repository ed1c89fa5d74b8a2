"""Reconstruction figures of a pretraining checkpoint, as in the AV-MAE paper's Fig. 5: for a few samples, the
original frames and spectrogram, what the encoder saw (masked), and the reconstruction (visible patches kept,
masked ones predicted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avmae.data.samples import video_normalisation
from avmae.export.load import LoadedModel
from avmae.models.tokenizers import unpatchify_audio, unpatchify_video


def _denormalise_predictions(pred: torch.Tensor, target: torch.Tensor, norm_pix: bool,
                             unbiased: bool = True) -> torch.Tensor:
    """Predictions of per-patch normalised targets back in input units, using the true patch statistics (MAE), with
    the variance the model normalised its targets by (``model.norm_pix_variance``)."""
    if not norm_pix:
        return pred
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True, unbiased=unbiased) + 1e-6).sqrt()
    return pred * std + mean


@torch.no_grad()
def reconstruct_batch(loaded: LoadedModel, audio: torch.Tensor, video: torch.Tensor, seed: int = 0) -> dict:
    model, config = loaded.model, loaded.config.model
    if config.objective == "inpainting" and config.inpainting_layout == "scenic":
        # Its prediction slots follow the other modality's visible tokens, so they are not token positions to paste.
        raise ValueError(f"{loaded.path}: reconstructions of Scenic's inpainting layout (model.inpainting_layout "
                         "scenic) cannot be drawn at token positions; draw a reconstruction-objective model")
    out = model(audio, video, generator=torch.Generator().manual_seed(seed))
    targets = model.targets(audio, video)
    result = {}
    for m in ("audio", "video"):
        pred = _denormalise_predictions(out[f"pred_{m}"], targets[m], config.norm_pix_loss,
                                        config.norm_pix_variance == "unbiased")
        mask = out[f"mask_{m}"].unsqueeze(-1)
        masked = torch.where(mask, torch.full_like(targets[m], float("nan")), targets[m])
        pasted = torch.where(mask, pred, targets[m])
        result[m] = (targets[m], masked, pasted)
    audio_grid = (audio.shape[1] // config.audio.patch, audio.shape[2] // config.audio.patch)
    video_grid = (video.shape[1] // config.video.tubelet, video.shape[3] // config.video.patch,
                  video.shape[4] // config.video.patch)
    return {
        "audio": [unpatchify_audio(x, audio_grid, config.audio.patch, config.audio.token_order) for x in result["audio"]],
        "video": [unpatchify_video(x, video_grid, config.video.patch, config.video.tubelet) for x in result["video"]],
        "loss": float(out["loss"]),
    }


def _to_image(frames: torch.Tensor, data_config) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) in [0, 1]; NaN (masked) patches become grey."""
    mean, std = video_normalisation(data_config)
    image = frames * std.view(3, 1, 1) + mean.view(3, 1, 1)
    image = torch.nan_to_num(image, nan=0.5).clamp(0, 1)
    return image.permute(1, 2, 0).cpu().numpy()


def save_figure(recon: dict, index: int, key: str, data_config, path: Path, frames_shown: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    original, masked, pasted = (v[index] for v in recon["video"])
    spectra = [v[index].float().cpu().numpy() for v in recon["audio"]]
    steps = np.linspace(0, original.shape[0] - 1, frames_shown).round().astype(int)
    figure = plt.figure(figsize=(2.2 * frames_shown + 6, 6.8))
    grid = figure.add_gridspec(3, frames_shown + 1, width_ratios=[1] * frames_shown + [2.4])
    for row, (name, clip) in enumerate((("original", original), ("masked", masked), ("reconstruction", pasted))):
        for column, t in enumerate(steps):
            axis = figure.add_subplot(grid[row, column])
            axis.imshow(_to_image(clip[t], data_config))
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(name)
            if row == 0:
                axis.set_title(f"frame {t}")
        axis = figure.add_subplot(grid[row, frames_shown])
        shown = np.ma.masked_invalid(spectra[row].T)
        axis.imshow(shown, origin="lower", aspect="auto", cmap="magma")
        axis.set_title(f"log-mel ({name})", fontsize=9)
        axis.set_xticks([])
    figure.suptitle(f"{key}   (loss {recon['loss']:.3f})")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_reconstructions(ckpt: str | Path, data: str, split: str, num: int, seed: int, out: Path) -> list[Path]:
    """One figure per sample for the first ``num`` samples of ``split``; the paths written."""
    import dataclasses

    from avmae.data.loader import Loader
    from avmae.export.load import load_model
    from avmae.recipe.geometry import load_run_spec
    from avmae.shard.inputs.items import file_stem_for_key

    loaded = load_model(ckpt)
    if loaded.task != "pretrain":
        raise ValueError(f"{loaded.path} is not a pretraining checkpoint")
    if loaded.config.mavil.teacher:
        raise ValueError(f"{loaded.path} is a MAViL stage-2 model; it predicts its teacher's features, not pixels: "
                         "reconstruct from the stage-1 teacher")
    config = dataclasses.replace(loaded.config.data, shards=data, batch_size=num, workers=0)
    spec = load_run_spec(loaded.config, split, shards=data)
    batch = next(iter(Loader(spec, config, train=False)))
    recon = reconstruct_batch(loaded, batch["audio"], batch["video"], seed)
    paths = []
    for index, key in enumerate(batch["key"][:num]):
        path = out / f"{file_stem_for_key(key)}.png"  # a key is data: it must not choose where a file goes
        save_figure(recon, index, key, config, path)
        paths.append(path)
    return paths
