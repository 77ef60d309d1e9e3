"""Code that runs inside a case's worker process.

The host starts ``python -m ldbench._worker JOB.json RESULT.json`` in a new
process group. The worker imports only the plugins the job names, forms or
reads the matrix from the store, runs the solver, and writes the result file
atomically. Anything it does not write is reported by the host from the exit
status (crash, timeout, out of memory).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _write_result(path: Path, result: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(result, default=str))
    os.replace(tmp, path)


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute one job and return its result dictionary (never raises)."""
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
    except (SolverError, ParameterError, FileNotFoundError, OSError) as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=format_traceback(exc))
    except Exception as exc:
        result.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=format_traceback(exc))
    result["peak_rss_mb"] = _peak_rss_mb()
    result["finished_at"] = time.time()
    return result


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
        for _ in range(int(job.get("warmup", 0))):
            solver.solve(handle, context)
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        estimate = solver.solve(handle, context)
        solve_seconds = time.perf_counter() - wall0
        cpu_seconds = time.process_time() - cpu0
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
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point of the worker process."""
    argv = sys.argv[1:] if argv is None else argv
    job_path, result_path = Path(argv[0]), Path(argv[1])
    job = json.loads(job_path.read_text())
    logging.basicConfig(level=job.get("log_level", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    result = run_job(job)
    _write_result(result_path, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
