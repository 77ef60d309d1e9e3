"""The CIFAR-10 suite on a tiny local folder in the CIFAR-10 python format."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from ldbench.cli import main

SUITE = Path(__file__).resolve().parents[1] / "suites" / "cifar10.toml"


def write_cifar_batches(folder: Path, per_batch: int) -> None:
    """Write data_batch_1..5 of random 32x32 RGB images, as CIFAR-10 ships them."""
    rng = np.random.default_rng(0)
    batches = folder / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for index in range(1, 6):
        batch = {
            b"batch_label": f"training batch {index} of 5".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"{index}_{i}.png".encode() for i in range(per_batch)],
        }
        with open(batches / f"data_batch_{index}", "wb") as stream:
            pickle.dump(batch, stream, protocol=2)


def test_cifar10_suite_small_override(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    write_cifar_batches(tmp_path / "data", per_batch=8)
    monkeypatch.delenv("LDBENCH_DATA", raising=False)
    run_dir = tmp_path / "run"
    code = main([
        "run", str(SUITE), "--out", str(run_dir), "--store", str(tmp_path / "store"),
        "--set", f"suite.data_dir={tmp_path / 'data'}",
        "--set", "matrix.n=24", "--set", "matrix.width=4",
        "--set", "solver.flodance.n_s=12", "--set", "solver.slq.samples=10",
        "--set", "solver.slq.lanczos_degree=20", "--set", "solver.memdet.num_blocks=3",
    ])
    assert code == 0
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["method"] for r in records] == ["slq", "memdet", "flodance", "flodance"]
    assert all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    memdet = records[1]
    assert memdet["order"] == 240
    assert memdet["rel_error"] < 1e-10
    assert memdet["reference_method"].startswith("dense")
    for flodance in records[2:]:
        assert flodance["read_order"] == 120
        assert flodance["formation_basis"] == "measured"


def test_cifar10_suite_without_data_fails_fast(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LDBENCH_DATA", str(tmp_path / "empty"))
    code = main(["run", str(SUITE), "--out", str(tmp_path / "run"),
                 "--store", str(tmp_path / "store")])
    assert code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "empty") in err
    assert "cifar-10-batches-py" in err
    assert "LDBENCH_DATA" in err
    assert not (tmp_path / "run").exists()
    assert list((tmp_path / "store").glob("*.h5")) == []
