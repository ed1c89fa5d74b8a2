"""A real `sbatch` of slurm/shard_build.sbatch as a 2-task array on the localhost cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from avmae.shard.writing.manifest import read_manifest
from tests.helpers import build_arguments
from tests.slurm_jobs import needs_slurm, submit_and_wait

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slurm
@needs_slurm
def test_shard_build_array_job_builds_and_finalizes(synth_corpus, tmp_path):
    out = tmp_path / "shards"
    job_id, states = submit_and_wait(
        ["--array=0-1", "--cpus-per-task=1", f"--output={tmp_path}/job-%A_%a.out",
         "slurm/shard_build.sbatch", *build_arguments(synth_corpus, out, as_json=False, num_frames=4, short_side=64,
                                                      target_frames=256, shard_size=3, val_fraction=0)[1:]],
        cwd=REPO)  # [1:]: the script itself is `avmae-shard build`
    logs = "\n".join(p.read_text() for p in sorted(tmp_path.glob("job-*.out")))
    assert states == ["COMPLETED", "COMPLETED"], logs
    assert "task 0/2" in logs and "task 1/2" in logs
    manifest = read_manifest(out)
    assert manifest["totals"]["samples"] == 12 and manifest["totals"]["failures"] == 0
    assert len(manifest["splits"]["train"]["shards"]) == 4
