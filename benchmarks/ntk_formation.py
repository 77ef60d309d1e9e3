"""Throughput of an NTK formation against the machine's own matrix product.

Run it as a script, not through asv (it defines no asv benchmarks and does
nothing on import)::

    python benchmarks/ntk_formation.py
    python benchmarks/ntk_formation.py --n 300 --width 128 --repeat 1

It forms the NTK of an MLP on the digits data set into a temporary matrix
store and prints the Gram phase's GFLOP/s. Beside it are the float64 GFLOP/s
of ``torch.mm`` measured in the same process, on a square product and on the
shapes of the formation's Gram products. It also prints the share of the
formation time spent in the Jacobian phase. FLOPs count a multiply-add
as two.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def matmul_gflops(rows: int, inner: int, cols: int, repeat: int = 3) -> float:
    """Return the best float64 GFLOP/s of ``torch.mm`` on (rows x inner) times
    (inner x cols), the right operand stored as (cols x inner) and transposed
    as in the Gram products."""
    import torch

    left = torch.randn(rows, inner, dtype=torch.float64)
    right = torch.randn(cols, inner, dtype=torch.float64)
    torch.mm(left, right.T)  # warm-up: thread pool and BLAS buffers
    best = float("inf")
    for _ in range(repeat):
        tic = time.perf_counter()
        torch.mm(left, right.T)
        best = min(best, time.perf_counter() - tic)
    return 2.0 * rows * inner * cols / best / 1e9


def form_once(params: dict, root: Path) -> dict:
    """Form the NTK into a fresh store under ``root``; return its figures."""
    from ldbench_ntk import NTKSource

    from ldbench._store import MatrixStore

    source = NTKSource(**params)
    tic = time.perf_counter()
    stored = MatrixStore(root).ensure(source)
    wall = time.perf_counter() - tic
    phases = stored.formation.phases
    plan = source.plan(source.describe().order)
    return {
        "wall": wall,
        "formation": stored.formation.seconds,
        "phases": phases,
        "plan": plan,
        "parameters": source.cost.parameters,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=400, help="digits samples (m = 10 n)")
    parser.add_argument("--width", type=int, default=256, help="MLP hidden units")
    parser.add_argument("--depth", type=int, default=2, help="MLP hidden layers")
    parser.add_argument(
        "--memory-mb", type=float, default=1536.0, help="memory_mb of the source, MiB"
    )
    parser.add_argument("--repeat", type=int, default=2, help="formations to run")
    args = parser.parse_args()

    import torch

    params = {
        "model": "mlp",
        "width": args.width,
        "depth": args.depth,
        "dataset": "digits",
        "n": args.n,
        "memory_mb": args.memory_mb,
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"source: ntk {params}")
    square = matmul_gflops(2048, 2048, 2048)
    results = []
    for attempt in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="ldbench-ntk-bench-") as root:
            result = form_once(params, Path(root))
        results.append(result)
        gram = result["phases"]["gram"]
        jacobian = result["phases"]["jacobian"]
        print(
            f"formation {attempt + 1}: {result['formation']:.1f} s, gram "
            f"{gram['flops'] / gram['seconds'] / 1e9:.1f} GFLOP/s over "
            f"{gram['seconds']:.1f} s, jacobian {jacobian['seconds']:.1f} s "
            f"({jacobian['seconds'] / result['formation']:.0%} of the formation)"
        )
    plan = results[0]["plan"]
    block_rows = plan.block_samples * plan.outputs
    group_rows = plan.group_blocks * block_rows
    shaped = matmul_gflops(group_rows, plan.parameters, block_rows)
    square = max(square, matmul_gflops(2048, 2048, 2048))
    reference = max(square, shaped)

    best = max(
        results,
        key=lambda r: r["phases"]["gram"]["flops"] / r["phases"]["gram"]["seconds"],
    )
    rates = [
        r["phases"]["gram"]["flops"] / r["phases"]["gram"]["seconds"] / 1e9
        for r in results
    ]
    shares = [r["phases"]["jacobian"]["seconds"] / r["formation"] for r in results]
    print()
    print(
        f"order m = {plan.samples * plan.outputs}, P = {results[0]['parameters']}, "
        f"{len(plan.blocks)} blocks of {block_rows} rows, groups of "
        f"{plan.group_blocks} blocks: Gram products of ({group_rows} x P) "
        f"times (P x {block_rows})"
    )
    print(f"torch.mm float64, 2048^3:              {square:7.1f} GFLOP/s")
    print(f"torch.mm float64, {group_rows} x P x {block_rows}: {shaped:7.1f} GFLOP/s")
    print(
        f"Gram phase, best of {len(rates)}:              {max(rates):7.1f} GFLOP/s "
        f"(spread {min(rates):.1f} to {max(rates):.1f}), "
        f"{max(rates) / reference:.0%} of the faster matmul"
    )
    print(
        f"Jacobian phase share of the formation: {min(shares):.0%} to {max(shares):.0%}"
    )
    print(f"best formation wall time: {best['wall']:.1f} s")


if __name__ == "__main__":
    main()
