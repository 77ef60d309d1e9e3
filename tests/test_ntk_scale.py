"""Blockwise, resumable NTK formation into the store: kills, reruns, dtypes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import form_dense
from ldbench_ntk import NTKSource

from ldbench._store import MatrixStore

pytest.importorskip("torch")

# P = 1,210 parameters, 24 samples: blocks of 3 samples in groups of 2, so the
# plan has 4 groups and 8 + 6 + 4 + 2 = 20 steps.
SMALL = {"model": "mlp", "width": 16, "depth": 1, "n": 24, "seed": 2}
BLOCKED = {**SMALL, "block_samples": 3, "memory_mb": 1.0}
KILL_AFTER_STEPS = 7

KILL_SCRIPT = """
import os, signal, sys
from ldbench._store import MatrixStore, _H5BlockWriter
from ldbench_ntk import NTKSource

marks = 0
mark_done = _H5BlockWriter.mark_done
write = _H5BlockWriter.write

def counting_mark_done(self, tag):
    global marks
    mark_done(self, tag)
    marks += 1

def killing_write(self, row, col, block):
    # Kill in the middle of a step: one block of it is written, its tag is not.
    write(self, row, col, block)
    if marks == {kill_after}:
        os.kill(os.getpid(), signal.SIGKILL)

_H5BlockWriter.mark_done = counting_mark_done
_H5BlockWriter.write = killing_write
MatrixStore(sys.argv[1]).ensure(NTKSource(**{params!r}))
"""


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def read_stored(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["matrix"][...]


def test_plan_has_groups() -> None:
    plan = NTKSource(**BLOCKED).plan(240)
    assert [list(g) for g in plan.groups()] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert plan.pairs == 36


def test_sigkill_then_rerun_skips_finished(tmp_path: Path) -> None:
    root = tmp_path / "store"
    script = KILL_SCRIPT.format(kill_after=KILL_AFTER_STEPS, params=BLOCKED)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    logs = list(root.glob("*.done"))
    assert len(logs) == 1
    assert len(logs[0].read_text().splitlines()) == KILL_AFTER_STEPS
    assert not list(root.glob("*.h5"))

    source = NTKSource(**BLOCKED)
    stored = MatrixStore(root).ensure(source)
    counts = source.last_counts
    # The first 7 steps are columns 0 to 6 of group 0: pairs (0,0), (0..1, 1)
    # and two pairs for each of columns 2 to 6.
    assert counts.steps == 20
    assert counts.steps_skipped == KILL_AFTER_STEPS
    assert counts.pairs_computed == 36 - (1 + 2 + 2 * 5)
    # Group 0 is held again for its last column; groups 1 to 3 are whole.
    assert counts.jacobian_samples == 6 + 3 + (6 + 12) + (6 + 6) + 6
    assert not logs[0].exists()
    with h5py.File(stored.path, "r") as f:
        assert bool(f["matrix"].attrs["formation_resumed"])

    uninterrupted = form_dense(NTKSource(**BLOCKED))
    assert relative_error(read_stored(stored.path), uninterrupted) < 1e-12


def test_rerun_of_finished_matrix_forms_nothing(tmp_path: Path) -> None:
    store = MatrixStore(tmp_path)
    first = NTKSource(**BLOCKED)
    store.ensure(first)
    assert first.last_counts.pairs_computed == 36
    second = NTKSource(**BLOCKED)
    store.ensure(second)
    assert second.last_counts is None


def test_blockwise_equals_one_shot(tmp_path: Path) -> None:
    one_shot_source = NTKSource(**SMALL, block_samples=24)
    assert len(one_shot_source.plan(240).blocks) == 1
    one_shot = read_stored(MatrixStore(tmp_path).ensure(one_shot_source).path)
    blocked = read_stored(MatrixStore(tmp_path).ensure(NTKSource(**BLOCKED)).path)
    assert np.array_equal(blocked, blocked.T)
    assert relative_error(blocked, one_shot) < 1e-12


def test_phases_count_only_this_call(tmp_path: Path) -> None:
    source = NTKSource(**BLOCKED)
    stored = MatrixStore(tmp_path).ensure(source)
    plan = source.plan(240)
    assert source.last_counts.gram_flops == plan.gram_flops()
    assert source.last_counts.jacobian_samples == plan.jacobian_samples()
    assert stored.formation.phases["gram"]["flops"] == plan.gram_flops()
    assert set(stored.formation.phases) == {"jacobian", "gram", "io"}


# --- formation dtype and device ------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "low", "high"),
    # bfloat16: about 0.1 of the largest entry, from the network's forward and
    # backward passes in bfloat16 (the Gram products accumulate in float32).
    [("float32", 1e-9, 1e-5), ("tf32", 1e-9, 1e-5), ("bfloat16", 1e-3, 0.3)],
)
def test_dtype_error_against_float64(dtype: str, low: float, high: float) -> None:
    exact = form_dense(NTKSource(**BLOCKED))
    rounded = form_dense(NTKSource(**BLOCKED, dtype=dtype))
    error = relative_error(rounded, exact)
    assert low < error < high
    assert np.array_equal(rounded, rounded.T)


def test_tf32_equals_float32_on_cpu() -> None:
    float32 = form_dense(NTKSource(**SMALL, dtype="float32"))
    tf32 = form_dense(NTKSource(**SMALL, dtype="tf32"))
    assert np.array_equal(float32, tf32)


def test_dtype_changes_store_key(tmp_path: Path) -> None:
    store = MatrixStore(tmp_path)
    paths = {
        store.ensure(NTKSource(**SMALL, dtype=d)).path for d in ("float64", "float32")
    }
    assert len(paths) == 2


def test_lower_dtype_fits_larger_blocks() -> None:
    params = {**SMALL, "memory_mb": 0.5}
    float64 = NTKSource(**params).plan(240)
    bfloat16 = NTKSource(**params, dtype="bfloat16").plan(240)
    assert bfloat16.block_samples > float64.block_samples


def test_cuda_device_priced_as_gpu() -> None:
    source = NTKSource(**SMALL, device="cuda")
    assert source.device == "gpu"
    assert NTKSource.device == "cpu"
    assert NTKSource(**SMALL, device="auto").device == "cpu"


def test_store_records_formation_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    stored = MatrixStore(tmp_path / "cpu").ensure(NTKSource(**SMALL))
    assert stored.formation.device == "cpu"

    def pretend_gpu(self: NTKSource) -> torch.device:
        self.device = "gpu"
        return torch.device("cpu")

    monkeypatch.setattr(NTKSource, "torch_device", pretend_gpu)
    stored = MatrixStore(tmp_path / "gpu").ensure(NTKSource(**SMALL))
    assert stored.formation.device == "gpu"


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="needs a machine without CUDA"
)
def test_cuda_missing_raises() -> None:
    from ldbench import ParameterError

    source = NTKSource(**SMALL, device="cuda")
    with pytest.raises(ParameterError, match="finds no CUDA device"):
        form_dense(source)
