"""Run a suite on a Dask cluster: ``ldbench run --executor dask``.

The phases keep the order of the local runner, in the host process: first
the matrices are formed, then the reference log-dets are computed, then the
cases run in parallel. Every formation, reference and case job is a Dask task
that calls :func:`ldbench._process.run_in_worker` on its Dask worker, so each
job still runs in its own process with the run's timeout and memory cap.
Each task requires one unit of the workers' ``"device"`` resource, and each
worker has one, so at most one timed job runs on a device at a time. A source
whose plugin implements ``ldbench_form_distributed`` (the ``ntk`` source) is
formed by many tasks across the workers instead of one job.

The host appends each case's record to ``results.jsonl`` as it arrives, so
``--resume`` works as with the local executor. Workers read and write the
store and the run folder, so both must be on a file system that every worker
can reach under the same path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._plugins import Registry
from ._process import JobOutcome, run_in_worker
from ._runner import Runner, RunOptions, _append
from ._store import MatrixStore
from ._suite import Case, Suite, instantiate_source

logger = logging.getLogger(__name__)

#: Worker resource that each job and each NTK block pair requires one unit of.
RESOURCE = "device"
#: Environment variables that set the BLAS and OpenMP thread counts of a job.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class ExecutorError(RuntimeError):
    """The cluster cannot be reached or used; the message names what to change."""


@dataclass
class DaskSettings:
    """How ``ldbench run --executor dask`` reaches its cluster.

    Attributes
    ----------
    scheduler
        Address of a running scheduler, such as ``"tcp://10.0.0.5:8786"``.
        ``None`` starts a LocalCluster on 127.0.0.1.
    workers
        Worker processes of a LocalCluster when torch finds no CUDA device.
        ``None`` means one per CPU core. With CUDA devices a LocalCluster has
        one worker per device and this value is ignored.
    threads
        BLAS, OpenMP and torch threads per job. ``None`` means the CPU cores
        divided by the workers on a LocalCluster, and the worker's own
        environment on an existing cluster.
    dashboard_address
        Host and port of a LocalCluster's dashboard.
    wait_seconds
        Time to wait for the first worker of an existing cluster, in seconds.
    announce
        Print the dashboard address of a started LocalCluster to stderr.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads: int | None = None
    dashboard_address: str = "127.0.0.1:8787"
    wait_seconds: float = 60.0
    announce: bool = True


@dataclass
class Cluster:
    """A connected cluster and what the runner needs to know about it.

    Attributes
    ----------
    client
        ``distributed.Client``.
    slots
        Total ``"device"`` resource of the workers: the most jobs that run
        at once.
    gpus
        CUDA devices of a LocalCluster whose worker k gets device k, else 0.
    threads
        Threads per job, or ``None`` to keep the workers' environment.
    """

    client: Any
    slots: int
    gpus: int = 0
    threads: int | None = None


def run_job_on_worker(
    job: dict[str, Any],
    timeout: float,
    memory_limit: int | None,
    log_path: str,
    threads: int | None,
    gpus: int,
) -> JobOutcome:
    """Run one job in a process of its own on the Dask worker running this task."""
    env: dict[str, str] = {}
    if threads:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    if gpus:
        from distributed import get_worker

        env["CUDA_VISIBLE_DEVICES"] = str(int(get_worker().name) % gpus)
    return run_in_worker(job, timeout, memory_limit, log_path=Path(log_path), env=env)


def _device_slots(client: Any) -> int:
    workers = client.scheduler_info()["workers"].values()
    return int(sum(w.get("resources", {}).get(RESOURCE, 0) for w in workers))


