"""Distributed NTK formation over a Dask cluster, one task per block pair.

The Jacobian J is split into blocks of samples as in :mod:`._plan`. Each
task forms one Gram block ``J_i J_j^T`` (i <= j) on its worker's device and
writes it to its own HDF5 file in a parts folder: dataset ``"upper"`` is the
block at (i, j) and ``"lower"`` its transpose at (j, i). Each task writes only
its own pair's file, so workers do not queue behind a single writer. A pair file is
written under a temporary name and renamed when complete, so its presence
marks the pair as done. A task that finds it returns the figures stored in
it and does not recompute the pair. This is how a formation survives a lost
worker, or a killed host, without redoing finished pairs.

After the last pair, :func:`write_virtual_matrix` writes one HDF5 file with a
virtual dataset ``"matrix"`` that maps every pair file into its place in
the m x m matrix. Readers open it as an ordinary dataset.

This module is also the ``ntk-dask`` plugin: it implements the host's
``ldbench_form_distributed`` hook. It imports torch and dask only inside
functions, so loading the plugin stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ldbench import FormationRecord, MatrixSource, hookimpl

from ._plan import FormationPlan, make_plan
from ._source import ELEMENT_BYTES

logger = logging.getLogger(__name__)

#: File in the parts folder with the block size of the pair files, so a
#: resumed formation keeps the blocks of the pairs that are already done.
PLAN_FILE = "plan.json"
#: A default plan has at least this many block pairs per worker, so the
#: scheduler can balance the load.
PAIRS_PER_WORKER = 4
RESOURCE = "device"


@dataclass(frozen=True)
class PairJob:
    """Settings every pair task of one formation needs; sent to the workers.

    Attributes
    ----------
    params
        Resolved parameters of the ``ntk`` source.
    order
        Order of the leading block being formed (``samples * outputs``).
    block_samples
        Samples per Jacobian block.
    parts_dir
        Folder of the pair files, on a file system every worker can reach.
    threads
        torch intra-op threads per task, or ``None`` to keep torch's default.
    assign_gpus
        Give a worker named by an integer k the CUDA device
        ``k % device_count``, as on a LocalCluster with one worker per GPU.
    """

    params: dict[str, Any]
    order: int
    block_samples: int
    parts_dir: str
    threads: int | None = None
    assign_gpus: bool = False


@dataclass
class DistributedFormation:
    """Outcome of :func:`form_distributed`.

    Attributes
    ----------
    record
        Formation cost. ``seconds`` is the sum over pairs of the time each
        took on its worker's device, setup included, so it counts
        device-seconds, not elapsed time.
    attributes
        Extra HDF5 attributes for the stored matrix: elapsed seconds, worker
        and pair counts.
    pairs
        Figures of every pair, as returned by the pair tasks.
    """

    record: FormationRecord
    attributes: dict[str, Any]
    pairs: list[dict[str, Any]] = field(default_factory=list)


def pair_path(parts_dir: Path | str, i: int, j: int) -> Path:
    """Return the file of the Gram block pair (i, j)."""
    return Path(parts_dir) / f"pair-{i:05d}-{j:05d}.h5"


def block_pairs(count: int) -> list[tuple[int, int]]:
    """Return the pairs (i, j), i <= j, of ``count`` blocks in row-major order."""
    return [(i, j) for i in range(count) for j in range(i, count)]


# --- worker side -----------------------------------------------------------


class _Context:
    """Data, network and cached Jacobian blocks of one formation in one worker
    process, built by the first pair task of that formation it runs."""

    def __init__(self, job: PairJob) -> None:
        import torch

        from ._kernel import TORCH_DTYPES, jacobian_function
        from ._source import NTKSource

        tic = time.perf_counter()
        if job.threads:
            torch.set_num_threads(job.threads)
        self.source = NTKSource(**job.params)
        self.device = _torch_device(self.source, job.assign_gpus)
        self.dtype = TORCH_DTYPES[self.source.params["dtype"]]
        self.plan = job_plan(self.source, job)
        inputs, _ = self.source.load_inputs(self.plan.samples)
        model = self.source.build_model().to(device=self.device, dtype=self.dtype)
        self.inputs = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float64))
        self.inputs = self.inputs.to(device=self.device, dtype=self.dtype)
        self.jacobian = jacobian_function(model)
        self.capacity = max(2, self.plan.cache_blocks)
        self.cache: OrderedDict[int, Any] = OrderedDict()
        self.setup_seconds = self.elapsed_since(tic)

    def elapsed_since(self, tic: float) -> float:
        """Seconds since ``tic``, after waiting for the device to finish."""
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize(self.device)
        return time.perf_counter() - tic

    def block(self, index: int) -> tuple[Any, int]:
        """Return Jacobian block ``index`` and the samples computed for it
        (0 when it came from the cache)."""
        import torch

        if index in self.cache:
            self.cache.move_to_end(index)
            return self.cache[index], 0
        start, stop = self.plan.blocks[index]
        rows = torch.empty(
            (stop - start) * self.plan.outputs,
            self.plan.parameters,
            dtype=self.dtype,
            device=self.device,
        )
        self.jacobian(self.inputs[start:stop], self.plan.chunk_samples, rows)
        self.cache[index] = rows
        while len(self.cache) > self.capacity:
            self.cache.popitem(last=False)
        return rows, stop - start


# One formation at a time per worker process: a task of another job replaces
# the context, which frees the previous formation's memory.
_CONTEXT: dict[str, _Context] = {}


def _context(job: PairJob) -> tuple[_Context, float]:
    """Return this process's context of ``job`` and its setup seconds, which
    are nonzero only for the call that built it."""
    key = json.dumps(asdict(job), sort_keys=True, default=str)
    if key in _CONTEXT:
        return _CONTEXT[key], 0.0
    _CONTEXT.clear()
    context = _Context(job)
    _CONTEXT[key] = context
    return context, context.setup_seconds


def _torch_device(source: Any, assign_gpus: bool) -> Any:
    import torch

    device = source.torch_device()
    if device.type != "cuda" or not assign_gpus:
        return device
    return torch.device("cuda", _worker_index() % torch.cuda.device_count())


def _worker_index() -> int:
    """Return the integer name of the Dask worker running this task, or 0."""
    try:
        from distributed import get_worker

        return int(get_worker().name)
    except (ImportError, ValueError, TypeError):
        return 0


def form_pair(job: PairJob, i: int, j: int) -> dict[str, Any]:
    """Form the Gram block pair (i, j) into its file, unless it is done.

    Returns
    -------
    dict
        The pair's figures: ``seconds`` (device time: setup, Jacobians,
        product and writing), the per-phase seconds, ``gram_flops``,
        ``jacobian_samples``, ``device``, ``worker`` and ``computed``, which
        is False when the pair file already existed and nothing was formed.
    """
    path = pair_path(job.parts_dir, i, j)
    if path.exists():
        return {**read_pair_figures(path), "computed": False}
    context, setup = _context(job)
    import torch

    from ._kernel import tf32_matmul

    plan = context.plan
    scale = 1.0 / plan.parameters if context.source.params["normalize"] else 1.0
    tic = time.perf_counter()
    with tf32_matmul(context.source.params["dtype"] == "tf32"):
        left, samples_i = context.block(i)
        right, samples_j = context.block(j)
        jacobian_seconds = context.elapsed_since(tic)
        tic = time.perf_counter()
        product = torch.mm(left, right.T).to(dtype=torch.float64)
        product *= scale
        if i == j:
            product = (product + product.T) / 2
        block = product.cpu().numpy()
        gram_seconds = context.elapsed_since(tic)
    figures = {
        "i": i,
        "j": j,
        "setup_seconds": setup,
        "jacobian_seconds": jacobian_seconds,
        "jacobian_samples": samples_i + samples_j,
        "gram_seconds": gram_seconds,
        "gram_flops": 2.0 * block.shape[0] * block.shape[1] * plan.parameters,
        "device": "gpu" if context.device.type == "cuda" else "cpu",
        "worker": _worker_address(),
        "pid": os.getpid(),
    }
    figures["seconds"] = setup + jacobian_seconds + gram_seconds
    _write_pair(path, block, i != j, figures)
    return {**figures, "computed": True}


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid {os.getpid()}"


def _write_pair(path: Path, block: np.ndarray, transpose: bool, figures: dict) -> None:
    """Write the pair under a temporary name, flush it to disk and rename it.

    Adds the time of writing the blocks to ``figures["io_seconds"]`` and
    ``figures["seconds"]`` before storing ``figures`` in the file.
    """
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    tic = time.perf_counter()
    with h5py.File(partial, "w") as f:
        f.create_dataset("upper", data=block)
        if transpose:
            f.create_dataset("lower", data=np.ascontiguousarray(block.T))
        figures["io_seconds"] = time.perf_counter() - tic
        figures["seconds"] += figures["io_seconds"]
        f.attrs["figures"] = json.dumps(figures)
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, path)


def read_pair_figures(path: Path) -> dict[str, Any]:
    """Return the figures stored in a finished pair file."""
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["figures"])


# --- host side -------------------------------------------------------------


def job_plan(source: Any, job: PairJob) -> FormationPlan:
    """Return the block plan of ``job`` (its block size, the source's budget)."""
    return make_plan(
        source.check_order(job.order),
        source.outputs,
        source.cost,
        source.params["memory_mb"],
        job.block_samples,
        ELEMENT_BYTES[source.params["dtype"]],
    )


def choose_block_samples(source: Any, order: int, workers: int, parts_dir: Path) -> int:
    """Return the samples per block of a distributed formation.

    The block size of an interrupted formation in ``parts_dir`` wins, so
    its finished pairs stay valid. Otherwise the source's ``block_samples``
    is used when set. With ``block_samples = 0``, blocks are the source's
    memory-budget blocks, made smaller where needed so that there are at
    least :data:`PAIRS_PER_WORKER` pairs per worker.
    """
    plan_file = parts_dir / PLAN_FILE
    if plan_file.exists():
        return int(json.loads(plan_file.read_text())["block_samples"])
    plan = source.plan(order)
    if source.params["block_samples"]:
        return plan.block_samples
    # count * (count + 1) / 2 >= PAIRS_PER_WORKER * workers
    count = math.ceil((math.sqrt(1 + 8 * PAIRS_PER_WORKER * workers) - 1) / 2)
    count = max(count, len(plan.blocks))
    return max(1, math.ceil(plan.samples / count))


def form_distributed(
    source: MatrixSource,
    order: int,
    client: Any,
    target: Path,
    parts_dir: Path,
    threads: int | None = None,
    assign_gpus: bool = False,
    pair_function: Callable[[PairJob, int, int], dict[str, Any]] = form_pair,
) -> DistributedFormation:
    """Form the leading block of ``order`` of an ``ntk`` source on a cluster.

    Submits one task per block pair, each requiring one unit of the workers'
    ``"device"`` resource, collects their figures as they finish, and then
    writes ``target``: an HDF5 file whose virtual dataset ``"matrix"`` joins
    the pair files of ``parts_dir``. Pairs already in ``parts_dir`` are not
    formed again. A pair whose worker is lost is run again on another worker
    by the Dask scheduler (up to its ``allowed-failures`` setting).

    Parameters
    ----------
    source
        The ``ntk`` source.
    order
        Order ``k * d`` of the leading block.
    client
        ``distributed.Client`` of a cluster whose workers can read and write
        ``parts_dir`` and ``target``.
    target, parts_dir
        Virtual-dataset file to write, and the folder of the pair files. Both
        must be in the same folder tree, because the virtual dataset refers
        to the pair files by relative path.
    threads
        torch threads per task (``None``: torch's default).
    assign_gpus
        Give the worker named k the CUDA device ``k % device_count``.
    pair_function
        Task run for each pair; tests wrap :func:`form_pair` to count or
        interrupt executions.

    Raises
    ------
    RuntimeError
        When a pair task fails; the message names the pair and the error.
    """
    from distributed import as_completed
    from tqdm.auto import tqdm

    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, len(client.scheduler_info()["workers"]))
    block_samples = choose_block_samples(source, order, workers, parts_dir)
    job = PairJob(dict(source.params), order, block_samples, str(parts_dir), threads,
                  assign_gpus)
    plan = job_plan(source, job)
    (parts_dir / PLAN_FILE).write_text(json.dumps({"block_samples": block_samples,
                                                   "order": order}))
    pairs = block_pairs(len(plan.blocks))
    logger.info("forming NTK of order %d on %d workers: %d blocks of %d samples, "
                "%d pairs", order, workers, len(plan.blocks), block_samples, len(pairs))
    tic = time.perf_counter()
    futures = [
        client.submit(pair_function, job, i, j, resources={RESOURCE: 1}, pure=False,
                      key=f"ntk-pair-{i}-{j}-{os.urandom(4).hex()}")
        for i, j in pairs
    ]
    results: list[dict[str, Any]] = []
    progress = tqdm(total=len(pairs), desc="ntk pairs", unit="pair", leave=False,
                    disable=None)
    with progress:
        for future in as_completed(futures):
            # A worker that dies can take a finished result with it. The
            # scheduler then runs the task again, and result() waits for it.
            # Only an error or a cancellation fails the formation.
            try:
                result = future.result()
            except Exception as error:
                client.cancel(futures)
                raise RuntimeError(
                    f"NTK pair task {future.key} failed: {error!r}. Finished "
                    f"pairs are kept in {parts_dir}, and a rerun resumes them"
                ) from error
            results.append(result)
            future.release()
            progress.update(1)
    elapsed = time.perf_counter() - tic
    write_virtual_matrix(target, parts_dir, plan)
    return _summarise(source, results, elapsed, workers, block_samples)


