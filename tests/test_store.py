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
    assert list(tmp_path.iterdir()) == []


def test_reference_cache(tmp_path):
    store = MatrixStore(tmp_path)
    store.ensure(kms())
    assert store.reference(kms()) is None
    store.set_reference(kms(), -12.5, 1.0, "dense (LU)")
    assert store.reference(kms()) == {"logabsdet": -12.5, "sign": 1.0, "method": "dense (LU)"}
    with h5py.File(store.lookup(kms(), 40)) as f:
        assert f["matrix"].attrs["reference_logdet"] == -12.5
