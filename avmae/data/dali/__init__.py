"""The DALI backend: the Python external source that reads and checks samples (source.py), the dense arrays a batch
crosses into the graph as (batch.py), the feed in worker processes (feed.py) and the graph that decodes on the GPU or
the CPU (loader.py)."""
