"""Writing shards: the plan of which input goes into which shard, each shard's tar, index and part record, the
output folder or URL, and the manifest that finalize writes last (build.py runs them)."""
