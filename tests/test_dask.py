"""The Dask executor and the distributed NTK formation, on a LocalCluster of
two worker processes bound to 127.0.0.1."""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import form_dense

import ldbench
from ldbench._executor import DaskSettings
from ldbench._plugins import Registry
from ldbench._runner import read_records
from ldbench._store import MatrixStore
from ldbench.cli import main

distributed = pytest.importorskip("distributed")
pytest.importorskip("torch")

from ldbench_ntk._distributed import (
    block_pairs,
    form_distributed,
    form_pair,
    pair_path,
    read_pair_figures,
)

NTK = {"model": "mlp", "width": 32, "depth": 1, "dataset": "digits", "n": 40, "seed": 0}

SUITE = """
[suite]
name = "dask-small"
reference = { name = "dense", method = "lu" }
timeout = "5m"

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = 60
rho = 0.6

[[matrix]]
id = "identity"
source = "synthetic"
kind = "identity"
n = 50
scale = 3.0

[[matrix]]
id = "ntk"
source = "ntk"
model = "mlp"
width = 32
depth = 1
dataset = "digits"
n = 40
seed = 0

[[solver]]
name = "dense"
method = "cholesky"

[[solver]]
name = "memdet"
matrices = ["kms", "ntk"]
method = "cholesky"
num_blocks = 2
"""


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-threaded worker processes, one device each."""
    import cloudpickle

    # Workers unpickle the test's pair wrapper by value, since they cannot
    # import this test module.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    local = distributed.LocalCluster(
        host="127.0.0.1", n_workers=2, threads_per_worker=1, processes=True,
        resources={"device": 1}, dashboard_address="127.0.0.1:0",
    )
    yield local
    local.close()
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def write_suite(tmp_path: Path, text: str = SUITE) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(textwrap.dedent(text))
    return path


def by_case(run_dir: Path) -> dict[str, dict]:
    return {r["case_id"]: r for r in read_records(run_dir)}


# It runs the suite twice, locally and on Dask: 49 to 90 s on a 2-core CPU that
# other jobs kept at a load average of 9 to 11.
@pytest.mark.slow
def test_dask_suite_equals_local(tmp_path, cluster):
    suite = write_suite(tmp_path)
    ldbench.run(suite, run_dir=tmp_path / "local", store=tmp_path / "store-local")
    settings = DaskSettings(scheduler=cluster.scheduler_address)
    ldbench.run(suite, run_dir=tmp_path / "dask", store=tmp_path / "store-dask",
                executor=settings)
    local, dask = by_case(tmp_path / "local"), by_case(tmp_path / "dask")
    assert len(local) == 5
    assert sorted(dask) == sorted(local)
    for case_id, expected in local.items():
        got = dask[case_id]
        assert expected["status"] == "ok", expected.get("error")
        assert got["status"] == "ok", got.get("error")
        assert got["logabsdet"] == pytest.approx(expected["logabsdet"], rel=1e-12)
        assert got["reference_logdet"] == pytest.approx(expected["reference_logdet"],
                                                        rel=1e-12)
    kms = [r for r in dask.values() if r["matrix_id"] == "kms"]
    for record in kms:
        exact = 59 * math.log(1 - 0.6**2)
        assert record["logabsdet"] == pytest.approx(exact, rel=1e-12)

    # The NTK was formed pair by pair on the cluster, into a virtual dataset.
    source = Registry().source_class("ntk")(**NTK)
    local_path = MatrixStore(tmp_path / "store-local").lookup(source, 400)
    dask_path = MatrixStore(tmp_path / "store-dask").lookup(source, 400)
    with h5py.File(local_path, "r") as f:
        expected = f["matrix"][:]
    with h5py.File(dask_path, "r") as f:
        formed = f["matrix"][:]
        attrs = dict(f["matrix"].attrs)
        assert f["matrix"].is_virtual
    assert np.abs(formed - expected).max() <= 1e-12 * np.abs(expected).max()
    assert attrs["formation_executor"] == "dask"
    assert attrs["formation_workers"] == 2
    assert attrs["formation_pairs_computed"] == 10
    parts = dask_path.with_name(dask_path.name.replace(".h5", ".parts"))
    pair_seconds = [read_pair_figures(p)["seconds"] for p in parts.glob("pair-*.h5")]
    assert len(pair_seconds) == 10
    assert attrs["formation_seconds"] == pytest.approx(sum(pair_seconds), rel=1e-12)
    ntk_case = next(r for r in dask.values() if r["matrix_id"] == "ntk")
    assert ntk_case["formation_seconds"] == pytest.approx(sum(pair_seconds), rel=1e-12)


def test_cli_starts_local_cluster_and_resumes(tmp_path, capsys):
    suite = write_suite(tmp_path, SUITE.split("[[matrix]]\nid = \"ntk\"")[0]
                        + '[[solver]]\nname = "dense"\nmethod = "cholesky"\n')
    run_dir = tmp_path / "run"
    args = ["run", str(suite), "--out", str(run_dir),
            "--store", str(tmp_path / "store"), "--executor", "dask", "--workers", "2"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "Dask dashboard: http://127.0.0.1:" in err
    first = read_records(run_dir)
    assert len(first) == 2
    assert all(r["status"] == "ok" for r in first), [r.get("error") for r in first]
    identity = next(r for r in first if r["matrix_id"] == "identity")
    assert identity["logabsdet"] == pytest.approx(50 * math.log(3.0), rel=1e-13)

    # Nothing is pending, so a resumed run appends no record.
    assert main(["run", "--resume", str(run_dir), "--executor", "dask",
                 "--workers", "1"]) == 0
    assert len(read_records(run_dir)) == 2


def test_cli_rejects_scheduler_without_dask(tmp_path, capsys):
    suite = write_suite(tmp_path)
    code = main(["run", str(suite), "--scheduler", "tcp://127.0.0.1:1"])
    assert code == 2
    assert "--executor dask" in capsys.readouterr().err


@dataclass
class CountingPair:
    """Pair task that leaves a marker file for each pair it starts to form,
    and kills its worker process the first time it starts a pair after
    finishing ``kill_after`` pairs in that process."""

    markers: str
    kill_after: int

    def __call__(self, job, i, j):
        markers = Path(self.markers)
        pid = os.getpid()
        if not pair_path(job.parts_dir, i, j).exists():
            (markers / f"start-{i}-{j}-{pid}-{os.urandom(4).hex()}").touch()
            finished = len(list(markers.glob(f"finish-*-{pid}")))
            if finished >= self.kill_after:
                try:
                    # Only the first process to get here creates the file.
                    os.close(os.open(markers / "killed", os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    (markers / f"killed-{i}-{j}-{pid}").touch()
                    os._exit(1)
        result = form_pair(job, i, j)
        if result["computed"]:
            (markers / f"finish-{i}-{j}-{pid}").touch()
        return result


def starts_per_pair(markers: Path) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for path in markers.glob("start-*"):
        _, i, j, *_ = path.name.split("-")
        counts[(int(i), int(j))] = counts.get((int(i), int(j)), 0) + 1
    return counts


def test_lost_worker_pairs_recomputed_once(tmp_path, cluster):
    source = Registry().source_class("ntk")(**NTK, block_samples=5)
    expected = form_dense(source)
    markers = tmp_path / "markers"
    markers.mkdir()
    store = MatrixStore(tmp_path / "store")
    target, parts = store.staging_paths(source, 400)
    client = distributed.Client(cluster)
    try:
        result = form_distributed(source, 400, client, target, parts, threads=1,
                                  pair_function=CountingPair(str(markers), 2))
    finally:
        client.close()
    path = store.install(source, 400, target, result.record, result.attributes)

    killed = list(markers.glob("killed-*"))
    assert len(killed) == 1
    _, kill_i, kill_j, kill_pid = killed[0].name.split("-")
    lost_pair = (int(kill_i), int(kill_j))
    pairs = block_pairs(8)
    starts = starts_per_pair(markers)
    assert sorted(starts) == pairs
    assert starts[lost_pair] == 2
    assert all(count == 1 for pair, count in starts.items() if pair != lost_pair)
    # The killed worker had finished pairs, and none of them was formed again.
    finished_by_lost = list(markers.glob(f"finish-*-{kill_pid}"))
    assert len(finished_by_lost) >= 2
    for marker in finished_by_lost:
        _, i, j, _ = marker.name.split("-")
        assert starts[(int(i), int(j))] == 1

    with h5py.File(path, "r") as f:
        formed = f["matrix"][:]
        attrs = dict(f["matrix"].attrs)
    assert np.abs(formed - expected).max() <= 1e-12 * np.abs(expected).max()
    assert json.loads(attrs["formation_phases"])["gram"]["flops"] > 0
    assert attrs["formation_pairs_computed"] + attrs["formation_pairs_reused"] == 36


@dataclass
class FailingPair:
    """Pair task that raises for one pair and forms the others."""

    bad: tuple[int, int]

    def __call__(self, job, i, j):
        if (i, j) == self.bad:
            raise ValueError(f"pair {i},{j} refused")
        return form_pair(job, i, j)


def test_failing_pair_names_pair_and_error(tmp_path, cluster):
    source = Registry().source_class("ntk")(**NTK, block_samples=10)
    store = MatrixStore(tmp_path / "store")
    target, parts = store.staging_paths(source, 400)
    client = distributed.Client(cluster)
    try:
        with pytest.raises(RuntimeError) as caught:
            form_distributed(source, 400, client, target, parts, threads=1,
                             pair_function=FailingPair((1, 2)))
    finally:
        client.close()
    message = str(caught.value)
    assert "ntk-pair-1-2-" in message
    assert "ValueError('pair 1,2 refused')" in message
    assert f"kept in {parts}" in message
    assert not Path(target).exists()
