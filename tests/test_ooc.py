"""The ooc solver: closed forms, agreement with LAPACK, I/O volume, resumption."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
import scipy.linalg
from ldbench_ooc import (
    BlockGrid,
    MatrixInput,
    OocSolver,
    factorize,
    input_from_file,
    io_volume,
)

from ldbench import (
    MatrixHandle,
    MatrixInfo,
    ParameterError,
    SolveContext,
    SolverError,
    Structure,
)
from ldbench.testing import CHECKS, ConformanceError, run_check

DEVICES = ("cpu", "torch-cpu")
METHODS = ("cholesky", "ldl", "lu")
RTOL = 1e-12


def kms(order: int, rho: float) -> np.ndarray:
    index = np.arange(order)
    return rho ** np.abs(index[:, None] - index[None, :])


def with_spectrum(eigenvalues: np.ndarray, seed: int = 0) -> np.ndarray:
    """Return Q diag(eigenvalues) Q^T for a random orthogonal Q."""
    order = eigenvalues.size
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((order, order)))
    return (q * eigenvalues) @ q.T


def solve(handle_factory, array, tmp_path, structure=Structure.GENERAL, **params):
    handle = handle_factory(array, structure=structure)
    try:
        return OocSolver(**params).solve(handle, SolveContext(scratch_dir=tmp_path / "s"))
    finally:
        handle.close()


def relative(value: float, exact: float) -> float:
    return abs(value - exact) / abs(exact)


# Closed forms ---------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("num_blocks", [1, 3, 5])
def test_kms_closed_form(handle_factory, tmp_path, device, method, num_blocks):
    order, rho = 101, 0.6  # 101 is divisible by none of 3 and 5
    estimate = solve(handle_factory, kms(order, rho), tmp_path, method=method,
                     num_blocks=num_blocks, device=device)
    exact = (order - 1) * math.log(1.0 - rho**2)
    assert relative(estimate.logabsdet, exact) < RTOL
    assert estimate.sign == 1.0
    assert estimate.details["num_blocks"] == num_blocks


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_scaled_identity_closed_form(handle_factory, tmp_path, device, method):
    order, scale = 97, 2.5
    estimate = solve(handle_factory, scale * np.eye(order), tmp_path, method=method,
                     num_blocks=4, device=device)
    assert relative(estimate.logabsdet, order * math.log(scale)) < RTOL
    assert estimate.sign == 1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["ldl", "lu"])
def test_indefinite_spectrum_sign(handle_factory, tmp_path, device, method):
    # Three negative eigenvalues make det < 0.
    eigenvalues = np.geomspace(1e-2, 1e3, 90)
    eigenvalues[[3, 40, 77]] *= -1
    estimate = solve(handle_factory, with_spectrum(eigenvalues), tmp_path,
                     method=method, num_blocks=4, device=device)
    exact = float(np.sum(np.log(np.abs(eigenvalues))))
    assert relative(estimate.logabsdet, exact) < 1e-11
    assert estimate.sign == -1.0


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_positive_spectrum(handle_factory, tmp_path, device, method):
    eigenvalues = np.linspace(0.05, 3.0, 120)
    estimate = solve(handle_factory, with_spectrum(eigenvalues, seed=1), tmp_path,
                     method=method, num_blocks=7, device=device)
    exact = float(np.sum(np.log(eigenvalues)))
    assert relative(estimate.logabsdet, exact) < 1e-11
    assert estimate.sign == 1.0


# Agreement with scipy --------------------------------------------------------


def random_matrices(order: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    g = rng.standard_normal((order, order))
    return {
        "cholesky": g @ g.T / order + np.eye(order),
        "ldl": g + g.T,
        "lu": g,
    }


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_matches_scipy(handle_factory, tmp_path, device, method, cache):
    array = random_matrices(300)[method]
    sign, expected = np.linalg.slogdet(array)
    if method == "lu":
        factor, _ = scipy.linalg.lu_factor(array)
        expected = float(np.sum(np.log(np.abs(np.diagonal(factor)))))
    estimate = solve(handle_factory, array, tmp_path, method=method, num_blocks=6,
                     device=device, cache_panels=cache)
    assert relative(estimate.logabsdet, expected) < RTOL
    assert estimate.sign == sign


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("io", ["inline", "threads"])
@pytest.mark.parametrize("method", METHODS)
def test_io_modes_match_scipy(handle_factory, tmp_path, method, io, direct):
    array = random_matrices(260)[method]
    _, expected = np.linalg.slogdet(array)
    estimate = solve(handle_factory, array, tmp_path, method=method, num_blocks=5,
                     io=io, direct_io=direct)
    assert relative(estimate.logabsdet, expected) < RTOL
    assert estimate.details["io_threads"] is (io == "threads")
    assert estimate.details["direct_io"] is direct


@pytest.mark.parametrize(("direct", "threads"), [(True, True), (False, False)])
def test_auto_io_threads_follow_direct_io(handle_factory, tmp_path, direct, threads):
    array = random_matrices(130)["cholesky"]
    details = solve(handle_factory, array, tmp_path, method="cholesky",
                    num_blocks=3, direct_io=direct).details
    assert details["io_threads"] is threads


def test_leading_block_of_larger_dataset(tmp_path):
    array = random_matrices(120)["cholesky"]
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=array)
    info = MatrixInfo(order=120, structure=Structure.SPD)
    handle = MatrixHandle(path, info, order=77)
    estimate = OocSolver(method="cholesky", num_blocks=3).solve(
        handle, SolveContext(scratch_dir=tmp_path / "s"))
    handle.close()
    _, expected = np.linalg.slogdet(array[:77, :77])
    assert relative(estimate.logabsdet, expected) < RTOL
    assert estimate.read_order == 77
    grid = BlockGrid.split(77, 3)
    assert estimate.details["bytes_read_input"] == io_volume(grid, "cholesky").source_read


def test_npy_file_input(tmp_path):
    array = random_matrices(90)["lu"]
    np.save(tmp_path / "a.npy", array)
    source, close = input_from_file(tmp_path / "a.npy")
    try:
        result = factorize(source, "lu", 4, tmp_path / "work")
    finally:
        close()
    _, expected = np.linalg.slogdet(array)
    assert relative(result.logabsdet, expected) < RTOL
    assert not (tmp_path / "work").exists()


# I/O volume ------------------------------------------------------------------


def closed_form_blocks(method: str, n: int, cache: bool) -> tuple[int, int, int]:
    """Blocks read from the input, read from scratch and written, for equal
    blocks (the formulas of docs/ooc.md)."""
    if cache and method in ("cholesky", "ldl"):
        return n * (n + 1) // 2, (n - 1) * n * (n + 1) // 6, (n - 1) * n * (n + 1) // 6
    if cache:
        return n * n, (n - 1) * n * (2 * n - 1) // 6, (n - 1) * n * (2 * n - 1) // 6
    if method in ("cholesky", "ldl"):
        source = n * (n + 1) // 2
        scratch_read = n * (n - 1) * (2 * n - 1) // 6
        written = (n - 1) * (n - 2) // 2 + (n + 1) * n * (n - 1) // 6
    else:
        source = n * n
        scratch_read = 2 * (n - 1) * n * (2 * n - 1) // 6
        written = n * (n - 1) // 2 + (n - 1) * n * (2 * n - 1) // 6
    return source, scratch_read, written


def summed_bytes(method: str, sizes: list[int], cache: bool) -> tuple[int, int, int]:
    """The per-step sums of docs/ooc.md for blocks of unequal order."""
    n = len(sizes)
    s = [[8 * sizes[i] * sizes[j] for j in range(n)] for i in range(n)]
    source = scratch_read = written = 0
    for k in range(n):
        if method in ("cholesky", "ldl"):
            trailing = sum(s[i][j] for i in range(k, n) for j in range(k, i + 1))
            written += sum(s[i][j] for i in range(k + 1, n) for j in range(k + 1, i + 1))
            if not cache:
                scratch_read += sum((n - 1 - j) * s[j][k] for j in range(k + 1, n))
                written += sum(s[i][k] for i in range(k + 1, n - 1))
        else:
            trailing = sum(s[i][j] for i in range(k, n) for j in range(k, n))
            written += sum(s[i][j] for i in range(k + 1, n) for j in range(k + 1, n))
            if not cache:
                scratch_read += (n - 1 - k) * sum(s[k][j] for j in range(k + 1, n))
                written += sum(s[k][j] for j in range(k + 1, n))
        if k == 0:
            source += trailing
        else:
            scratch_read += trailing
    return source, scratch_read, written


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_io_bytes_equal_blocks(handle_factory, tmp_path, method, cache):
    order, n = 240, 6
    array = random_matrices(order)[method]
    details = solve(handle_factory, array, tmp_path, method=method,
                    num_blocks=n, cache_panels=cache).details
    block = 8 * (order // n) ** 2
    source, scratch_read, written = closed_form_blocks(method, n, cache)
    assert details["bytes_read_input"] == source * block
    assert details["bytes_read_scratch"] == scratch_read * block
    assert details["bytes_written"] == written * block
    assert details["bytes_read"] == (source + scratch_read) * block


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_io_bytes_unequal_blocks(handle_factory, tmp_path, device, method, cache):
    order = 203  # 9 blocks: five of order 23 and four of order 22
    for n, sizes in ((7, [29] * 7), (9, [23] * 5 + [22] * 4)):
        array = random_matrices(order)[method]
        details = solve(handle_factory, array, tmp_path, method=method,
                        num_blocks=n, device=device, cache_panels=cache).details
        source, scratch_read, written = summed_bytes(method, sizes, cache)
        assert details["bytes_read_input"] == source
        assert details["bytes_read_scratch"] == scratch_read
        assert details["bytes_written"] == written


# Parameters, memory budget, cleanup --------------------------------------------


def buffer_bytes(order: int) -> int:
    """Bytes of one pool buffer: 8 b^2 rounded up to 4 KiB, plus 4 KiB of
    alignment slack."""
    return -(-8 * order**2 // 4096) * 4096 + 4096


def test_memory_budget_sets_block_count():
    # Background I/O threads, no panel cache: Cholesky keeps 6 block buffers.
    # At n_b = 7 (b = 143) they take 6 * 167,936 = 1,007,616 bytes <= 2^20;
    # at n_b = 6 (b = 167), 6 * 229,376 = 1,376,256.
    def blocks(method, **params):
        return OocSolver(method=method, memory_mb=1.0, **params).num_blocks(1000)

    assert buffer_bytes(143) == 167_936
    assert blocks("cholesky", cache_panels=False, io="threads") == 7
    # LDL adds 3 unpadded temporaries: 6 * 102,400 + 3 * 8 * 112^2 = 940,032
    # bytes at n_b = 9, 1,161,432 at n_b = 8.
    assert blocks("ldl", cache_panels=False, io="threads") == 9
    # With the cache, n_b + 3 buffers: 14 * 73,728 = 1,032,192 bytes at
    # n_b = 11 (b = 91), 13 * 86,016 = 1,118,208 at n_b = 10 (b = 100).
    assert blocks("cholesky", io="threads") == 11
    # LU with the cache: n_b + 4 buffers and 1 temporary. n_b = 12 (b = 84)
    # needs 16 * 61,440 + 8 * 84^2 = 1,039,488 bytes, n_b = 11 needs 1,172,168.
    assert blocks("lu", io="threads") == 12
    # Inline I/O needs one buffer fewer. No cache: 5 * 167,936 = 839,680 bytes
    # at n_b = 7, 5 * 229,376 = 1,146,880 at n_b = 6.
    assert blocks("cholesky", cache_panels=False, io="inline") == 7
    # Cache, n_b + 2 buffers: 12 * 86,016 = 1,032,192 bytes at n_b = 10,
    # 11 * 106,496 = 1,171,456 at n_b = 9.
    assert blocks("cholesky", io="inline") == 10
    # The default io = "auto" budgets for the threads' larger pool.
    assert blocks("cholesky") == 11
    assert blocks("lu", max_block_order=50) == 20


@pytest.mark.parametrize(
    ("io", "count", "size", "buffers"),
    # threads: n_b + 3 = 6 buffers of order 134, and inline n_b + 2 = 5; at
    # n_b = 2 inline would need 4 * buffer_bytes(200) = 1,310,720 > 2^20.
    [("threads", 3, 134, 6), ("inline", 3, 134, 5)],
)
def test_memory_budget_bounds_block_memory(
    handle_factory, tmp_path, io, count, size, buffers
):
    array = random_matrices(400)["cholesky"]
    details = solve(handle_factory, array, tmp_path, method="cholesky",
                    memory_mb=1.0, io=io).details
    assert details["num_blocks"] == count
    assert details["block_size"] == size
    assert details["block_memory_bytes"] == buffers * buffer_bytes(size)
    assert details["block_memory_bytes"] <= 2**20


def test_pool_allocation_matches_block_memory(tmp_path, monkeypatch):
    from ldbench_ooc._engine import _Pipeline

    captured = {}
    original = _Pipeline.__init__

    def capture(self, *args, **kwargs):
        original(self, *args, **kwargs)
        captured["pool"] = self.pool.nbytes

    monkeypatch.setattr(_Pipeline, "__init__", capture)
    array = random_matrices(300)["lu"]
    result = factorize(MatrixInput(array, 300, "a"), "lu", 7, tmp_path / "w",
                       io_threads=True)
    # LU keeps one unpadded temporary besides the pool.
    temporary = 8 * 43**2
    assert result.details["block_memory_bytes"] == captured["pool"] + temporary


def test_block_order_above_limit_rejected():
    solver = OocSolver(method="lu", num_blocks=2, max_block_order=100)
    with pytest.raises(ParameterError, match="num_blocks >= 3"):
        solver.num_blocks(250)
    with pytest.raises(ParameterError, match="exceeds the matrix order"):
        OocSolver(num_blocks=30).num_blocks(20)


def test_scratch_removed_after_success(handle_factory, tmp_path):
    solve(handle_factory, np.eye(50) * 3, tmp_path, method="lu", num_blocks=5)
    assert list((tmp_path / "s").iterdir()) == []


def test_indefinite_cholesky_raises_and_cleans(handle_factory, tmp_path):
    array = with_spectrum(np.array([1.0] * 30 + [-1.0] * 30))
    with pytest.raises(SolverError, match="not positive definite"):
        solve(handle_factory, array, tmp_path, method="cholesky", num_blocks=3,
              checkpoint_dir=str(tmp_path / "ckpt"))
    assert list((tmp_path / "ckpt").iterdir()) == []
    assert not (tmp_path / "s").exists()


def test_nan_entry_raises(handle_factory, tmp_path):
    array = np.eye(40)
    array[30, 5] = np.nan
    with pytest.raises(SolverError, match=r"entry \(30, 5\) is nan"):
        solve(handle_factory, array, tmp_path, method="lu", num_blocks=4)


def test_singular_one_block_gives_minus_inf(handle_factory, tmp_path):
    array = np.ones((20, 20))
    estimate = solve(handle_factory, array, tmp_path, method="lu", num_blocks=1)
    assert estimate.logabsdet == -math.inf
    assert estimate.sign == 0.0


def test_zero_pivot_across_blocks_raises(handle_factory, tmp_path):
    # [[0, I], [I, 0]] is nonsingular, but its first diagonal block is zero.
    array = np.block([[np.zeros((4, 4)), np.eye(4)], [np.eye(4), np.zeros((4, 4))]])
    with pytest.raises(SolverError, match="exactly zero pivot at row 0"):
        solve(handle_factory, array, tmp_path, method="lu", num_blocks=2)


# Conformance kit ---------------------------------------------------------------

# LDL reads one triangle and trusts the declared structure, as memdet's does.
_ONE_TRIANGLE = {("ldl", "unsupported-structure")}


@pytest.mark.parametrize("check", CHECKS)
@pytest.mark.parametrize("method", METHODS)
def test_conformance(method, check, tmp_path):
    params = {"method": method, "num_blocks": 3}
    if (method, check) in _ONE_TRIANGLE:
        with pytest.raises(ConformanceError):
            run_check(OocSolver, check, params=params, rtol=1e-10, workdir=tmp_path)
        return
    run_check(OocSolver, check, params=params, rtol=1e-10, workdir=tmp_path)


# Checkpoints and resumption ------------------------------------------------------


class FailingInput(MatrixInput):
    """Input whose reads fail with OSError after ``limit`` blocks."""

    def __init__(self, array: np.ndarray, limit: int) -> None:
        super().__init__(array, array.shape[0], "failing-input")
        self.limit = limit

    def read_into(self, grid, slot, buffer, helper=None):
        self.limit -= 1
        if self.limit < 0:
            raise OSError("simulated read failure")
        super().read_into(grid, slot, buffer, helper)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", METHODS)
def test_resume_after_failure(tmp_path, device, method):
    array = random_matrices(160)[method]
    workdir = tmp_path / "work"
    full = factorize(MatrixInput(array, 160, "input"), method, 5,
                     tmp_path / "other", device=device)
    with pytest.raises(OSError, match="simulated"):
        factorize(MatrixInput(array, 160, "input"), method, 5, workdir,
                  device=device, keep_on_failure=True, on_step=_raise_at(2))
    assert (workdir / "state.json").exists()
    resumed = factorize(MatrixInput(array, 160, "input"), method, 5,
                        workdir, device=device)
    assert resumed.details["resumed_from_step"] == 3
    assert resumed.logabsdet == full.logabsdet
    assert resumed.sign == full.sign
    assert not workdir.exists()


def _raise_at(step: int):
    def on_step(k: int, count: int) -> None:
        if k == step:
            raise OSError("simulated failure after a checkpoint")

    return on_step


def test_failure_without_keep_removes_workdir(tmp_path):
    array = random_matrices(100)["lu"]
    with pytest.raises(OSError):
        factorize(FailingInput(array, limit=3), "lu", 4, tmp_path / "work")
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("threads", [True, False])
def test_failed_write_stops_the_run(tmp_path, monkeypatch, threads):
    # A later step reads the block whose write failed; the run must raise the
    # write's error instead of waiting for that block.
    import threading

    from ldbench_ooc._io import ScratchFiles

    original = ScratchFiles.write

    def failing_write(self, step, slot, buffer):
        # Step 1 writes (2, 2) first and step 2 reads it first. The failure
        # comes late enough that the compute loop has queued the rest of
        # step 1 and waits for that block.
        if (step, slot) == (2, (2, 2)):
            time.sleep(0.3)
            raise OSError(28, "No space left on device")
        return original(self, step, slot, buffer)

    monkeypatch.setattr(ScratchFiles, "write", failing_write)
    array = random_matrices(200)["cholesky"]
    outcome = {}

    def run():
        try:
            factorize(MatrixInput(array, 200, "a"), "cholesky", 4, tmp_path / "w",
                      io_threads=threads)
        except OSError as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the factorisation hung after a failed write"
    assert outcome["error"].errno == 28
    assert not (tmp_path / "w").exists()


def test_kept_folder_without_checkpoint_is_removed(tmp_path):
    # The input fails at its third block, inside step 0, before any checkpoint.
    array = random_matrices(100)["lu"]
    with pytest.raises(OSError, match="simulated"):
        factorize(FailingInput(array, limit=3), "lu", 4, tmp_path / "work",
                  keep_on_failure=True)
    assert not (tmp_path / "work").exists()


def test_checkpoint_save_failure_names_path(tmp_path, monkeypatch):
    from ldbench_ooc import _checkpoint

    def full_disk(record, file):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_checkpoint.json, "dump", full_disk)
    array = random_matrices(100)["cholesky"]
    workdir = tmp_path / "work"
    with pytest.raises(OSError, match="saving the checkpoint .*state.json failed: "
                       "No space left on device. Free space") as caught:
        factorize(MatrixInput(array, 100, "a"), "cholesky", 4, workdir,
                  keep_on_failure=True)
    assert caught.value.errno == 28
    assert caught.value.filename == str(workdir / "state.json")
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("num_blocks", None, "num_blocks=None is not an int"),
        ("num_blocks", 2.0, "num_blocks=2.0 is not an int"),
        ("direct_io", "no", "direct_io='no' is not a bool"),
        ("direct_io", None, "direct_io=None is not a bool"),
        ("fsync", "false", "fsync='false' is not a bool"),
        ("cache_panels", None, "cache_panels=None is not a bool"),
        ("io_threads", "inline", "io_threads='inline' is not a bool"),
        ("keep_on_failure", 1, "keep_on_failure=1 is not a bool"),
    ],
)
def test_factorize_rejects_option_types(tmp_path, name, value, message):
    options = {"num_blocks": 2, name: value}
    with pytest.raises(TypeError, match=message):
        factorize(MatrixInput(np.eye(4), 4, "a"), "lu", workdir=tmp_path / "w",
                  **options)
    assert not (tmp_path / "w").exists()


def test_factorize_accepts_numpy_scalars(tmp_path):
    array = random_matrices(60)["cholesky"]
    result = factorize(MatrixInput(array, 60, "a"), "cholesky", np.int64(3),
                       tmp_path / "w", direct_io=np.True_, fsync=np.False_)
    _, expected = np.linalg.slogdet(array)
    assert relative(result.logabsdet, expected) < RTOL
    assert result.details["direct_io"] is True


def test_factorize_rejects_unknown_device(tmp_path):
    with pytest.raises(ValueError, match="device='gpu' is not one of cpu, cuda"):
        factorize(MatrixInput(np.eye(4), 4, "a"), "lu", 2, tmp_path / "w",
                  device="gpu")


def test_workdir_with_user_files_is_refused(tmp_path):
    workdir = tmp_path / "shared"
    workdir.mkdir()
    (workdir / "my-results.txt").write_text("keep me")
    with pytest.raises(ValueError, match="contains 'my-results.txt'"):
        factorize(MatrixInput(np.eye(4), 4, "a"), "lu", 2, workdir)
    assert (workdir / "my-results.txt").read_text() == "keep me"


def test_unwritable_scratch_folder_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OSError, match="scratch folder .* cannot be used.*writable"):
        factorize(MatrixInput(np.eye(4), 4, "a"), "lu", 2, blocker / "w")


def test_checkpoint_folder_differs_per_file_layout(handle_factory, tmp_path):
    array = random_matrices(120)["cholesky"]
    handle = handle_factory(array, structure=Structure.SPD)
    folders = set()
    try:
        for direct in (True, False):
            for fsync in (True, False):
                estimate = OocSolver(method="cholesky", num_blocks=3, fsync=fsync,
                                     direct_io=direct).solve(
                    handle, SolveContext(scratch_dir=tmp_path / "s"))
                folders.add(estimate.details["workdir"])
    finally:
        handle.close()
    assert len(folders) == 4


def test_auto_io_follows_o_direct_fallback(handle_factory, tmp_path, monkeypatch):
    from ldbench_ooc import _io

    monkeypatch.setattr(_io, "_takes_direct_io", lambda folder: False)
    array = random_matrices(130)["cholesky"]
    details = solve(handle_factory, array, tmp_path, method="cholesky",
                    num_blocks=3).details
    assert details["direct_io"] is False
    assert details["io_threads"] is False


def test_label_names_non_default_io():
    assert OocSolver(method="ldl", num_blocks=4).label() == "LDL, n_b=4"
    label = OocSolver(num_blocks=4, direct_io=False, io="inline").label()
    assert label == "LU, n_b=4, page cache, io=inline"


def test_mismatched_checkpoint_is_ignored(tmp_path):
    array = random_matrices(100)["cholesky"]
    workdir = tmp_path / "work"
    with pytest.raises(OSError):
        factorize(MatrixInput(array, 100, "a"), "cholesky", 4, workdir,
                  keep_on_failure=True, on_step=_raise_at(1))
    other = array + np.eye(100)
    result = factorize(MatrixInput(other, 100, "b"), "cholesky", 4, workdir)
    _, expected = np.linalg.slogdet(other)
    assert result.details["resumed_from_step"] == 0
    assert relative(result.logabsdet, expected) < RTOL


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("setting", ["fsync", "direct_io"])
def test_checkpoint_of_other_file_layout_is_ignored(tmp_path, method, first, setting):
    # fsync = true rotates step files over three files, false over two, and
    # direct I/O aligns each block to 4 KiB, so a checkpoint written under
    # one value must not be resumed under the other.
    array = random_matrices(120)[method]
    workdir = tmp_path / "work"
    with pytest.raises(OSError):
        factorize(MatrixInput(array, 120, "a"), method, 6, workdir,
                  keep_on_failure=True, on_step=_raise_at(3), **{setting: first})
    result = factorize(MatrixInput(array, 120, "a"), method, 6, workdir,
                       **{setting: not first})
    _, expected = np.linalg.slogdet(array)
    assert result.details["resumed_from_step"] == 0
    assert relative(result.logabsdet, expected) < RTOL


@pytest.mark.parametrize(
    "content",
    ["[]", "null", '{"format": 2}', "BAD",
     "NEXT_STEP_99", "NEXT_STEP_1_WITH_4_PARTS", "NAN_PART"],
)
def test_malformed_or_inconsistent_checkpoint_starts_over(tmp_path, content):
    import json

    array = random_matrices(120)["lu"]
    workdir = tmp_path / "work"
    with pytest.raises(OSError):
        factorize(MatrixInput(array, 120, "a"), "lu", 6, workdir,
                  keep_on_failure=True, on_step=_raise_at(3))
    state = workdir / "state.json"
    record = json.loads(state.read_text())
    assert record["next_step"] == 4
    if content == "NEXT_STEP_99":
        record["next_step"] = 99
        content = json.dumps(record)
    elif content == "NEXT_STEP_1_WITH_4_PARTS":
        record["next_step"] = 1
        content = json.dumps(record)
    elif content == "NAN_PART":
        record["parts"][1][0] = float("nan")
        content = json.dumps(record)
    state.write_text(content)
    result = factorize(MatrixInput(array, 120, "a"), "lu", 6, workdir)
    _, expected = np.linalg.slogdet(array)
    assert result.details["resumed_from_step"] == 0
    assert relative(result.logabsdet, expected) < RTOL


def test_second_process_on_the_same_folder_is_refused(tmp_path):
    import fcntl

    from ldbench_ooc._engine import FolderBusy

    workdir = tmp_path / "work"
    workdir.mkdir()
    holder = os.open(workdir / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        array = random_matrices(60)["lu"]
        with pytest.raises(FolderBusy, match="another process is factoring"):
            factorize(MatrixInput(array, 60, "a"), "lu", 3, workdir)
        assert (workdir / "lock").exists()
    finally:
        os.close(holder)


def test_complex_input_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="convert it to float64"):
        MatrixInput(np.eye(4, dtype=complex), 4, "a")


def test_unknown_method_and_infinite_budget_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="'qr' is not one of cholesky, ldl, lu"):
        factorize(MatrixInput(np.eye(4), 4, "a"), "qr", 2, tmp_path / "w")
    for budget in (float("nan"), float("inf")):
        with pytest.raises(ParameterError, match="memory_mb=.* is not a finite"):
            OocSolver(memory_mb=budget)


CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ldbench_ooc import factorize, input_from_file

    def on_step(k, count):
        print(f"done {k}", flush=True)

    source, close = input_from_file(Path(sys.argv[1]))
    result = factorize(source, sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]),
                       keep_on_failure=True, on_step=on_step,
                       direct_io=sys.argv[5] == "direct")
    print(f"logdet {result.logabsdet!r}", flush=True)
    """
)


