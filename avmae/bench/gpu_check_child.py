"""One child process of the GPU check (avmae-shard build, avmae-train, avmae-eval, torchrun): run by ``subprocess``
with a deadline, its stdout and stderr in files beside each other, and its peak resident memory measured.

The peak is the largest resident set of the command and of the processes it waited for (a trainer and its loader
workers). ``subprocess`` does not hand out a child's resource usage, and ``getrusage(RUSAGE_CHILDREN)`` in the check's
own process is a high-water mark over every child the check has run, so one child's figure cannot be told from an
earlier, larger one's. Nor is a child started straight from the check measured alone: Linux keeps the high-water mark of
the memory a process had before exec, and a child forked from the check starts with the check's resident set (torch and
DALI imported: on the CPU test machine, a child that used 33 MiB reported 626 when started straight from it). Each
command therefore runs under a small Python parent of its own (``PEAK_RSS``): its RUSAGE_CHILDREN is that one command's,
and it writes the figure to a file. The parent and the command share a process group of their own, so that a deadline,
or an interrupt of the check, ends both and whatever the command started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# argv: the file for the peak (KiB, Linux's ru_maxrss unit), then the command. The command's exit status is passed on
# (a code as it is, a signal by dying of the same signal), so that the check reads what the command itself gave.
PEAK_RSS = """
import os, resource, signal, subprocess, sys
code = subprocess.call(sys.argv[2:])
with open(sys.argv[1], "w") as peak:
    peak.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
if code < 0:
    if -code not in (signal.SIGKILL, signal.SIGSTOP):
        signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
sys.exit(code)
"""


class StepFailed(RuntimeError):
    pass


@dataclass
class Child:  # of a command that exited 0 (run_child raises StepFailed for any other)
    seconds: float
    max_rss_gib: float  # of the command and the processes it waited for
    stdout: str


def _end_group(process: subprocess.Popen) -> None:
    """SIGKILL the child's process group (the measuring parent, the command and what it started) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already ended
        pass
    process.wait()


def run_child(command: list[str], log: Path, env: dict[str, str], timeout_s: float) -> Child:
    """Run ``command`` in the folder of ``log`` (the check's work folder), with stdout and stderr in ``log``.out /
    .err; StepFailed naming the command and its log when it exits non-zero or runs past ``timeout_s``."""
    what = " ".join(command[1:4]) if command[1] != "-c" else f"{Path(log).name} (python -c)"
    peak_file = Path(f"{log}.peak_rss_kib")
    peak_file.unlink(missing_ok=True)
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", PEAK_RSS, str(peak_file), *command], stdout=out,
                                   stderr=err, cwd=Path(log).parent, env=env, process_group=0)
        try:
            returncode = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _end_group(process)
            raise StepFailed(f"{what} ran past {timeout_s:g} s and was killed (log: {log}.err)") from None
        except BaseException:  # an interrupted check: in a group of its own, the child would not see the signal
            _end_group(process)
            raise
    seconds = time.perf_counter() - started
    if returncode != 0:
        tail = Path(f"{log}.err").read_text().strip().splitlines()[-1:] or ["(no output)"]
        raise StepFailed(f"{what} exited {returncode}: {tail[0]} (log: {log}.err)")
    return Child(seconds, int(peak_file.read_text()) / 2**20, Path(f"{log}.out").read_text())
