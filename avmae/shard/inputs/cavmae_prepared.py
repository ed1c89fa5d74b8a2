"""CAV-MAE's prepared data as build inputs: its data JSON, extracted frames and 16 kHz wavs, without the videos.

The data JSON (CAV-MAE ``src/preprocess/README.md``, read by ``src/dataloader.py``)::

    {"data": [{"video_id": "...", "wav": "/path/to/audio/ID.wav", "video_path": "/path/to/frames",
               "labels": "/m/068hy,/m/07q6cd_"}, ...]}

``labels`` are comma-separated names (AudioSet mids, or the names of CAV-MAE's label csv, which ``--class-labels``
orders). Relative ``wav``/``video_path`` are taken relative to ``src`` when it is given, else to the JSON's folder
(CAV-MAE itself resolves them against its working directory). One input per entry; its sample is made by
samples/from_prepared.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from avmae.shard.inputs.items import ClipItem
from avmae.shard.inputs.lists import LabelSet, ListFormatError, label_set

CAVMAE_FRAMES = 10  # extract_video_frame.py's extract_frame_num, and the loader's total_frame default
CAVMAE_FRAME_SIZE = 224  # extract_video_frame.py: Resize(224) + CenterCrop(224)
_FIELDS = ("video_id", "wav", "video_path", "labels")


def _resolve(text: str, root: Path) -> str:
    path = Path(text)
    return str(path if path.is_absolute() else (root / path).resolve())


def read_cavmae_datafile(path: Path, src: Path | None, class_labels: Path | None) -> tuple[list[ClipItem], LabelSet]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ListFormatError(f"{path}: not a CAV-MAE data JSON ({err})") from None
    entries = document.get("data") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise ListFormatError(f"{path}: a CAV-MAE data JSON is {{\"data\": [...]}}; this file has no 'data' list")
    root = src if src is not None else path.parent
    items = []
    for index, entry in enumerate(entries):
        missing = [name for name in _FIELDS if not isinstance(entry, dict) or not isinstance(entry.get(name), str)]
        if missing:
            raise ListFormatError(f"{path}: data[{index}] lacks the text field(s) {', '.join(missing)} "
                                  f"(each entry needs {', '.join(_FIELDS)})")
        video_id = entry["video_id"]
        labels = tuple(label.strip() for label in entry["labels"].split(",") if label.strip())
        items.append(ClipItem(
            item_id=video_id, video_id=video_id, source=f"{path.name}:data[{index}]",
            path=_resolve(entry["wav"], root), labels=labels, frames_root=_resolve(entry["video_path"], root),
            extra={"cavmae_video_path": entry["video_path"], "cavmae_wav": entry["wav"]},
        ))
    return items, label_set(items, path, class_labels)
