"""The AV-MAE pretraining model, read top to bottom: tokenise, mask, encode the visible tokens, decode, losses."""

from __future__ import annotations

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.decoder import Decoder
from avmae.models.encoder import MODALITIES, FusionEncoder
from avmae.models.losses import info_nce, masked_mse
from avmae.models.masking import audio_structured_mask, gather_tokens, random_mask, tube_mask, visible_indices
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
            module.apply(init_weights)
        if config.decoder.zero_init_heads:
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

    def visible_tokens(self, audio: torch.Tensor, video: torch.Tensor, masks: dict | None = None,
                       generator: torch.Generator | None = None):
        """Tokenise both inputs and keep the visible tokens: (tokens, grids, masks, visible indices, kept tokens),
        each a dict by modality; masks are drawn from ``generator`` unless given."""
        tokens, grids = {}, {}
        tokens["audio"], grids["audio"] = self.tokenizer.audio(audio)
        tokens["video"], grids["video"] = self.tokenizer.video(video)
        if masks is None:
            masks = self.make_masks(audio.shape[0], grids, generator, audio.device)
        visible = {m: visible_indices(masks[m]) for m in MODALITIES}
        kept = {m: gather_tokens(tokens[m], visible[m]) for m in MODALITIES}
        return tokens, grids, masks, visible, kept

    def targets(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"audio": patchify_audio(audio, self.config.audio.patch, self.config.audio.token_order),
                "video": patchify_video(video, self.config.video.patch, self.config.video.tubelet)}

    def forward(self, audio: torch.Tensor, video: torch.Tensor, masks: dict | None = None,
                generator: torch.Generator | None = None, keep_features: bool = False) -> dict[str, torch.Tensor]:
        """audio (B, time, mel), video (B, T, 3, H, W) -> losses, predictions and masks (True = masked); with
        ``keep_features`` also ``features_audio``/``features_video``: each modality's visible tokens encoded on
        their own and mean-pooled (what the contrastive terms compare)."""
        config = self.config
        tokens, grids, masks, visible, kept = self.visible_tokens(audio, video, masks, generator)

        inpainting = config.objective == "inpainting"
        contrastive = config.contrastive.weight > 0
        fused, alone = self.encoder(kept, unimodal=inpainting or contrastive or keep_features)
        # Inpainting must not let a modality leak into its own reconstruction through joint layers: the decoder
        # of one modality gets the other encoded on its own.
        decoder_input = alone if inpainting else fused
        counts = {m: tokens[m].shape[1] for m in MODALITIES}
        predictions = self.decoder(decoder_input, visible, grids, counts, config.objective)

        targets = self.targets(audio, video)
        loss_masks = {m: torch.ones_like(masks[m]) for m in MODALITIES} if inpainting else masks
        losses = {m: masked_mse(predictions[m], targets[m], loss_masks[m], config.norm_pix_loss) for m in MODALITIES}
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
