"""Matrix store: keys, reuse, leading blocks and interrupted formation."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ldbench._store import MatrixStore, source_key
from ldbench_synthetic import SyntheticSource


def kms(n: int = 40, rho: float = 0.3) -> SyntheticSource:
    return SyntheticSource(kind="kms", n=n, rho=rho)


def test_key_depends_on_params_only():
    assert source_key(kms()) == source_key(kms())
    assert source_key(kms()) != source_key(kms(rho=0.4))


def test_form_then_reuse(tmp_path):
    store = MatrixStore(tmp_path)
    first = store.ensure(kms())
    assert first.formation_basis == "measured"
    mtime = first.path.stat().st_mtime_ns
    second = store.ensure(kms())
    assert second.path == first.path
    assert second.path.stat().st_mtime_ns == mtime
    with h5py.File(first.path) as f:
        a = f["matrix"][...]
        assert f["matrix"].attrs["complete"]
    i, j = np.indices((40, 40))
    np.testing.assert_array_equal(a, 0.3 ** np.abs(i - j))


def test_leading_block_is_prorated_from_full(tmp_path):
    store = MatrixStore(tmp_path)
    full = store.ensure(kms())
    lead = store.ensure(kms(), 10)
    assert lead.path == full.path
    assert lead.formation_basis == "pro-rated"
    share = kms().formation_flops(10) / kms().formation_flops(40)
    assert 0 < share < 1
    assert lead.formation.seconds == pytest.approx(full.formation.seconds * share)


def test_interrupted_formation_is_not_served(tmp_path, monkeypatch):
    store = MatrixStore(tmp_path)
    source = kms()

    def broken_form(order, out):
        out.write(0, 0, np.ones((5, 5)))
        raise KeyboardInterrupt

    monkeypatch.setattr(source, "form", broken_form)
    with pytest.raises(KeyboardInterrupt):
        store.ensure(source)
    assert store.lookup(kms(), 40) is None
    assert [p.name for p in tmp_path.glob("*.h5")] == []
    formed = store.ensure(kms())
    with h5py.File(formed.path) as f:
        i, j = np.indices((40, 40))
        np.testing.assert_array_equal(f["matrix"][...], 0.3 ** np.abs(i - j))


class StepSource(SyntheticSource):
    """KMS source that forms one row strip per step and can stop after some."""

    steps_run: list[int] = []
    stop_after: int | None = None

    def form(self, order, out):
        full = np.asarray(0.3 ** np.abs(np.subtract.outer(np.arange(order), np.arange(order))))
        for step in range(4):
            tag = f"strip {step}"
            if out.is_done(tag):
                continue
            if self.stop_after is not None and len(self.steps_run) == self.stop_after:
                raise KeyboardInterrupt
            rows = slice(step * order // 4, (step + 1) * order // 4)
            out.write(rows.start, 0, full[rows])
            self.steps_run.append(step)
            out.mark_done(tag)


def test_interrupted_formation_resumes(tmp_path):
    store = MatrixStore(tmp_path)
    first = StepSource(kind="kms", n=40, rho=0.3)
    first.steps_run, first.stop_after = [], 3
    with pytest.raises(KeyboardInterrupt):
        store.ensure(first)
    assert first.steps_run == [0, 1, 2]
    assert store.lookup(first, 40) is None
    second = StepSource(kind="kms", n=40, rho=0.3)
    second.steps_run, second.stop_after = [], None
    formed = store.ensure(second)
    assert second.steps_run == [3]
    with h5py.File(formed.path) as f:
        assert f["matrix"].attrs["formation_resumed"]
        i, j = np.indices((40, 40))
        np.testing.assert_array_equal(f["matrix"][...], 0.3 ** np.abs(i - j))
    assert list(tmp_path.glob("*.partial")) == []
    assert list(tmp_path.glob("*.done")) == []


def test_reference_cache(tmp_path):
    store = MatrixStore(tmp_path)
    store.ensure(kms())
    assert store.reference(kms()) is None
    store.set_reference(kms(), -12.5, 1.0, "dense (LU)")
    assert store.reference(kms()) == {"logabsdet": -12.5, "sign": 1.0, "method": "dense (LU)"}
    with h5py.File(store.lookup(kms(), 40)) as f:
        assert f["matrix"].attrs["reference_logdet"] == -12.5


def test_reference_cached_while_matrix_open_elsewhere(tmp_path):
    import subprocess
    import sys

    store = MatrixStore(tmp_path)
    path = store.ensure(kms()).path
    holder = subprocess.Popen(
        [sys.executable, "-c",
         ("import sys, time, h5py; f = h5py.File(sys.argv[1], 'r'); "
          "print('open', flush=True); time.sleep(60)"), str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        store.set_reference(kms(), -12.5, 1.0, "dense (LU)")
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert store.reference(kms()) == {"logabsdet": -12.5, "sign": 1.0, "method": "dense (LU)"}


def test_install_virtual_dataset(tmp_path):
    from ldbench import FormationRecord

    store = MatrixStore(tmp_path)
    source = kms(6)
    staged, parts = store.staging_paths(source, 6)
    parts.mkdir()
    with h5py.File(parts / "piece.h5", "w") as f:
        f["block"] = np.arange(36.0).reshape(6, 6)
    layout = h5py.VirtualLayout(shape=(6, 6), dtype="f8")
    layout[:, :] = h5py.VirtualSource(f"{parts.name}/piece.h5", "block", shape=(6, 6))
    with h5py.File(staged, "w") as f:
        f.create_virtual_dataset("matrix", layout)
    record = FormationRecord(seconds=12.5, flops=3e6, device="gpu",
                             phases={"gram": {"seconds": 10.0, "flops": 3e6}})
    path = store.install(source, 6, staged, record, {"formation_workers": 4})
    assert path == tmp_path / f"{source_key(source)}-m6.h5"
    assert not staged.exists()
    assert store.lookup(source, 6) == path
    stored = store.open(source, path, 6)
    assert stored.formation == record
    assert stored.formation_basis == "measured"
    with h5py.File(path, "r") as f:
        assert f["matrix"].attrs["formation_workers"] == 4
        assert f["matrix"].attrs["complete"]
        np.testing.assert_array_equal(f["matrix"][:], np.arange(36.0).reshape(6, 6))


def test_install_rejects_wrong_shape(tmp_path):
    from ldbench import FormationRecord

    store = MatrixStore(tmp_path)
    source = kms(6)
    staged, _ = store.staging_paths(source, 6)
    with h5py.File(staged, "w") as f:
        f["matrix"] = np.zeros((5, 5))
    with pytest.raises(ValueError, match=r"shape \(5, 5\), expected \(6, 6\)"):
        store.install(source, 6, staged, FormationRecord(seconds=1.0, flops=0.0))
    assert store.lookup(source, 6) is None


def test_reference_is_per_method_and_dropped_on_reform(tmp_path):
    store = MatrixStore(tmp_path)
    store.ensure(kms())
    store.set_reference(kms(), -12.5, 1.0, "dense (LU)")
    assert store.reference(kms(), "dense (LU)")["logabsdet"] == -12.5
    assert store.reference(kms(), "dense (LDL)") is None
    for path in tmp_path.glob("*.h5"):
        path.unlink()
    store.ensure(kms())
    assert store.reference(kms()) is None


def test_damaged_file_is_set_aside_and_formed_again(tmp_path, caplog):
    store = MatrixStore(tmp_path)
    path = store.ensure(kms()).path
    with open(path, "r+b") as f:
        f.truncate(5000)
    formed = store.ensure(kms())
    assert formed.path == path
    assert path.with_name(path.name + ".corrupt").exists()
    assert "cannot be read" in caplog.text
    with h5py.File(path) as f:
        i, j = np.indices((40, 40))
        np.testing.assert_array_equal(f["matrix"][...], 0.3 ** np.abs(i - j))


def test_every_damaged_candidate_is_set_aside(tmp_path):
    store = MatrixStore(tmp_path)
    full = store.ensure(kms()).path
    lead = store.ensure(kms(), 20)
    assert lead.formation_basis == "pro-rated"
    store._form(kms(), 20)
    leading_file = store.lookup(kms(), 20)
    assert leading_file != full
    for path in (leading_file, full):
        with open(path, "r+b") as f:
            f.truncate(3000)
    formed = store.ensure(kms(), 20)
    assert formed.formation_basis == "measured"
    assert sorted(p.name for p in tmp_path.glob("*.corrupt")) == sorted(
        [leading_file.name + ".corrupt", full.name + ".corrupt"])
    with h5py.File(formed.path) as f:
        i, j = np.indices((20, 20))
        np.testing.assert_array_equal(f["matrix"][...], 0.3 ** np.abs(i - j))
