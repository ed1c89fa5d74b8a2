"""MAE decoders and the two objectives of AV-MAE (Scenic ``apply_decoder``, google-research/scenic scenic/projects/av_mae/vivit_multimodal.py).

Decoder kinds: ``separate`` (one per modality), ``shared`` (one set of weights applied to each modality on its
own), ``joint`` (one pass over both modalities' tokens). Each modality has its own input projection and mask
token, or both share one (``shared_input``, CAV-MAE).

Objectives: ``reconstruction`` (a modality's decoder sees its own encoded visible tokens at their positions plus
mask tokens) and ``inpainting`` (it sees only the *other* modality's encoded visible tokens, then mask tokens at
every position of its own, and must reconstruct all of it). ``inpainting_layout: scenic`` is Scenic's own form
of inpainting: the other modality's tokens from the fused encoder output fill the first slots of a sequence of this
modality's length, mask tokens the rest, and only those remaining slots are predicted.
"""

from __future__ import annotations

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.encoder import MODALITIES
from avmae.models.tokenizers import Positions
from avmae.models.vit import Transformer


def _other(modality: str) -> str:
    return "video" if modality == "audio" else "audio"


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig, encoder_width: int):
        super().__init__()
        d = config.decoder
        self.kind = d.kind
        self.width = d.width
        self.modality_embeddings = config.modality_embeddings
        self.shared_input = d.shared_input
        patch_dims = {"audio": config.audio.patch ** 2,
                      "video": config.video.tubelet * config.video.patch ** 2 * 3}
        if d.shared_input:
            self.embed = nn.Linear(encoder_width, d.width)
            self.mask_token = nn.Parameter(torch.zeros(1, 1, d.width))
            mask_tokens = [self.mask_token]
        else:
            self.embed = nn.ModuleDict({m: nn.Linear(encoder_width, d.width) for m in MODALITIES})
            self.mask_token = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, d.width)) for m in MODALITIES})
            mask_tokens = list(self.mask_token.values())
        if config.modality_embeddings:
            self.modality_type = nn.ParameterDict({m: nn.Parameter(torch.zeros(1, 1, d.width)) for m in MODALITIES})
        self.position = Positions(config, d.width)
        self.inpainting_layout = config.inpainting_layout

        def stack() -> Transformer:
            return Transformer(d.width, d.depth, d.heads, d.mlp, eps=d.layer_norm_eps,
                               checkpointing=config.activation_checkpointing, gelu=config.gelu)

        if d.kind == "separate":
            self.blocks = nn.ModuleDict({m: stack() for m in MODALITIES})
        else:
            self.blocks = stack()
        self.head = nn.ModuleDict({m: nn.Linear(d.width, patch_dims[m]) for m in MODALITIES})
        for parameter in [*mask_tokens, *(self.modality_type.values() if config.modality_embeddings else [])]:
            nn.init.normal_(parameter, std=0.02)

    def _embed(self, modality: str) -> nn.Linear:
        return self.embed if self.shared_input else self.embed[modality]

    def _mask_token(self, modality: str) -> nn.Parameter:
        return self.mask_token if self.shared_input else self.mask_token[modality]

    def reset_mask_tokens(self) -> None:
        """Scenic initialises ``mask_token_<m>`` to zeros (vivit_multimodal.py)."""
        for token in (self.mask_token.values() if isinstance(self.mask_token, nn.ParameterDict) else [self.mask_token]):
            nn.init.zeros_(token)

    def reset_heads(self) -> None:
        """AV-MAE zero-initialises the output projections (after the model-wide init)."""
        for head in self.head.values():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def _position(self, modality: str, grid, batch_like: torch.Tensor) -> torch.Tensor:
        pos = self.position(modality, grid, batch_like)
        return pos + self.modality_type[modality] if self.modality_embeddings else pos

    def _full_sequence(self, modality, encoded, visible, grid, tokens) -> torch.Tensor:
        """A modality's own visible tokens scattered to their positions, mask tokens elsewhere."""
        x = self._embed(modality)(encoded)
        full = self._mask_token(modality).to(x.dtype).expand(x.shape[0], tokens, -1)
        full = full.scatter(1, visible.unsqueeze(-1).expand(-1, -1, self.width), x)
        return full + self._position(modality, grid, x)

    def _context(self, modality, encoded, visible, grid) -> torch.Tensor:
        """A modality's encoded visible tokens with their own positions, as context for the other's decoder."""
        pos = self._position(modality, grid, encoded).expand(encoded.shape[0], -1, -1)
        pos = torch.gather(pos, 1, visible.unsqueeze(-1).expand(-1, -1, self.width))
        return self._embed(modality)(encoded) + pos

    def _run(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[modality](x) if self.kind == "separate" else self.blocks(x)

    def _inpaint_scenic(self, modality, context_encoded, grid, tokens) -> torch.Tensor:
        """Scenic's inpainting input for ``modality`` (unshuffle_tokens_inpainting in
        scenic/projects/av_mae/vivit_multimodal.py): the other modality's n visible tokens, projected by that
        modality's decoder projection, in slots 0..n-1, this modality's mask token in slots n..tokens-1, this
        modality's decoder positions over all slots. Returns the decoded (B, tokens, width) sequence."""
        x = self._embed(_other(modality))(context_encoded)
        visible = x.shape[1]
        if visible >= tokens:
            raise ValueError(f"inpainting_layout scenic puts the {visible} visible {_other(modality)} tokens in a "
                             f"sequence of the {tokens} {modality} tokens: there must be fewer")
        queries = self._mask_token(modality).to(x.dtype).expand(x.shape[0], tokens - visible, -1)
        sequence = torch.cat([x, queries], dim=1) + self._position(modality, grid, x)
        return self._run(modality, sequence)

    def forward(self, encoded: dict, visible: dict, grids: dict, tokens: dict, objective: str) -> dict:
        """Per-patch predictions ``{modality: (B, tokens, patch_dim)}``. Inpainting with ``inpainting_layout``
        scenic: slot j of modality m's predictions stands for m's patch j; slots before the other modality's
        visible count are context, not predictions (the loss leaves them out)."""
        if objective == "inpainting" and self.inpainting_layout == "scenic":
            return {m: self.head[m](self._inpaint_scenic(m, encoded[_other(m)], grids[m], tokens[m]))
                    for m in MODALITIES}
        if objective == "inpainting":
            out = {}
            for m in MODALITIES:
                o = _other(m)
                context = self._context(o, encoded[o], visible[o], grids[o])
                queries = self._mask_token(m).to(context.dtype).expand(context.shape[0], tokens[m], -1)
                queries = queries + self._position(m, grids[m], context)
                decoded = self._run(m, torch.cat([context, queries], dim=1))
                out[m] = self.head[m](decoded[:, context.shape[1]:])
            return out
        full = {m: self._full_sequence(m, encoded[m], visible[m], grids[m], tokens[m]) for m in MODALITIES}
        if self.kind == "joint":
            decoded = self.blocks(torch.cat([full[m] for m in MODALITIES], dim=1))
            decoded = dict(zip(MODALITIES, decoded.split([tokens[m] for m in MODALITIES], dim=1)))
        else:
            decoded = {m: self._run(m, full[m]) for m in MODALITIES}
        return {m: self.head[m](decoded[m]) for m in MODALITIES}
