"""Read a 16-bit PCM wav into what ``torchaudio.load`` returns for it: a (channels, samples) float32 tensor of the
samples / 32768, and the file's rate. CAV-MAE loads its prepared wavs with ``torchaudio.load`` (src/dataloader.py);
torchaudio 2.11's ``load`` needs the torchcodec package, which avmae does not depend on, so the stdlib ``wave`` module
reads the PCM and the scaling is done here (torchaudio's ``normalize=True`` maps int16 to float32 by 1 / 2**15).

CAV-MAE's wavs are 16-bit: ffmpeg's wav muxer writes ``pcm_s16le`` by default and sox keeps it
(src/preprocess/extract_audio.py). Other sample formats are refused with the file named rather than guessed at.
"""

from __future__ import annotations

import wave

import numpy as np
import torch

from avmae.shard.inputs.media import MediaError


def read_wav(path: str) -> tuple[torch.Tensor, int]:
    """(waveform (channels, samples) float32, sample rate); ``MediaError`` naming ``path`` if it cannot be read."""
    try:
        with wave.open(path, "rb") as handle:
            width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
            raw = handle.readframes(handle.getnframes())
    except FileNotFoundError:
        raise MediaError("missing_wav", f"{path}: no such file") from None
    except (wave.Error, EOFError, OSError) as err:
        raise MediaError("bad_wav", f"{path}: not a PCM wav that can be read ({err})") from None
    if width != 2:
        raise MediaError("bad_wav", f"{path}: {8 * width}-bit samples; CAV-MAE's wavs are 16-bit PCM")
    pcm = np.frombuffer(raw[: len(raw) // (2 * channels) * 2 * channels], dtype="<i2").reshape(-1, channels)
    waveform = torch.from_numpy(np.ascontiguousarray(pcm.T).astype(np.float32) / 32768.0)
    return waveform, rate
