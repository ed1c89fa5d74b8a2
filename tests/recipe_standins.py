"""Stand-ins for the real datasets, laid out exactly as the recipes (pipelines/*.sh) expect the downloads: the
release's list files in their own formats, and clips named the way the usual downloaders name them. The clips are
synthetic (avmae-shard synth) and few; what is tested is that every step of a recipe runs on such a layout.

Each maker returns the dataset root the recipe is pointed at (AUDIOSET_ROOT, VGGSOUND_ROOT, EPIC_ROOT).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from avmae.shard.inputs.media import ffmpeg_binary
from avmae.shard.inputs.synth import make_corpus


def _clips(folder: Path, count: int, seconds: float) -> list[Path]:
    """``count`` synthetic clips of at least ``seconds`` (small frames: only the layout matters here)."""
    make_corpus(folder, count, 3, seed=7, seconds=seconds, width=96, height=64, workers=2)
    return sorted(folder.rglob("*.mp4"))


def _place(clip: Path, target: Path) -> None:
    """Move a clip to its downloader name; another container (.mkv) is a remux, as yt-dlp would have left it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.suffix == clip.suffix:
        clip.rename(target)
    else:
        subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-i", str(clip), "-c", "copy", str(target)],
                       check=True, capture_output=True)


# AudioSet: three segment CSVs with Google's three comment lines, class_labels_indices.csv, and videos named
# YTID_START_END in milliseconds or seconds (cut to the segment), or YTID.mp4 (whole; the row's segment is seeked).
AUDIOSET_CLASSES = [("/m/09x0r", "Speech"), ("/m/04rlf", "Music"), ("/m/0jbk", "Animal")]
AUDIOSET_ROWS = {  # list -> (YTID, start, labels); YouTube ids may start with '-' and contain '_'
    "balanced_train_segments": [("--PJHxphWEs", 30, "/m/09x0r"), ("-0RWZT-miFs", 0, "/m/04rlf"),
                                ("_0hI_dXWuKc", 10, "/m/0jbk"), ("0BwDq_Bh4FM", 60, "/m/09x0r,/m/04rlf"),
                                ("1k3Yx-c3fHo", 20, "/m/04rlf,/m/0jbk"), ("3qaB_pJo0v4", 0, "/m/0jbk"),
                                ("5tRdJbnA_9c", 40, "/m/09x0r")],
    "unbalanced_train_segments": [("7xQ-y0pL_2k", 0, "/m/09x0r"), ("9aV_c1Fz-Wg", 90, "/m/04rlf"),
                                  ("Bq2-Wn0oPxY", 0, "/m/0jbk"), ("dK7_gM3t-aE", 30, "/m/09x0r,/m/0jbk"),
                                  ("gone_from_YT", 30, "/m/04rlf")],  # no file: a 'missing' failure
    "eval_segments": [("Hm3_eRt-5uI", 30, "/m/09x0r"), ("K-8pzQv_1Lo", 0, "/m/04rlf"),
                      ("nW4-tY_u7Jc", 20, "/m/0jbk"), ("Qz_1rX-9bMd", 0, "/m/09x0r,/m/0jbk")],
}


