"""Speed-up of the distributed NTK formation with one and two Dask workers.

Run it as a script (asv finds no benchmark here)::

    python benchmarks/dask_ntk.py --n 300 --repeats 3

Each repeat forms the same digits MLP NTK once on a LocalCluster of one
worker and once on a LocalCluster of two, each worker single-threaded (one
torch and BLAS thread), into a fresh store. Before the timed formation every
worker forms a tiny NTK, so torch's import and first-call costs are not in
the timing. The script prints the elapsed time of each formation, the summed
device time of its pairs, and the speed-up ``elapsed(1) / elapsed(2)`` per
repeat and of the medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1"}


def form_once(workers: int, params: dict, root: Path) -> tuple[float, float]:
    """Form the NTK of ``params`` on a new LocalCluster of ``workers`` workers.

    Returns the elapsed seconds of the formation and the device-seconds the
    formation record sums over its pairs.
    """
    from distributed import Client, LocalCluster
    from ldbench_ntk._distributed import form_distributed

    from ldbench._plugins import Registry
    from ldbench._store import MatrixStore

    ntk = Registry().source_class("ntk")
    store = MatrixStore(root)
    cluster = LocalCluster(host="127.0.0.1", n_workers=workers, threads_per_worker=1,
                           processes=True, resources={"device": 1},
                           dashboard_address="127.0.0.1:0", env=WORKER_ENV)
    client = Client(cluster)
    try:
        # Every worker imports torch and runs its first Jacobian here.
        warm = ntk(**{**params, "n": 2 * workers, "block_samples": 1})
        target, parts = store.staging_paths(warm, warm.describe().order)
        form_distributed(warm, warm.describe().order, client, target, parts, threads=1)
        source = ntk(**params)
        order = source.describe().order
        target, parts = store.staging_paths(source, order)
        tic = time.perf_counter()
        result = form_distributed(source, order, client, target, parts, threads=1)
        elapsed = time.perf_counter() - tic
    finally:
        client.close()
        cluster.close()
    return elapsed, result.record.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="samples; order m = 10 n")
    parser.add_argument("--width", type=int, default=128,
                        help="hidden units of the MLP")
    parser.add_argument("--depth", type=int, default=2, help="hidden layers of the MLP")
    parser.add_argument("--blocks", type=int, default=8,
                        help="Jacobian blocks; blocks * (blocks + 1) / 2 pair tasks")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each count")
    args = parser.parse_args()
    params = {"model": "mlp", "width": args.width, "depth": args.depth,
              "dataset": "digits", "n": args.n, "seed": 0,
              "block_samples": -(-args.n // args.blocks)}
    times: dict[int, list[float]] = {1: [], 2: []}
    print(f"NTK mlp width={args.width} depth={args.depth} digits n={args.n} "
          f"(m={10 * args.n}), {args.blocks} blocks, {os.cpu_count()} CPUs")
    print("repeat | workers | elapsed s | device s | load average (1 min)")
    for repeat in range(args.repeats):
        for workers in (1, 2):
            with tempfile.TemporaryDirectory(prefix="ldbench-dask-ntk-") as tmp:
                elapsed, device = form_once(workers, params, Path(tmp))
            times[workers].append(elapsed)
            print(f"{repeat + 1} | {workers} | {elapsed:.2f} | {device:.2f} | "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    ratios = [one / two for one, two in zip(times[1], times[2])]
    median_ratio = statistics.median(times[1]) / statistics.median(times[2])
    print(f"speed-up per repeat: {', '.join(f'{r:.2f}' for r in ratios)} "
          f"(min {min(ratios):.2f}, max {max(ratios):.2f}); "
          f"of the medians: {median_ratio:.2f}")


if __name__ == "__main__":
    main()
