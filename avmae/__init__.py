"""avmae: audio-visual masked autoencoders from raw clips to trusted AudioSet / VGGSound / Epic-Kitchens numbers."""

__version__ = "0.1.0"
