"""How far two evaluations of the same model on the same clips may differ when only the JPEG decoder differs: DALI
``mixed`` (nvJPEG) against the torch backend (libjpeg-turbo), as the GPU check compares them.

The scores. With ``jpeg_fancy_upsampling`` nvJPEG upsamples chroma with libjpeg-turbo's triangular filter (DALI's
``fn.decoders.image`` documentation), so what is left between the two decoders is the inverse DCT's integer rounding
(libjpeg-turbo's accurate ``islow`` IDCT against nvJPEG's CUDA or hardware-engine IDCT): a level or two of 255 on some
pixels. avmae-eval scores in fp32 on both backends, with the same model on the same device, so the pixels are the only
difference. A change of a level or two in some pixels moves a fine-tuned classifier's logits by a few hundredths at
most (a patch embedding sums 1,536 pixels of a 2 x 16 x 16 tube, and independent +-1 rounding errors mostly cancel),
and softmax probabilities move at most half as much as the largest logit change: d p_i / d z_j = p_i (delta_ij - p_j),
whose row sums are 2 p_i (1 - p_i) <= 1/2. The GPU check's tolerance, 2e-2 on probabilities, is therefore a budget of
4e-2 on every logit: an argued bound, which only a GPU run confirms. On a CPU both backends decode with libjpeg-turbo
and agree to float rounding.

The metrics. Given the largest score gap actually measured, a top-k accuracy can differ only on samples whose label's
score lies within twice that gap of the k-th highest score of the other classes (each score moved by at most the gap,
so only such a comparison can flip): their share of the samples bounds the difference, exactly, with no model of the
decoder at all. Every other number must be equal.
"""

from __future__ import annotations

import numpy as np


def close_calls(scores: np.ndarray, labels: np.ndarray, k: int, gap: float) -> int:
    """Samples whose label's top-k membership could flip if every score moved by at most ``gap``."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    rows = np.arange(len(labels))
    own = scores[rows, labels]
    others = scores.copy()
    others[rows, labels] = -np.inf
    if k >= scores.shape[1]:  # top-k of k or fewer classes always holds the label
        return 0
    kth_other = -np.sort(-others, axis=1)[:, k - 1]
    return int((np.abs(own - kth_other) <= 2 * gap).sum())


def metric_tolerances(scores: np.ndarray, labels: np.ndarray, gap: float, names: list[str]) -> dict[str, float]:
    """The largest difference each metric may show between the two evaluations, from one side's scores and the
    measured score gap: ``topK`` by close calls (above), every other metric 0 (it must be equal)."""
    tolerances = {}
    for name in names:
        if name.startswith("top") and name[3:].isdigit():
            tolerances[name] = close_calls(scores, labels, int(name[3:]), gap) / len(labels)
        else:
            tolerances[name] = 0.0
    return tolerances
