"""Making samples: one input item -> the members of its samples (frames, log-mel, metadata), from a video through
ffmpeg (from_item.py) or from CAV-MAE's prepared frames and wavs (from_prepared.py)."""
