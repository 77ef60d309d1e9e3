"""Compare the ooc solver with in-core LAPACK and detkit's memdet on one matrix.

Run from the repository root::

    python benchmarks/ooc_engine.py --order 15000 --num-blocks 8 --repeat 2

The script builds one symmetric positive-definite float64 matrix into an HDF5
file (dataset ``"matrix"``, 512 x 512 chunks, as the ldbench store writes it),
then times, for each method (Cholesky, LDL, LU):

- in-core LAPACK through scipy (``cho_factor``, ``dsytrf``, ``lu_factor``) on
  the matrix already in memory; the time to read it is printed apart. It is
  skipped at orders of ``--incore-max-order`` and above, because OpenBLAS
  0.3.30 with 2 threads crashed in ``cho_factor`` at order 16,000 on the
  2-core Xeon this script was written on;
- detkit's memdet through ldbench's ``memdet`` solver;
- this project's ``ooc`` solver, with its panel cache (``ooc``) and, with
  ``--cache-panels both`` or ``off``, without it (``ooc-nc``, at most six
  blocks in memory, as memdet keeps a few),

with the same block count and scratch folder, and prints the best wall time,
the spread over repetitions, ratios and log-determinants. ``--kms`` writes the
Kac-Murdock-Szego matrix rho^|i-j| instead, whose log-determinant is
``(m - 1) log(1 - rho^2)``; it is cheap to write at any order, so it serves
the runs larger than memory (``--only ooc``).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

CHUNK = 512
KMS_RHO = 0.5


def write_spd(path: Path, order: int, block: int, seed: int) -> None:
    """Write a random symmetric matrix with a diagonal shift that makes it SPD.

    Off-diagonal entries are uniform in [-1, 1]; the eigenvalues of that part
    lie within about ``2 sqrt(order / 3)`` of zero, so adding
    ``3 sqrt(order)`` to the diagonal gives an SPD matrix with a condition
    number below 10.
    """
    shift = 3.0 * math.sqrt(order)
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset(
            "matrix", (order, order), dtype="f8", chunks=(CHUNK, CHUNK)
        )
        starts = range(0, order, block)
        for bi, row in enumerate(starts):
            for bj, col in enumerate(starts):
                if bj > bi:
                    continue
                rng = np.random.default_rng([seed, bi, bj])
                rows = min(block, order - row)
                cols = min(block, order - col)
                values = rng.uniform(-1.0, 1.0, size=(rows, cols))
                if bi == bj:
                    values = np.tril(values) + np.tril(values, -1).T
                    values[np.diag_indices(rows)] += shift
                dataset[row : row + rows, col : col + cols] = values
                if bi != bj:
                    dataset[col : col + cols, row : row + rows] = values.T


def write_kms(path: Path, order: int, block: int, rho: float = KMS_RHO) -> None:
    """Write the KMS matrix rho^|i-j| block by block."""
    with h5py.File(path, "w") as file:
        dataset = file.create_dataset(
            "matrix", (order, order), dtype="f8", chunks=(CHUNK, CHUNK)
        )
        # rho^d underflows to exactly 0.0 in float64 beyond this distance.
        zero_beyond = math.ceil(1100 / -math.log2(rho))
        for row in range(0, order, block):
            rows = np.arange(row, min(row + block, order))
            for col in range(0, order, block):
                cols = np.arange(col, min(col + block, order))
                if max(0, col - rows[-1], row - cols[-1]) > zero_beyond:
                    values = np.zeros((rows.size, cols.size))
                else:
                    values = rho ** np.abs(rows[:, None] - cols[None, :])
                dataset[row : rows[-1] + 1, col : cols[-1] + 1] = values


def incore(method: str, array: np.ndarray) -> tuple[float, float]:
    """Factor a Fortran copy of ``array`` in memory; return (seconds, log|det|)."""
    import scipy.linalg
    from ldbench_ooc._pivots import ldl_logdet, two_by_two_starts
    from scipy.linalg import lapack

    work = np.asfortranarray(array)
    started = time.perf_counter()
    if method == "cholesky":
        factor, _ = scipy.linalg.cho_factor(
            work, lower=True, overwrite_a=True, check_finite=False
        )
        seconds = time.perf_counter() - started
        return seconds, 2.0 * float(np.sum(np.log(np.diagonal(factor))))
    if method == "ldl":
        factor, ipiv, _info = lapack.dsytrf(work, lower=1, overwrite_a=1)
        seconds = time.perf_counter() - started
        starts = two_by_two_starts(ipiv < 0)
        off = np.diagonal(factor, -1)[starts]
        part, _ = ldl_logdet(np.diagonal(factor).copy(), starts, off)
        return seconds, part.logabsdet
    factor, _ = scipy.linalg.lu_factor(work, overwrite_a=True, check_finite=False)
    seconds = time.perf_counter() - started
    return seconds, float(np.sum(np.log(np.abs(np.diagonal(factor)))))


def run_solver(solver_class, params, path, order, scratch):
    """Run an ldbench solver on the file; return (seconds, Estimate)."""
    from ldbench import MatrixHandle, MatrixInfo, SolveContext, Structure

    solver = solver_class(**params)
    handle = MatrixHandle(path, MatrixInfo(order=order, structure=Structure.SPD))
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        started = time.perf_counter()
        estimate = solver.solve(handle, SolveContext(scratch_dir=scratch))
        seconds = time.perf_counter() - started
    finally:
        handle.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return seconds, estimate


def describe(times: list[float]) -> str:
    best = min(times)
    spread = max(times) - best
    return f"{best:8.2f} s (spread {spread:5.2f} s, n={len(times)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--order", type=int, default=15000, help="matrix order m")
    parser.add_argument("--num-blocks", type=int, default=8, help="blocks per side n_b")
    parser.add_argument("--methods", default="cholesky,ldl,lu",
                        help="comma-separated methods")
    parser.add_argument("--only", default="incore,memdet,ooc",
                        help="comma-separated solvers to run: incore, memdet, ooc")
    parser.add_argument("--repeat", type=int, default=2,
                        help="repetitions of in-core and ooc runs")
    parser.add_argument("--memdet-repeat", type=int, default=1,
                        help="repetitions of memdet runs (they are the slowest)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/ooc-bench"),
                        help="folder for the matrix file and the scratch folder")
    parser.add_argument("--kms", action="store_true",
                        help="use the KMS matrix 0.5^|i-j| instead of a random SPD one")
    parser.add_argument("--incore-methods", default="cholesky,ldl,lu",
                        help="methods to run in core; the log-det of any in-core "
                        "run serves as the reference of the others")
    parser.add_argument("--incore-max-order", type=int, default=16000,
                        help="skip in-core LAPACK at this order and above")
    parser.add_argument("--memory-mb", type=float, default=0.0,
                        help="ooc memory budget in MiB; with it, --num-blocks is "
                        "only passed to memdet and ooc chooses n_b itself")
    parser.add_argument("--cache-panels", choices=("on", "off", "both"), default="on",
                        help="ooc runs with the panel cache (on, the default), "
                        "without it (off, shown as ooc-nc) or both")
    parser.add_argument("--no-fsync", action="store_true",
                        help="run ooc with fsync=false: checkpoints survive a killed "
                        "process but not a power loss, and two step files "
                        "suffice instead of three")
    parser.add_argument("--io", choices=("auto", "inline", "threads"), default="auto",
                        help="the ooc solver's io parameter")
    parser.add_argument("--direct-io", choices=("on", "off"), default="on",
                        help="the ooc solver's direct_io parameter")
    parser.add_argument("--keep-matrix", action="store_true",
                        help="keep the matrix file for a later run")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
    from ldbench_ooc import OocSolver

    order, blocks = args.order, args.num_blocks

    methods = args.methods.split(",")
    only = set(args.only.split(","))
    caches = {"on": [True], "off": [False], "both": [True, False]}[args.cache_panels]
    if "ooc" not in only:
        caches = []
    args.workdir.mkdir(parents=True, exist_ok=True)
    kind = "kms" if args.kms else "spd"
    path = args.workdir / f"{kind}-m{order}.h5"
    scratch = args.workdir / "scratch"
    print(f"matrix: {kind}, order {order}, {order * order * 8 / 2**30:.2f} GiB, "
          f"n_b={blocks}, file {path}")
    print(f"CPUs: {os.cpu_count()}, OMP/OPENBLAS threads: "
          f"{os.environ.get('OMP_NUM_THREADS', '-')}/"
          f"{os.environ.get('OPENBLAS_NUM_THREADS', '-')}")
    if not path.exists():
        started = time.perf_counter()
        partial = path.with_suffix(".partial")
        if args.kms:
            write_kms(partial, order, 2048)
        else:
            write_spd(partial, order, 2048, seed=0)
        partial.rename(path)
        print(f"wrote the matrix in {time.perf_counter() - started:.1f} s")

    exact = None
    if args.kms:
        exact = (order - 1) * math.log(1.0 - KMS_RHO**2)

    rows = []
    for method in methods:
        result: dict[str, tuple[list[float], float]] = {}
        incore_methods = args.incore_methods.split(",")
        if "incore" in only and order < args.incore_max_order and method in incore_methods:
            started = time.perf_counter()
            with h5py.File(path, "r") as file:
                array = file["matrix"][...]
            read_seconds = time.perf_counter() - started
            times, logdet = [], 0.0
            for _ in range(args.repeat):
                seconds, logdet = incore(method, array)
                times.append(seconds)
            del array
            result["incore"] = (times, logdet)
            print(f"{method:8s} incore  {describe(times)}  logdet {logdet!r}  "
                  f"(+ {read_seconds:.2f} s to read the matrix)", flush=True)
        if "memdet" in only:
            from ldbench_memdet import MemdetSolver

            times, logdet = [], 0.0
            for _ in range(args.memdet_repeat):
                seconds, estimate = run_solver(
                    MemdetSolver, {"method": method, "num_blocks": blocks},
                    path, order, scratch)
                times.append(seconds)
                logdet = estimate.logabsdet
            result["memdet"] = (times, logdet)
            print(f"{method:8s} memdet  {describe(times)}  logdet {logdet!r}",
                  flush=True)
        for cache in caches:
            name = "ooc" if cache else "ooc-nc"
            params = {"method": method, "num_blocks": blocks, "cache_panels": cache,
                      "fsync": not args.no_fsync, "io": args.io,
                      "direct_io": args.direct_io == "on"}
            if args.memory_mb:
                del params["num_blocks"]
                params["memory_mb"] = args.memory_mb
            times, logdet, details = [], 0.0, {}
            for _ in range(args.repeat):
                seconds, estimate = run_solver(OocSolver, params, path, order, scratch)
                times.append(seconds)
                logdet, details = estimate.logabsdet, estimate.details
            result[name] = (times, logdet)
            print(f"{method:8s} {name:7s} {describe(times)}  logdet {logdet!r}",
                  flush=True)
            print(f"         {name} details: n_b={details['num_blocks']}, block "
                  f"{details['block_size']}, block memory "
                  f"{details['block_memory_bytes'] / 2**20:.0f} MiB, read "
                  f"{details['bytes_read'] / 2**30:.2f} GiB, written "
                  f"{details['bytes_written'] / 2**30:.2f} GiB, I/O wait "
                  f"{details['io_wait_seconds']:.2f} s, compute "
                  f"{details['compute_seconds']:.2f} s, "
                  f"{details['gflops_effective']:.1f} GFLOP/s", flush=True)
        rows.append((method, result))

    incore_logdets = [r["incore"][1] for _, r in rows if "incore" in r]
    print()
    print("method    solver   best wall (s)  ooc/solver   rel. diff of log-det to reference")
    for method, result in rows:
        reference = exact
        if reference is None and "incore" in result:
            reference = result["incore"][1]
        elif reference is None and incore_logdets:
            reference = incore_logdets[0]
        ooc_runs = result.get("ooc", result.get("ooc-nc"))
        ooc_best = min(ooc_runs[0]) if ooc_runs else None
        for name, (times, logdet) in result.items():
            ratio = f"{ooc_best / min(times):10.3f}" if ooc_best else f"{'-':>10s}"
            diff = "-" if reference is None else f"{abs(logdet - reference) / abs(reference):.2e}"
            print(f"{method:9s} {name:8s} {min(times):13.2f}  {ratio}   {diff}")
    if exact is not None:
        print(f"reference: closed-form KMS log-det {exact!r}")
    else:
        print("reference: in-core LAPACK of the same method, else the first "
              "in-core log-det (the matrix is SPD, so all methods share it)")
    if not args.keep_matrix:
        path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