def _cuda_devices() -> int:
    """Return the number of CUDA devices torch finds, 0 without torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def dask_cluster(settings: DaskSettings) -> Iterator[Cluster]:
    """Connect to ``settings.scheduler``, or start a LocalCluster, and close
    the connection (and the LocalCluster) on exit.

    Raises
    ------
    ExecutorError
        When no worker joins within ``wait_seconds``, or no worker has the
        ``"device"`` resource.
    """
    from distributed import Client, LocalCluster

    if settings.scheduler:
        client = Client(settings.scheduler, timeout=settings.wait_seconds)
        try:
            try:
                client.wait_for_workers(1, timeout=settings.wait_seconds)
            except TimeoutError as exc:
                raise ExecutorError(
                    f"no Dask worker joined the scheduler at {settings.scheduler} "
                    f"within {settings.wait_seconds:g} s; start workers with "
                    f"'dask worker {settings.scheduler} --nthreads 1 "
                    f"--resources {RESOURCE}=1'") from exc
            slots = _device_slots(client)
            if slots < 1:
                raise ExecutorError(
                    f"no worker of the scheduler at {settings.scheduler} has the "
                    f"'{RESOURCE}' resource, so no job could be scheduled; start "
                    f"workers with '--resources {RESOURCE}=1'")
            yield Cluster(client, slots, 0, settings.threads)
        finally:
            client.close()
        return
    # NOTE: the CUDA branch (one worker per device, device k for worker k) is
    # untested: the tests ran on machines without a GPU.
    gpus = _cuda_devices()
    cores = os.cpu_count() or 1
    workers = gpus or settings.workers or cores
    if gpus and settings.workers and settings.workers != gpus:
        logger.warning("torch finds %d CUDA devices, so the LocalCluster has %d "
                       "workers, one per device; --workers %d is ignored", gpus,
                       gpus, settings.workers)
    threads = settings.threads or max(1, cores // workers)
    cluster = LocalCluster(
        host="127.0.0.1",
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        resources={RESOURCE: 1},
        dashboard_address=settings.dashboard_address,
    )
    try:
        client = Client(cluster)
        try:
            logger.info("started a LocalCluster of %d workers (%d GPUs), dashboard %s",
                        workers, gpus, cluster.dashboard_link)
            if settings.announce:
                print(f"Dask dashboard: {cluster.dashboard_link}", file=sys.stderr)
            yield Cluster(client, workers, gpus, threads)
        finally:
            client.close()
    finally:
        cluster.close()


class DaskRunner(Runner):
    """Runner whose jobs are Dask tasks and whose cases run in parallel.

    Parameters are those of :class:`Runner`, plus the connected ``cluster``.
    The run folder and the store are made absolute, because workers may run
    in other working folders.
    """

    def __init__(
        self,
        suite: Suite,
        registry: Registry,
        run_dir: Path,
        store: MatrixStore,
        options: RunOptions,
        cluster: Cluster,
    ) -> None:
        super().__init__(suite, registry, Path(run_dir).resolve(),
                         MatrixStore(store.root.resolve()), options)
        self.cluster = cluster
        self._futures: set[Any] = set()
        self._lock = threading.Lock()

    def _run_job(self, job: dict[str, Any], log_path: Path) -> JobOutcome:
        """Run the job as a Dask task that needs one device, and wait for it.

        A task whose workers keep dying (Dask's ``allowed-failures``) becomes
        a ``crashed`` outcome, like a worker process killed by a signal.
        """
        client = self.cluster.client
        future = client.submit(
            run_job_on_worker, job, self.timeout, self.memory_limit, str(log_path),
            self.cluster.threads, self.cluster.gpus,
            resources={RESOURCE: 1}, pure=False,
            key=f"ldbench-{job['kind']}-{os.urandom(6).hex()}",
        )
        with self._lock:
            self._futures.add(future)
        try:
            return future.result()
        except Exception as exc:
            if future.cancelled():
                raise
            logger.error("Dask task %s failed: %r", future.key, exc)
            return JobOutcome("crashed", {"error": f"the Dask task running the job "
                                          f"failed: {exc!r}"}, 0.0, None)
        finally:
            with self._lock:
                self._futures.discard(future)

    def _run_cases(self, cases: list[Case]) -> None:
        """Run the cases as parallel tasks and append each record as it arrives.

        Each case goes through the ``ldbench_case`` hook in a host thread, so
        hook wrappers run concurrently, one thread per device slot.
        """
        from tqdm import tqdm

        if not cases:
            return
        hook = self.registry.pm.hook
        bar = tqdm(total=len(cases), desc="cases", unit="case", disable=None,
                   leave=False)
        threads = max(1, min(self.cluster.slots, len(cases)))
        pool = ThreadPoolExecutor(max_workers=threads,
                                  thread_name_prefix="ldbench-case")
        try:
            futures = {
                pool.submit(hook.ldbench_case, case=self._case_context(case)): case
                for case in cases
            }
            for future in as_completed(futures):
                record = future.result()
                _append(self.results_path, record)
                logger.info("case %s: %s", futures[future].id, record["status"])
                bar.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            with self._lock:
                running = list(self._futures)
            self.cluster.client.cancel(running)
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()

    def _form_all(self, cases: list[Case]) -> None:
        """Form each needed block through ``ldbench_form_distributed`` where a
        plugin implements it for the source, and the rest as single jobs."""
        for config, orders in self._orders(cases).values():
            source = instantiate_source(self.registry, config)
            try:
                source.check_available()
            except (FileNotFoundError, ValueError):
                continue  # the base class records the error for its cases
            for order in sorted(orders):
                path = self.store.lookup(source, order)
                if path is not None and path.name.endswith(f"-m{order}.h5"):
                    continue
                self._form_distributed(source, config.id, order)
        super()._form_all(cases)

    def _form_distributed(self, source: Any, matrix_id: str, order: int) -> None:
        target, parts = self.store.staging_paths(source, order)
        settings = {"threads": self.cluster.threads,
                    "assign_gpus": self.cluster.gpus > 0}
        try:
            result = self.registry.pm.hook.ldbench_form_distributed(
                source=source, order=order, client=self.cluster.client,
                target=str(target), parts_dir=str(parts), settings=settings)
        except Exception as exc:
            raise ExecutorError(
                f"forming matrix {matrix_id!r} at order {order} on the cluster "
                f"failed: {type(exc).__name__}: {exc}. Finished pieces are kept in "
                f"{parts}; rerun with --resume to continue") from exc
        if result is None:
            return
        self.store.install(source, order, target, result["formation"],
                           result.get("attributes"))


def run_on_dask(
    suite: Suite,
    registry: Registry,
    run_dir: Path,
    store: MatrixStore,
    options: RunOptions,
    settings: DaskSettings,
) -> list[dict[str, Any]]:
    """Run the pending cases of ``suite`` on a Dask cluster; return all records."""
    with dask_cluster(settings) as cluster:
        return DaskRunner(suite, registry, run_dir, store, options, cluster).run()
