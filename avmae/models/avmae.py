"""The AV-MAE pretraining model, read top to bottom: tokenise, mask, encode the visible tokens, decode, losses."""

from __future__ import annotations

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.decoder import Decoder
from avmae.models.encoder import MODALITIES, FusionEncoder
from avmae.models.losses import info_nce, masked_mse
from avmae.models.masking import (audio_structured_mask, gather_tokens, injected_visible_count, mask_from_visible,
                                  random_mask, tube_mask, visible_count, visible_indices)
from avmae.models.scenic_init import init_transformer
from avmae.models.tokenizers import Tokenizer, patchify_audio, patchify_video, to_audio_order
from avmae.models.vit import init_weights


class AVMAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config.validate()
        width = config.encoder.dims()[0]
        self.tokenizer = Tokenizer(config, width)
        self.encoder = FusionEncoder(config)
        self.decoder = Decoder(config, width)
        for module in [self.encoder, self.decoder]:
            if config.init == "scenic":
                init_transformer(module)
            else:
                module.apply(init_weights)
        if config.init == "scenic":  # Scenic: zero mask tokens and zero output projections
            self.decoder.reset_mask_tokens()
        if config.decoder.zero_init_heads or config.init == "scenic":
            self.decoder.reset_heads()

    def make_masks(self, batch: int, grids: dict, generator=None, device=None) -> dict[str, torch.Tensor]:
        m = self.config.mask
        a_tokens = grids["audio"][0] * grids["audio"][1]
        if m.audio_mode == "random":
            audio = random_mask(batch, a_tokens, m.audio_ratio, generator, device)
        else:  # built on the (time, mel) grid, then put in the tokens' order
            audio = audio_structured_mask(batch, grids["audio"], m.audio_ratio, m.audio_mode, generator, device)
            audio = to_audio_order(audio, grids["audio"], self.config.audio.token_order)
        if m.video_mode == "tube":
            video = tube_mask(batch, grids["video"], m.video_ratio, generator, device)
        else:
            t, h, w = grids["video"]
            video = random_mask(batch, t * h * w, m.video_ratio, generator, device)
        return {"audio": audio, "video": video}

    def visible_counts(self, grids: dict) -> dict[str, int]:
        """Visible tokens per sample of each modality under the configured masks, from the grids alone."""
        m = self.config.mask
        return {"audio": visible_count(grids["audio"], m.audio_ratio, m.audio_mode),
                "video": visible_count(grids["video"], m.video_ratio, m.video_mode)}

    def visible_tokens(self, audio: torch.Tensor, video: torch.Tensor, masks: dict | None = None,
                       generator: torch.Generator | None = None, visible: dict | None = None):
        """Tokenise both inputs and keep the visible tokens: (tokens, grids, masks, visible indices, kept tokens),
        each a dict by modality. Masks are drawn from ``generator`` unless given; ``visible`` gives the visible
        indices themselves, in the order the encoder is to see them (Scenic's ``unmasked_indices``)."""
        tokens, grids = {}, {}
        tokens["audio"], grids["audio"] = self.tokenizer.audio(audio)
        tokens["video"], grids["video"] = self.tokenizer.video(video)
        if visible is not None:
            masks = {m: mask_from_visible(visible[m], tokens[m].shape[1]) for m in MODALITIES}
        else:
            counts = self.visible_counts(grids)
            if masks is None:
                masks = self.make_masks(audio.shape[0], grids, generator, audio.device)
                if self._scenic_inpainting:
                    visible = {m: self._shuffled(visible_indices(masks[m], counts[m]), generator) for m in MODALITIES}
            else:
                counts = {m: injected_visible_count(masks[m], counts[m], m) for m in MODALITIES}
            if visible is None:
                visible = {m: visible_indices(masks[m], counts[m]) for m in MODALITIES}
        kept = {m: gather_tokens(tokens[m], visible[m]) for m in MODALITIES}
        return tokens, grids, masks, visible, kept

    @property
    def _scenic_inpainting(self) -> bool:
        return self.config.objective == "inpainting" and self.config.inpainting_layout == "scenic"

    @staticmethod
    def _shuffled(indices: torch.Tensor, generator) -> torch.Tensor:
        """The indices of each row in a random order: Scenic's visible tokens come in the order of its random
        draw, and its inpainting decoder lays them out in that order."""
        order = torch.rand(indices.shape, generator=generator, device=indices.device).argsort(dim=1)
        return indices.gather(1, order)

    def _loss_masks(self, masks: dict, counts: dict, visible: dict) -> dict:
        """What each modality's loss counts: the masked tokens (reconstruction), every token (inpainting), or with
        Scenic's inpainting layout the slots after the other modality's visible ones."""
        if not self.config.objective == "inpainting":
            return masks
        if self.config.inpainting_layout == "avmae":
            return {m: torch.ones_like(masks[m]) for m in MODALITIES}
        other = {"audio": "video", "video": "audio"}
        return {m: (torch.arange(counts[m], device=masks[m].device) >= visible[other[m]].shape[1]).expand_as(masks[m])
                for m in MODALITIES}

    def targets(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": patchify_audio(audio, self.config.audio.patch, self.config.audio.token_order),
                "video": patchify_video(video, self.config.video.patch, self.config.video.tubelet)}

    def forward(self, audio: torch.Tensor, video: torch.Tensor, masks: dict | None = None,
                generator: torch.Generator | None = None, keep_features: bool = False,
                visible: dict | None = None) -> dict[str, torch.Tensor]:
        """audio (B, time, mel), video (B, T, 3, H, W) -> losses, predictions and masks (True = masked); with
        ``keep_features`` also ``features_audio``/``features_video``: each modality's visible tokens encoded on
        their own and mean-pooled (what the contrastive terms compare). ``masks`` or ``visible`` (indices, in the
        encoder's order) inject the masking instead of drawing it."""
        config = self.config
        tokens, grids, masks, visible, kept = self.visible_tokens(audio, video, masks, generator, visible)

        avmae_inpainting = config.objective == "inpainting" and config.inpainting_layout == "avmae"
        contrastive = config.contrastive.weight > 0
        fused, alone = self.encoder(kept, unimodal=avmae_inpainting or contrastive or keep_features)
        # avmae's inpainting must not let a modality leak into its own reconstruction through joint layers: the
        # decoder of one modality gets the other encoded on its own. Scenic's layout takes the fused output.
        decoder_input = alone if avmae_inpainting else fused
        counts = {m: tokens[m].shape[1] for m in MODALITIES}
        predictions = self.decoder(decoder_input, visible, grids, counts, config.objective)

        targets = self.targets(audio, video)
        loss_masks = self._loss_masks(masks, counts, visible)
        losses = {m: masked_mse(predictions[m], targets[m], loss_masks[m], config.norm_pix_loss,
                                config.norm_pix_variance) for m in MODALITIES}
        total = config.loss_weight_audio * losses["audio"] + config.loss_weight_video * losses["video"]
        out = {"loss_audio": losses["audio"], "loss_video": losses["video"]}
        if keep_features:
            out.update({f"features_{m}": alone[m].mean(dim=1) for m in MODALITIES})
        if contrastive:
            c = config.contrastive
            out["loss_contrastive"] = info_nce(alone["audio"].mean(dim=1), alone["video"].mean(dim=1),
                                               c.temperature, c.bidirectional, c.negatives == "global")
            total = total + c.weight * out["loss_contrastive"]
        out.update(loss=total, pred_audio=predictions["audio"], pred_video=predictions["video"],
                   mask_audio=masks["audio"], mask_video=masks["video"])
        if config.objective == "inpainting" and config.inpainting_layout == "scenic":
            # the predictions' slots are not token positions here: say which slots the loss counted
            out.update(loss_mask_audio=loss_masks["audio"], loss_mask_video=loss_masks["video"])
        return out


def pooled_unimodal(tokenizer: Tokenizer, encoder: FusionEncoder, audio: torch.Tensor | None = None,
                    video: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Unmasked per-modality features (B, width), each modality encoded on its own and mean-pooled: what retrieval
    and the linear probe compare (CAV-MAE's forward_feat). Works for the pretraining model and the classifier."""
    tokens = {}
    if audio is not None:
        tokens["audio"] = tokenizer.audio(audio)[0]
    if video is not None:
        tokens["video"] = tokenizer.video(video)[0]
    _, alone = encoder(tokens, unimodal=True)
    return {m: x.mean(dim=1) for m, x in alone.items()}
