"""Which config keys a resume may change: settings of how the run reads and reports, not of what it computes."""

from __future__ import annotations

import dataclasses

from avmae.recipe.config import RunConfig
from avmae.train.resume_config import changed_keys


def test_storage_limits_may_change_on_resume_but_the_batch_may_not():
    saved = RunConfig()
    patient = dataclasses.replace(saved, data=dataclasses.replace(saved.data, storage_timeout_s=600.0,
                                                                 storage_retries=10))
    assert changed_keys(saved, patient) == []
    bigger = dataclasses.replace(saved, data=dataclasses.replace(saved.data, batch_size=saved.data.batch_size + 1))
    assert changed_keys(saved, bigger) == ["data.batch_size"]


def test_a_run_begun_with_deepspeeds_buckets_resumes_with_todays_smaller_default():
    saved = RunConfig(zero_bucket_elements=500_000_000)
    assert changed_keys(saved, RunConfig()) == []
