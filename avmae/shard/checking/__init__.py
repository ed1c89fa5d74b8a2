"""Checking shards: what a usable sample is (sample_rules.py, shared with the loaders), ``avmae-shard verify``,
``inspect`` and ``ids``."""