@pytest.mark.parametrize(
    ("method", "direct"),
    [(method, True) for method in METHODS] + [("cholesky", False)],
)
def test_sigkill_midway_then_resume(tmp_path, method, direct):
    order, blocks = 1600, 8
    array = random_matrices(order)[method]
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("matrix", data=array)
    workdir = tmp_path / "work"

    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), method, str(blocks), str(workdir),
         "direct" if direct else "cached"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = child.stdout.readline()
        while line and line.strip() != "done 2":
            line = child.stdout.readline()
        assert line.strip() == "done 2", "the child finished or failed before step 2"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert (workdir / "state.json").exists()

    source, close = input_from_file(path)
    try:
        resumed = factorize(source, method, blocks, workdir, direct_io=direct)
        reference = factorize(source, method, blocks, tmp_path / "fresh",
                              direct_io=direct)
    finally:
        close()
    assert 3 <= resumed.details["resumed_from_step"] < blocks
    # Multithreaded OpenBLAS may split a GEMM differently from run to run, so
    # two uninterrupted runs can already differ in the last digits.
    assert resumed.logabsdet == pytest.approx(reference.logabsdet, rel=1e-12, abs=0)
    assert resumed.sign == reference.sign
    _, expected = np.linalg.slogdet(array)
    assert relative(resumed.logabsdet, expected) < RTOL