def make_audioset(root: Path) -> Path:
    rows = [row for name in AUDIOSET_ROWS for row in AUDIOSET_ROWS[name] if row[0] != "gone_from_YT"]
    clips = _clips(root / "made", len(rows), seconds=10.0)
    for number, ((ytid, start, _), clip) in enumerate(zip(rows, clips)):
        if start == 0 and number % 2 == 0:
            name = f"{ytid}.mp4"  # the whole video: avmae seeks the row's segment
        elif number % 3 == 1:
            name = f"{ytid}_{start}.000_{start + 10}.000.mkv"
        else:
            name = f"{ytid}_{start * 1000}_{(start + 10) * 1000}.mp4"
        _place(clip, root / "videos" / name)
    for name, entries in AUDIOSET_ROWS.items():
        lines = ["# Segments csv created Sun Mar  5 10:54:25 2017",
                 f"# num_ytids={len(entries)}, num_segs={len(entries)}, num_unique_labels={len(AUDIOSET_CLASSES)}, "
                 "num_positive_labels=0",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        lines += [f'{ytid}, {start:.3f}, {start + 10:.3f}, "{labels}"' for ytid, start, labels in entries]
        (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    classes = ["index,mid,display_name"] + [f'{i},{mid},"{name}"' for i, (mid, name) in enumerate(AUDIOSET_CLASSES)]
    (root / "class_labels_indices.csv").write_text("\n".join(classes) + "\n")
    return root


# VGGSound: vggsound.csv without a header (YTID,start,label,split), videos cut to 10 s and named YTID_START with the
# start zero-padded to six digits (the common VGGSound downloaders), or the whole video as YTID.mp4.
VGGSOUND_ROWS = [("---g-f_I2yQ", 1, "people marching", "train"), ("--0PQM4-hqg", 30, "waterfall burbling", "train"),
                 ("-1pRmoJIGQc", 0, "dog barking", "train"), ("0a_9sE-Tq2M", 12, "people marching", "train"),
                 ("1Fz-Ry_w8Lk", 150, "waterfall burbling", "train"), ("2cP_Vh-3xNs", 0, "dog barking", "train"),
                 ("3mW-Qe_7uTd", 40, "people marching", "train"), ("4Rk_Ls-2gYb", 5, "dog barking", "train"),
                 ("5Tn-Hx_4cJe", 20, "waterfall burbling", "test"), ("6Yb_Mf-8pQw", 0, "dog barking", "test"),
                 ("7Ud-Kz_1rAs", 70, "people marching", "test")]


def make_vggsound(root: Path) -> Path:
    clips = _clips(root / "made", len(VGGSOUND_ROWS), seconds=10.0)
    for (ytid, start, _, _), clip in zip(VGGSOUND_ROWS, clips):
        _place(clip, root / "videos" / (f"{ytid}.mp4" if start == 0 else f"{ytid}_{start:06d}.mp4"))
    (root / "vggsound.csv").write_text("".join(f"{ytid},{start},{label},{split}\n"
                                               for ytid, start, label, split in VGGSOUND_ROWS))
    return root


# Epic-Kitchens-100: the annotation CSVs with all their columns, and the released tree PXX/videos/PXX_YY.MP4.
EPIC_HEADER = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
               "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes")
EPIC_VIDEOS = {"EPIC_100_train": ["P01_01", "P01_02", "P02_01", "P03_04"], "EPIC_100_validation": ["P04_02"]}
EPIC_ACTIONS = [("open door", "open", 3, "door", 8), ("take plate", "take", 0, "plate", 2),
                ("wash pan", "wash", 2, "pan", 5), ("put knife", "put", 1, "knife", 7)]


def make_epic(root: Path) -> Path:
    videos = [video for name in EPIC_VIDEOS for video in EPIC_VIDEOS[name]]
    for video, clip in zip(videos, _clips(root / "made", len(videos), seconds=9.0)):
        _place(clip, root / "videos" / video.split("_")[0] / "videos" / f"{video}.MP4")
    for name, names in EPIC_VIDEOS.items():
        lines = [EPIC_HEADER]
        for video in names:
            for number, (narration, verb, verb_class, noun, noun_class) in enumerate(EPIC_ACTIONS):
                start = 2 * number
                stamp = lambda seconds: f"00:00:{seconds:02d}.{(37 * number) % 100:02d}"  # HH:MM:SS.ff
                lines.append(f'{video}_{number},{video.split("_")[0]},{video},{stamp(start)},{stamp(start)},'
                             f'{stamp(start + 2)},{start * 50},{(start + 2) * 50},{narration},{verb},{verb_class},'
                             f'{noun},{noun_class},"[\'{noun}\']",[{noun_class}]')
        (root / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return root
