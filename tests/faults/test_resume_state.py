"""A rank's own resume files, wrong behind a matching checksum (written wrong, or edited and the marker remade): a
non-JSON random-generator file and an impossible reader position each stop the resume at once with one line naming
the file, rather than a JSON traceback naming nothing, or a loader skipping that many draws unread, silently, for
hours. (A file changed after its checkpoint's marker is caught by the marker's CRC and the checkpoint passed over.)"""

from __future__ import annotations

import json

import pytest

from avmae.train.checkpoint import COMPLETE, file_crc32
from tests.faults.test_training_faults import result_of, stop_line, train
from tests.helpers import run_config


def rewrite(path, text: str) -> None:
    """``path`` with new contents, and its checkpoint's marker updated to match them."""
    path.write_text(text)
    marker_path = path.parent / COMPLETE
    marker = json.loads(marker_path.read_text())
    marker["files"][path.name] = {"bytes": path.stat().st_size, "crc32": file_crc32(path)}
    marker_path.write_text(json.dumps(marker))


@pytest.mark.slow
def test_damaged_resume_files_are_refused_in_one_line_naming_the_file(shards, tmp_path):
    config = run_config(tmp_path, shards, checkpoint={"every": 2, "keep": 2})
    assert result_of(train(config, "stop_after=2"))["step"] == 2
    folder = tmp_path / "run" / "checkpoints" / "step00000002"
    rng, positions = folder / "rng_rank0.json", folder / "data_rank0.json"
    good_rng, good_positions = rng.read_text(), json.loads(positions.read_text())

    rewrite(rng, '{"python": [3, [1, 2')  # cut short
    refused = train(config, timeout=120)
    assert refused.returncode == 2
    line = stop_line(refused)
    assert str(rng) in line and "random generator state" in line, line
    assert "Traceback" not in refused.stderr

    rewrite(rng, good_rng)
    rewrite(positions, json.dumps({**good_positions, "reader_draws": {"0": 10**15}}))
    refused = train(config, timeout=120)
    assert refused.returncode == 2
    line = stop_line(refused)
    assert str(positions) in line and "1,000,000,000,000,000 draws" in line and "samples_drawn" in line, line

    rewrite(positions, json.dumps(good_positions))
    assert result_of(train(config, "optim.steps=4"))["step"] == 4  # the same files, whole again: it resumes