def test_checkpoint_dir_emptied_after_success(handle_factory, tmp_path):
    array = random_matrices(120)["ldl"]
    handle = handle_factory(array, structure=Structure.SYMMETRIC)
    checkpoint = tmp_path / "ckpt"
    solver = OocSolver(method="ldl", num_blocks=4, checkpoint_dir=str(checkpoint))
    first = solver.solve(handle, SolveContext(scratch_dir=tmp_path / "a"))
    assert first.details["resumed_from_step"] == 0
    assert list(checkpoint.iterdir()) == []
    handle.close()


# Large order ---------------------------------------------------------------------


@pytest.mark.slow
def test_order_16384_kms_cholesky(tmp_path):
    """An order where one in-core LAPACK call would exceed max_block_order."""
    order, rho = 16384, 0.5
    path = tmp_path / "kms.h5"
    index = np.arange(order)
    powers = rho**index
    with h5py.File(path, "w") as f:
        dataset = f.create_dataset("matrix", (order, order), dtype="f8",
                                   chunks=(512, 512))
        for row in range(0, order, 2048):
            rows = index[row : row + 2048]
            dataset[row : row + 2048, :] = powers[np.abs(rows[:, None] - index[None, :])]
    handle = MatrixHandle(path, MatrixInfo(order=order, structure=Structure.SPD))
    started = time.perf_counter()
    estimate = OocSolver(method="cholesky").solve(
        handle, SolveContext(scratch_dir=tmp_path / "s"))
    seconds = time.perf_counter() - started
    handle.close()
    exact = (order - 1) * math.log(1.0 - rho**2)
    assert relative(estimate.logabsdet, exact) < RTOL
    assert estimate.details["max_lapack_order"] <= 8192
    assert estimate.details["num_blocks"] >= 2
    print(f"order {order}: {seconds:.1f} s, {estimate.details['gflops_effective']:.1f} "
          "GFLOP/s")