def _summarise(
    source: Any, pairs: list[dict[str, Any]], elapsed: float, workers: int,
    block_samples: int,
) -> DistributedFormation:
    """Sum the pairs' device time and work into one formation record."""
    per_sample = 2.0 * source.cost.forward_macs * (1 + 2 * source.outputs)
    phases = {name: {"seconds": 0.0, "flops": 0.0}
              for name in ("setup", "jacobian", "gram", "io")}
    for pair in pairs:
        phases["setup"]["seconds"] += pair["setup_seconds"]
        phases["jacobian"]["seconds"] += pair["jacobian_seconds"]
        phases["jacobian"]["flops"] += per_sample * pair["jacobian_samples"]
        phases["gram"]["seconds"] += pair["gram_seconds"]
        phases["gram"]["flops"] += pair["gram_flops"]
        phases["io"]["seconds"] += pair["io_seconds"]
    devices = {pair["device"] for pair in pairs}
    record = FormationRecord(
        seconds=sum(pair["seconds"] for pair in pairs),
        flops=phases["jacobian"]["flops"] + phases["gram"]["flops"],
        device="gpu" if "gpu" in devices else "cpu",
        phases=phases,
    )
    computed = sum(1 for pair in pairs if pair["computed"])
    attributes = {
        "formation_executor": "dask",
        "formation_elapsed_seconds": elapsed,
        "formation_workers": workers,
        "formation_worker_addresses": json.dumps(sorted({p["worker"] for p in pairs})),
        "formation_block_samples": block_samples,
        "formation_pairs_computed": computed,
        "formation_pairs_reused": len(pairs) - computed,
    }
    logger.info("formed %d NTK pairs (%d reused) in %.2f s elapsed, %.2f "
                "device-seconds", len(pairs), len(pairs) - computed, elapsed,
                record.seconds)
    return DistributedFormation(record, attributes, pairs)


