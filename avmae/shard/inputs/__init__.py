"""Reading a build's inputs: a folder of clips, a dataset list, video2dataset's tars or CAV-MAE's prepared data,
each turned into ``ClipItem``s (items.py); ffmpeg's probe and decode (media.py); the synthetic corpus (synth.py)."""
