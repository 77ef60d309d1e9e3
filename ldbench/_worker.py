"""Code that runs inside a case's worker process.

The host starts ``python -m ldbench._worker JOB.json RESULT.json`` in a new
process group. The worker imports only the plugins the job names, forms or
reads the matrix from the store, runs the solver, and writes the result file
atomically. Anything it does not write is reported by the host from the exit
status (crash, timeout, out of memory).
"""

from __future__ import annotations

import errno
import faulthandler
import json
import logging
import os
import resource
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Cap in bytes on the size of any file the worker writes (RLIMIT_FSIZE). Tests
# set it to emulate a scratch disk that fills up; unset means no cap.
FILE_SIZE_LIMIT_ENV = "LDBENCH_FILE_SIZE_LIMIT"
PARENT_POLL_SECONDS = 0.2
_DISK_FULL = (errno.EFBIG, errno.ENOSPC, errno.EDQUOT)


def _watch_parent(parent: int) -> None:
    """Kill the worker's process group once the host process is gone.

    The worker runs in its own session, so a host killed with SIGKILL would
    leave it running: it could then finish a case that no record stores, or rename a
    matrix into the store while a resumed run forms the same one.
    """
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            os.killpg(os.getpgrp(), signal.SIGKILL)


def _limit_file_size() -> None:
    # With SIGXFSZ ignored, a write past the cap fails with OSError EFBIG
    # ("File too large") instead of killing the worker.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    value = os.environ.get(FILE_SIZE_LIMIT_ENV)
    if value:
        limit = int(value)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, path)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one job and return its result dictionary, turning every
    Exception into an error result instead of raising it."""
    from ._api import MatrixHandle, ParameterError, SolveContext, SolverError
    from ._plugins import Registry, format_traceback
    from ._store import MatrixStore

    started = time.time()
    result: dict[str, Any] = {"status": "error", "started_at": started}
    try:
        registry = Registry(**job.get("registry", {}))
        source = registry.source_class(job["source"]["name"])(**job["source"]["params"])
        store = MatrixStore(job["store"])
        if job["kind"] == "form":
            stored = store.ensure(source, job["order"])
            result.update(status="ok", path=str(stored.path))
        else:
            result.update(_solve(job, registry, source, store))
    except MemoryError as exc:
        result.update(status="out-of-memory", error=f"MemoryError: {exc}",
                      traceback=format_traceback(exc))
    except OSError as exc:
        result.update(status="error", error=_os_error_message(exc, job),
                      traceback=format_traceback(exc))
    except (SolverError, ParameterError) as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=format_traceback(exc))
    except Exception as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=format_traceback(exc))
    result["peak_rss_mb"] = _peak_rss_mb()
    result["finished_at"] = time.time()
    return result


def _os_error_message(exc: OSError, job: dict[str, Any]) -> str:
    message = f"{type(exc).__name__}: {exc}"
    if exc.errno not in _DISK_FULL:
        return message
    removed, size = _clear_scratch(job)
    where = job.get("scratch_dir") or job.get("store")
    fix = "Free space or point the scratch folder to a larger disk"
    if exc.filename:
        # The failed file may live elsewhere, such as a solver's checkpoint folder.
        where = str(Path(exc.filename).parent)
        fix = "Free space there or give that file's folder another disk"
    return (f"{message}. The disk behind {where} is full or a file exceeded the "
            f"file-size limit; removed {removed} partial scratch files "
            f"({size / 2**20:.1f} MiB). {fix}")


def _clear_scratch(job: dict[str, Any]) -> tuple[int, int]:
    """Delete the case's scratch files and return their count and total bytes."""
    scratch = job.get("scratch_dir")
    if not scratch or not Path(scratch).is_dir():
        return 0, 0
    files = [p for p in Path(scratch).rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    shutil.rmtree(scratch, ignore_errors=True)
    return len(files), size


def _solve(job: dict[str, Any], registry: Any, source: Any, store: Any) -> dict[str, Any]:
    from ._api import MatrixHandle, SolveContext
    from ._checks import check_matrix

    solver = registry.solver_class(job["solver"]["name"])(**job["solver"]["params"])
    info = source.describe()
    order = solver.leading_order(info)
    stored = store.ensure(source, order)
    handle = MatrixHandle(stored.path, info, order)
    check_matrix(handle, info.structure, job.get("check", True))
    scratch = Path(job["scratch_dir"])
    scratch.mkdir(parents=True, exist_ok=True)
    context = SolveContext(scratch_dir=scratch, seed=int(job.get("seed", 0)),
                           device=solver.device)
    try:
        solver.prepare()
        for _ in range(int(job.get("warmup", 0))):
            solver.solve(handle, context)
        io0 = _io_counters()
        _synchronize_devices()
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        estimate = solver.solve(handle, context)
        _synchronize_devices()
        solve_seconds = time.perf_counter() - wall0
        cpu_seconds = time.process_time() - cpu0
        io1 = _io_counters()
    finally:
        handle.close()
    return {
        "status": "ok",
        "estimate": estimate.to_dict(),
        "solve_seconds": solve_seconds,
        "cpu_seconds": cpu_seconds,
        "order": info.order,
        "read_order": order,
        "structure": info.structure.value,
        "block_size": info.block_size,
        "description": info.description,
        "formation": {
            "seconds": stored.formation.seconds,
            "flops": stored.formation.flops,
            "device": stored.formation.device,
            "phases": stored.formation.phases,
            "basis": stored.formation_basis,
            "stored_order": stored.stored_order,
        },
        "solver_label": solver.label(),
        "solver_device": solver.device,
        "stochastic": solver.stochastic,
        "bytes_read": io1[0] - io0[0],
        "bytes_written": io1[1] - io0[1],
        "peak_gpu_memory_mb": _peak_gpu_memory_mb(),
    }


def _io_counters() -> tuple[int, int]:
    """Bytes this process read from and wrote to storage so far (Linux
    /proc/self/io through psutil); zeros where the platform has no counters."""
    import psutil

    try:
        counters = psutil.Process().io_counters()
    except (AttributeError, psutil.Error):
        return 0, 0
    return int(counters.read_bytes), int(counters.write_bytes)


def _synchronize_devices() -> None:
    """Wait for queued GPU work, so a clock read after it includes that work.

    Only libraries the solver already imported are synchronised, which keeps
    a CPU case free of GPU imports.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        try:
            cupy.cuda.runtime.deviceSynchronize()
        except Exception as exc:  # a cupy without a usable device
            logger.debug("cupy synchronisation skipped: %s", exc)


def _peak_gpu_memory_mb() -> float | None:
    """Peak GPU memory torch allocated in this process, in MiB, or None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process."""
    argv = sys.argv[1:] if argv is None else argv
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    host = int(job.get("host_pid", os.getppid()))
    threading.Thread(target=_watch_parent, args=(host,), daemon=True).start()
    # A segfault in native code dumps the Python stack into the case's log.
    faulthandler.enable()
    _limit_file_size()
    logging.basicConfig(level=job.get("log_level", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    result = run_job(job)
    _write_result(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