def write_virtual_matrix(target: Path, parts_dir: Path, plan: FormationPlan) -> None:
    """Write ``target`` with a virtual dataset ``"matrix"`` over the pair files.

    The pair files are named by paths relative to ``target``'s folder, which
    HDF5 resolves against the folder of the file holding the virtual
    dataset (checked with HDF5 2.0), so the store and its parts folder can
    move together.
    """
    target = Path(target)
    d = plan.outputs
    rows = [(start * d, stop * d) for start, stop in plan.blocks]
    order = plan.samples * d
    layout = h5py.VirtualLayout(shape=(order, order), dtype="f8")
    for i, j in block_pairs(len(rows)):
        name = os.path.relpath(pair_path(parts_dir, i, j), target.parent)
        (r0, r1), (c0, c1) = rows[i], rows[j]
        upper = h5py.VirtualSource(name, "upper", shape=(r1 - r0, c1 - c0))
        layout[r0:r1, c0:c1] = upper
        if i != j:
            lower = h5py.VirtualSource(name, "lower", shape=(c1 - c0, r1 - r0))
            layout[c0:c1, r0:r1] = lower
    with h5py.File(target, "w") as f:
        f.create_virtual_dataset("matrix", layout, fillvalue=np.nan)


@hookimpl
def ldbench_form_distributed(
    source: MatrixSource,
    order: int,
    client: Any,
    target: str,
    parts_dir: str,
    settings: dict[str, Any],
) -> dict[str, Any] | None:
    """Form ``ntk`` matrices pair by pair on the cluster; leave other sources
    to the next implementation."""
    if source.name != "ntk":
        return None
    result = form_distributed(
        source,
        order,
        client,
        Path(target),
        Path(parts_dir),
        threads=settings.get("threads"),
        assign_gpus=bool(settings.get("assign_gpus", False)),
    )
    return {"formation": result.record, "attributes": result.attributes}
