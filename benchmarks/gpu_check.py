"""GPU checks: NTK formation and the out-of-core solver on a CUDA device.

Run it as a script on a machine with an NVIDIA GPU::

    python benchmarks/gpu_check.py --workdir /path/to/large/scratch

1. Forms the NTK of a ResNet9 (width 16) on CIFAR-size images on the GPU and on
   the CPU, prints the GPU Gram phase's GFLOP/s beside ``torch.mm``'s float64
   GFLOP/s on the same device, and the largest relative difference between the
   two kernels. The images are random, written in the CIFAR-10 python format,
   because nothing is downloaded.
2. Runs the ``ooc`` solver with ``device="cuda"`` on a Kac-Murdock-Szegő
   matrix whose float64 size exceeds a quarter of the GPU's memory, and prints
   its TFLOP/s beside the measured float64 matrix-multiply rate and its
   relative error against the closed form (m - 1) log(1 - rho^2).

Without a CUDA device it prints that and exits with status 0.
``--dry-run-cpu`` runs the same steps on the CPU at a small size (torch CPU
tensors for the ooc engine), to check the script itself on any machine.
"""

from __future__ import annotations

import argparse
import math
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np


def cuda_mm_tflops(size: int = 8192, repeat: int = 3) -> float:
    """Best float64 TFLOP/s of ``torch.mm`` on a square CUDA product."""
    import torch

    a = torch.randn(size, size, dtype=torch.float64, device="cuda")
    torch.mm(a, a)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeat):
        tic = time.perf_counter()
        torch.mm(a, a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - tic)
    return 2.0 * size**3 / best / 1e12


def write_cifar(folder: Path, per_batch: int) -> None:
    """Write five batches of random 32x32 RGB images in the python format."""
    rng = np.random.default_rng(0)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for index in range(1, 6):
        batch = {
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
        }
        with open(batches / f"data_batch_{index}", "wb") as stream:
            pickle.dump(batch, stream, protocol=2)


def check_ntk(workdir: Path, n: int, device: str) -> None:
    from ldbench_ntk import NTKSource

    from ldbench._store import MatrixStore

    data = workdir / "cifar"
    write_cifar(data, per_batch=max(1, n // 5 + 1))
    kernels = {}
    for name, where in (("gpu", device), ("cpu", "cpu")):
        source = NTKSource(model="resnet9", width=16, dataset="cifar10", n=n,
                           data_dir=str(data), device=where, memory_mb=8192.0)
        stored = MatrixStore(workdir / f"store-{name}").ensure(source)
        gram = stored.formation.phases["gram"]
        print(f"NTK on {where}: m = {source.describe().order}, formation "
              f"{stored.formation.seconds:.1f} s, Gram {gram['flops'] / gram['seconds'] / 1e9:.1f} "
              "GFLOP/s")
        import h5py

        with h5py.File(stored.path) as f:
            kernels[name] = f["matrix"][...]
    difference = np.abs(kernels["gpu"] - kernels["cpu"]).max() / np.abs(kernels["cpu"]).max()
    print(f"NTK GPU against CPU: largest difference {difference:.2e} of the largest entry")


def check_ooc(workdir: Path, device: str, order: int | None, rho: float = 0.5) -> None:
    import torch
    from ldbench_ooc import OocSolver
    from ldbench_synthetic import SyntheticSource

    from ldbench import MatrixHandle, SolveContext
    from ldbench._store import MatrixStore

    if device == "cuda":
        memory = torch.cuda.get_device_properties(0).total_memory
        order = order or int(math.sqrt(memory / 4 / 8)) + 1024
    else:
        order = order or 2000
        memory = 8 * order**2
    source = SyntheticSource(kind="kms", n=order, rho=rho)
    print(f"ooc: KMS order {order} ({8 * order**2 / 2**30:.1f} GiB, GPU "
          f"{memory / 2**30:.1f} GiB)")
    stored = MatrixStore(workdir / "store-kms").ensure(source)
    solver = OocSolver(method="cholesky", device=device, memory_mb=memory / 2**20 / 8)
    handle = MatrixHandle(stored.path, source.describe())
    scratch = workdir / "scratch"
    scratch.mkdir(exist_ok=True)
    solver.prepare()
    tic = time.perf_counter()
    estimate = solver.solve(handle, SolveContext(scratch_dir=scratch, device="gpu"))
    seconds = time.perf_counter() - tic
    exact = (order - 1) * math.log1p(-rho * rho)
    error = abs(estimate.logabsdet - exact) / abs(exact)
    rate = solver.flops(source.describe()) / seconds / 1e12
    matmul = cuda_mm_tflops() if device == "cuda" else float("nan")
    print(f"ooc {device}: {seconds:.1f} s, {rate:.3f} TFLOP/s against "
          f"{matmul:.2f} TFLOP/s for torch.mm float64; relative error "
          f"{error:.2e} against the closed form")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for stores and scratch (created if missing)")
    parser.add_argument("--n", type=int, default=500, help="CIFAR-size images in the NTK")
    parser.add_argument("--ooc-order", type=int, default=None,
                        help="order of the ooc matrix (default: a quarter of GPU memory)")
    parser.add_argument("--dry-run-cpu", action="store_true",
                        help="run the steps on the CPU at a small size")
    args = parser.parse_args()
    import torch

    if args.dry_run_cpu:
        devices = ("cpu", "torch-cpu")
        args.n = min(args.n, 20)
    elif not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return
    else:
        devices = ("cuda", "cuda")
        print(f"GPU: {torch.cuda.get_device_name(0)}; torch.mm float64 "
              f"{cuda_mm_tflops():.2f} TFLOP/s")
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="ldbench-gpu-") as tmp:
        check_ntk(Path(tmp), args.n, devices[0])
        check_ooc(Path(tmp), devices[1], args.ooc_order)


if __name__ == "__main__":
    main()
