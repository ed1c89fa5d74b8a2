"""The rank's device, the refusal of a GPU machine that torch cannot use, the NCCL variables, and how a failed
collective is recognised: all from facts handed in (a fake /proc/driver/nvidia tree, device counts as a per-task
CUDA_VISIBLE_DEVICES leaves them), so they run on a machine without a GPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from avmae.distributed import (NCCL_DEFAULTS, MachineGPUs, NoUsableGPU, backend_for, choose_device, device_index,
                               gpus_of_machine, nccl_environment)
from avmae.train.stops import JobStopped, Stop, is_collective_failure
from tests.helpers import REPO

NO_GPU = MachineGPUs(0, None)


def fake_driver(root: Path, gpus: int, version: str | None = "535.104.05") -> Path:
    """A /proc/driver/nvidia as the driver lays it out: gpus/<PCI address>/information, and the version file."""
    for number in range(gpus):
        folder = root / "gpus" / f"0000:{number + 1:02x}:00.0"
        folder.mkdir(parents=True)
        (folder / "information").write_text("Model: \t\t NVIDIA H100 80GB HBM3\n")
    root.mkdir(parents=True, exist_ok=True)
    if version:
        (root / "version").write_text(
            f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Sat Aug 19 01:13:19 UTC 2023\n"
            "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
    return root


def test_every_gpu_visible_the_local_rank_picks_one():
    assert [device_index(local, 8) for local in range(8)] == list(range(8))
    assert device_index(9, 8) == 1  # more tasks than GPUs share them round the node


def test_one_gpu_per_task_is_cuda_0_whatever_the_local_rank():
    # srun --gpus-per-task=1 narrows CUDA_VISIBLE_DEVICES per task: each sees one device, index 0
    for local in range(4):
        assert choose_device(None, True, 1, local, NO_GPU, "12.8") == torch.device("cuda", 0)


def test_cuda_device_from_local_rank_and_count():
    assert choose_device(None, True, 4, 6, NO_GPU, "12.8") == torch.device("cuda", 2)
    assert choose_device("cuda", True, 2, 1, NO_GPU, "12.8") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="no CUDA device to place local rank 3"):
        device_index(3, 0)


def test_cpu_on_purpose_even_with_gpus():
    machine = MachineGPUs(8, "535.104.05")
    assert choose_device("cpu", True, 8, 3, machine, "12.8") == torch.device("cpu")
    assert choose_device("cpu", False, 0, 3, machine, "12.8") == torch.device("cpu")


def test_a_machine_without_gpus_runs_on_the_cpu():
    assert choose_device(None, False, 0, 0, NO_GPU, None) == torch.device("cpu")


def test_gpus_torch_cannot_use_stop_the_run_with_the_driver_and_torchs_cuda(tmp_path):
    machine = gpus_of_machine(fake_driver(tmp_path / "nvidia", gpus=2), smi=None)
    assert machine == MachineGPUs(2, "535.104.05")
    with pytest.raises(NoUsableGPU) as raised:
        choose_device(None, False, 0, 0, machine, "12.8")
    line = str(raised.value)
    assert "\n" not in line
    assert "shows 2 NVIDIA GPU(s)" in line and "driver 535.104.05" in line and "CUDA 12.8" in line
    assert "AVMAE_DEVICE=cpu" in line
    with pytest.raises(NoUsableGPU, match="CUDA none: a CPU-only build"):
        choose_device(None, False, 0, 0, machine, None)


def test_asking_for_cuda_where_there_is_none_is_an_error_and_unknown_devices_are_refused():
    with pytest.raises(NoUsableGPU, match="a GPU was asked for .*driver unknown"):
        choose_device("cuda", False, 0, 0, NO_GPU, None)
    with pytest.raises(ValueError, match="AVMAE_DEVICE / device_name: 'tpu'"):
        choose_device("tpu", False, 0, 0, NO_GPU, None)


def test_driver_facts_from_proc(tmp_path):
    assert gpus_of_machine(tmp_path / "absent", smi=None) == NO_GPU
    assert gpus_of_machine(fake_driver(tmp_path / "one", gpus=1, version=None), smi=None) == MachineGPUs(1, None)
    assert gpus_of_machine(fake_driver(tmp_path / "none", gpus=0), smi=None) == MachineGPUs(0, "535.104.05")


def test_backend_follows_the_device_and_the_checking_backend_is_for_the_cpu():
    assert backend_for(torch.device("cuda", 0), {}) == "nccl"
    assert backend_for(torch.device("cpu"), {}) == "gloo"
    assert backend_for(torch.device("cpu"), {"AVMAE_DIST_BACKEND": "avmae_checked"}) == "avmae_checked"
    assert "avmae_checked" in dist.Backend.backend_list
    with pytest.raises(ValueError, match="AVMAE_DIST_BACKEND=avmae_checked: a CUDA device runs NCCL only"):
        backend_for(torch.device("cuda", 0), {"AVMAE_DIST_BACKEND": "avmae_checked"})
    with pytest.raises(ValueError, match="AVMAE_DIST_BACKEND=mpi: not one of gloo, avmae_checked"):
        backend_for(torch.device("cpu"), {"AVMAE_DIST_BACKEND": "mpi"})


def test_nccl_variables_are_added_only_where_the_user_set_none():
    assert nccl_environment({}) == NCCL_DEFAULTS
    assert NCCL_DEFAULTS["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
    assert "TORCH_NCCL_BLOCKING_WAIT" not in NCCL_DEFAULTS
    chosen = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_NCCL_DUMP_ON_TIMEOUT": "0"}
    assert nccl_environment(chosen) == {"TORCH_NCCL_TRACE_BUFFER_SIZE": "2000"}
    assert nccl_environment({**chosen, "TORCH_NCCL_TRACE_BUFFER_SIZE": "0"}) == {}


def test_nccl_variable_names_are_ones_torch_reads():
    header = Path(torch.__file__).parent / "include/torch/csrc/distributed/c10d"
    if not header.is_dir():
        pytest.skip("this torch install has no C++ headers")
    text = "".join(path.read_text(errors="replace") for path in header.glob("*.hpp"))
    for name in NCCL_DEFAULTS:
        assert f'"{name}"' in text, name


@pytest.mark.parametrize("error", [
    dist.DistError("x"), dist.DistBackendError("Watchdog caught collective operation timeout"),
    dist.DistNetworkError("Connection reset"), dist.DistStoreError("Socket Timeout")])
def test_torchs_distributed_errors_are_collective_failures_whatever_their_words(error):
    assert is_collective_failure(error)


def test_gloos_wording_is_the_fallback_and_the_chain_is_followed():
    gloo = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [::1]")
    assert is_collective_failure(gloo)
    assert is_collective_failure(RuntimeError("Timed out waiting 3000ms for recv operation to complete"))
    assert not is_collective_failure(RuntimeError("CUDA out of memory"))
    assert not is_collective_failure(ValueError("Connection closed by peer"))  # not a RuntimeError: a message
    try:
        try:
            raise dist.DistBackendError("NCCL communicator was aborted on rank 1")
        except dist.DistBackendError as inner:
            raise RuntimeError("DeepSpeed: step failed") from inner
    except RuntimeError as outer:
        assert is_collective_failure(outer)
    stopped = JobStopped(Stop("loader", 1, "loader stopped"))
    stopped.__context__ = stopped  # a cycle ends the walk
    assert not is_collective_failure(stopped)


def test_a_process_that_asks_for_cuda_on_this_machine_stops_with_one_line():
    if torch.cuda.is_available():
        pytest.skip("torch can use a GPU here")
    code = ("from avmae.distributed import setup_distributed\n"
            "try:\n    setup_distributed('cuda')\n"
            "except Exception as err:\n    print(type(err).__name__, err)\n")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert shown.stdout.startswith("NoUsableGPU avmae: a GPU was asked for (driver unknown) but torch sees no usable CUDA device"), shown.stdout + shown.stderr[-2000:]
    assert shown.stdout.count("\n") == 1 and "AVMAE_DEVICE=cpu" in shown.stdout


def test_deepspeed_is_told_the_chosen_gpu_not_the_local_rank():
    """Under srun --gpus-per-task=1 rank 3's only GPU is cuda:0; DeepSpeed would otherwise pick cuda:3."""
    from avmae.train.engine import deepspeed_args

    assert deepspeed_args(torch.device("cuda", 0)).device_rank == 0
    assert deepspeed_args(torch.device("cuda", 5)).device_rank == 5
    assert deepspeed_args(torch.device("cpu")) is None
