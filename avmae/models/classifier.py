"""The fine-tuning model: the pretraining encoder without masking, pooled, and one or more linear heads.

Heads: one for AudioSet (multi-label, sigmoid) or VGGSound (single-label, softmax), two for Epic-Kitchens (verb,
noun); the loss belongs to the trainer. Pooling (``classifier_pooling``) averages each present modality's mean token,
so the features keep their scale when a modality is absent at test time and the model still predicts from the other
one; or, as CAV-MAE's CAVMAEFT, takes the mean of all tokens of the concatenation (YuanGongND/cav-mae src/models/cav_mae.py).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.encoder import FusionEncoder
from avmae.models.scenic_init import init_transformer
from avmae.models.tokenizers import Tokenizer
from avmae.models.vit import init_weights

InputModality = Literal["av", "audio", "video"]

# Pretraining checkpoint prefixes that the classifier takes over (the decoder is dropped).
ENCODER_PREFIXES = ("tokenizer.", "encoder.")


class AVClassifier(nn.Module):
    def __init__(self, config: ModelConfig, heads: dict[str, int], modality: InputModality = "av",
                 modality_dropout: float = 0.0, seed: int = 0):
        super().__init__()
        self.config = config.validate()
        self.modality = modality
        self.modality_dropout = modality_dropout
        # One modality alone, in a model with per-modality norms (CAV-MAE): "own" runs it through its own norms
        # (CAV-MAE's audioonly / videoonly), "averaged" also through the joint norms and averages the two.
        self.alone_norms: Literal["own", "averaged"] = config.alone_norms
        # The same draws on every rank: data-parallel ranks must use the same parameters in a step, or their
        # gradient reductions no longer line up (ZeRO buckets differ in size and the collective fails).
        self._dropout_draws = torch.Generator().manual_seed(seed)
        width = config.encoder.dims()[0]
        self.tokenizer = Tokenizer(config, width)
        self.encoder = FusionEncoder(config)
        self.head_norm = nn.LayerNorm(width, eps=config.encoder.layer_norm_eps)
        self.heads = nn.ModuleDict({name: nn.Linear(width, classes) for name, classes in heads.items()})
        if config.init == "scenic":
            init_transformer(self.encoder)
        else:
            self.encoder.apply(init_weights)
        for head in self.heads.values():  # small heads: the pretrained features decide the first steps (MAE)
            nn.init.trunc_normal_(head.weight, std=2e-5)
            nn.init.zeros_(head.bias)

    def _inputs(self, audio, video) -> dict[str, torch.Tensor]:
        use_audio = audio is not None and self.modality in ("av", "audio")
        use_video = video is not None and self.modality in ("av", "video")
        if self.training and use_audio and use_video and self.modality_dropout > 0:
            # Drop one whole modality for the batch now and then, so a missing one at test time is familiar.
            draw = float(torch.rand((), generator=self._dropout_draws))
            if draw < self.modality_dropout / 2:
                use_audio = False
            elif draw < self.modality_dropout:
                use_video = False
        tokens = {}
        if use_audio:
            tokens["audio"] = self.tokenizer.audio(audio)[0]
        if use_video:
            tokens["video"] = self.tokenizer.video(video)[0]
        if not tokens:
            raise ValueError(f"a {self.modality!r} classifier got no usable input (audio given: {audio is not None}, "
                             f"video given: {video is not None})")
        return tokens

    def _pool(self, fused: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.config.classifier_pooling == "token_mean":
            return torch.cat(list(fused.values()), dim=1).mean(dim=1)
        return torch.stack([x.mean(dim=1) for x in fused.values()]).mean(dim=0)

    def features(self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None) -> torch.Tensor:
        tokens = self._inputs(audio, video)
        pooled = self._pool(self.encoder(tokens)[0])
        if len(tokens) == 1 and self.alone_norms == "averaged" and self.config.encoder.modality_norms:
            # CAV-MAE's missingaudioonly / missingvideoonly (fine-tuned on both, given one): the mean of the lone
            # modality's pooled features through its own norms and through the joint norms.
            pooled = (pooled + self._pool(self.encoder(tokens, own_norms=False)[0])) / 2
        return self.head_norm(pooled)

    def forward(self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Logits per head, ``{name: (B, classes)}``."""
        features = self.features(audio, video)
        return {name: head(features) for name, head in self.heads.items()}

    def load_pretrained(self, state_dict: dict[str, torch.Tensor],
                        fresh: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """Take the tokenizer and encoder weights of an AV-MAE pretraining checkpoint, but those under the ``fresh``
        prefixes, which stay at this model's initialisation. Returns what was loaded, which encoder keys the
        checkpoint lacked (``missing``), what it had that this model cannot use (``unexpected``: other fusion layout)
        and what was skipped on purpose (``skipped``: the decoder; ``left_at_initialisation``: the fresh keys)."""
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        own = self.state_dict()
        left = sorted(k for k in own if fresh and k.startswith(fresh))
        wanted = {k for k in own if k.startswith(ENCODER_PREFIXES)} - set(left)
        offered = {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES) and k not in left}
        mismatched = sorted(k for k in offered.keys() & wanted if offered[k].shape != own[k].shape)
        if mismatched:
            details = ", ".join(f"{k} {tuple(offered[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched[:3])
            raise ValueError(f"pretrained weights do not fit this model's shapes: {details}")
        loadable = {k: v for k, v in offered.items() if k in wanted}
        self.load_state_dict(loadable, strict=False)
        return {"loaded": sorted(loadable), "missing": sorted(wanted - loadable.keys()),
                "unexpected": sorted(offered.keys() - wanted), **({"left_at_initialisation": left} if fresh else {}),
                "skipped": sorted(k for k in state_dict if not k.startswith(ENCODER_PREFIXES))}
