"""Run one job in a worker process with a hard timeout and a memory cap."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.1
LOG_TAIL_BYTES = 4000


@dataclass
class JobOutcome:
    """Result of a worker job, classified by the host from its exit and output."""

    status: str
    result: dict[str, Any]
    wall_seconds: float
    returncode: int | None


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _kill_group(pgid: int) -> None:
    # SIGKILL, because a process that imported detkit ignores SIGTERM.
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_in_worker(
    job: dict[str, Any],
    timeout: float,
    memory_limit: int | None = None,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> JobOutcome:
    """Run ``job`` in ``python -m ldbench._worker`` and classify its end.

    Parameters
    ----------
    job
        JSON-serialisable job for :func:`ldbench._worker.run_job`.
    timeout
        Wall-clock limit in seconds; the whole process group is killed with
        SIGKILL when it passes.
    memory_limit
        Cap on the resident memory of the worker and its children, in bytes;
        the group is killed when it is exceeded. ``None`` for no cap.
    log_path
        File for the worker's standard output and error; inherited when None.
    env
        Extra environment variables for the worker.
    """
    # Job files live beside the log, in the run folder, so a host killed with
    # SIGKILL leaves them where the next run of that folder removes them.
    folder = log_path.parent if log_path is not None else None
    with tempfile.TemporaryDirectory(prefix="ldbench-job-", dir=folder) as tmp:
        job_path = Path(tmp) / "job.json"
        result_path = Path(tmp) / "result.json"
        job = {**job, "host_pid": os.getpid()}
        job_path.write_text(json.dumps(job, default=str))
        log = open(log_path, "ab") if log_path is not None else None
        start = time.perf_counter()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ldbench._worker", str(job_path), str(result_path)],
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, **(env or {})},
            )
            status = _watch(proc, timeout, memory_limit)
            # Children the job left behind in its group die with it.
            _kill_group(proc.pid)
        finally:
            if log is not None:
                log.close()
        wall = time.perf_counter() - start
        result: dict[str, Any] = {}
        if result_path.exists():
            result = json.loads(result_path.read_text())
        if status == "exited":
            if proc.returncode < 0:
                sig = signal.Signals(-proc.returncode).name
                status = "crashed"
                hint = ""
                if sig == "SIGKILL":
                    hint = (" (the kernel's out-of-memory killer sends SIGKILL; lower "
                            "the memory use or set a memory_limit)")
                result = {"error": f"worker killed by signal {sig}{hint}",
                          "signal": sig, "traceback": _log_tail(log_path)}
            elif not result:
                status = "crashed"
                result = {"error": f"worker exited with code {proc.returncode} "
                          "and wrote no result"}
            else:
                status = result.get("status", "error")
        elif status == "timeout":
            result = {"error": f"timed out after {timeout:g} s; the process group was "
                      "killed. Raise the suite's 'timeout' or pass --timeout"}
        elif status == "out-of-memory":
            result = {"error": f"resident memory exceeded the cap of "
                      f"{memory_limit / 2**20:.0f} MiB; the process group was killed. "
                      "Raise 'memory_limit' or give the solver a smaller block size"}
        return JobOutcome(status, result, wall, proc.returncode)


def _log_tail(log_path: Path | None) -> str:
    """Return the end of the worker's log, where faulthandler wrote the stack."""
    if log_path is None or not Path(log_path).exists():
        return ""
    with open(log_path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
        return f.read().decode("utf-8", "replace")


def _watch(proc: subprocess.Popen, timeout: float, memory_limit: int | None) -> str:
    deadline = time.monotonic() + timeout
    ps = psutil.Process(proc.pid)
    try:
        while True:
            try:
                proc.wait(POLL_SECONDS)
                return "exited"
            except subprocess.TimeoutExpired:
                pass
            if time.monotonic() > deadline:
                _kill_group(proc.pid)
                proc.wait()
                return "timeout"
            if memory_limit is not None and _tree_rss(ps) > memory_limit:
                _kill_group(proc.pid)
                proc.wait()
                return "out-of-memory"
    except BaseException:
        _kill_group(proc.pid)
        proc.wait()
        raise
