"""Tests of the synthetic source against closed forms and dense LAPACK."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import ArrayWriter, form_dense
from ldbench_synthetic import SyntheticSource, ldbench_register_sources

from ldbench import ParameterError, Structure


class RecordingWriter(ArrayWriter):
    """ArrayWriter that also keeps the shape of every block written."""

    def __init__(self, order: int) -> None:
        super().__init__(order)
        self.shapes: list[tuple[int, int]] = []

    def write(self, row: int, col: int, block: np.ndarray) -> None:
        assert block.dtype == np.float64
        self.shapes.append(block.shape)
        super().write(row, col, block)


def slogdet(array: np.ndarray) -> tuple[float, float]:
    sign, logabsdet = np.linalg.slogdet(array)
    return float(sign), float(logabsdet)


def test_plugin_registers_source():
    registered: list[type] = []
    ldbench_register_sources(registered.append)
    assert registered == [SyntheticSource]
    assert SyntheticSource.name == "synthetic"


@pytest.mark.parametrize("spectrum", ["geometric", "linear", "power"])
def test_spectrum_logdet_matches_slogdet(spectrum):
    source = SyntheticSource(
        kind="spectrum", n=60, spectrum=spectrum, max_eig=2.0, min_eig=1e-3, power=1.5
    )
    info = source.describe()
    sign, logabsdet = slogdet(form_dense(source))
    assert info.structure is Structure.SPD
    assert info.sign == 1.0
    assert sign == 1.0
    assert info.logdet == pytest.approx(logabsdet, rel=1e-12)


def test_spectrum_eigenvalue_formulas():
    n = 5
    geometric = SyntheticSource(n=n, max_eig=1.0, min_eig=1e-4).eigenvalues()
    linear = SyntheticSource(n=n, spectrum="linear", max_eig=3.0, min_eig=1.0)
    power = SyntheticSource(n=n, spectrum="power", max_eig=2.0, power=2.0)
    np.testing.assert_allclose(geometric, [1.0, 1e-1, 1e-2, 1e-3, 1e-4], rtol=1e-15)
    np.testing.assert_allclose(linear.eigenvalues(), [3.0, 2.5, 2.0, 1.5, 1.0])
    np.testing.assert_allclose(
        power.eigenvalues(), [2.0, 2.0 / 4, 2.0 / 9, 2.0 / 16, 2.0 / 25], rtol=1e-15
    )
    expected = math.log(2.0) * 5 - 2.0 * math.log(120.0)
    assert power.describe().logdet == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("spectrum", ["geometric", "linear", "power"])
def test_spectrum_eigenvalues_recovered(spectrum):
    source = SyntheticSource(n=40, spectrum=spectrum, max_eig=5.0, min_eig=0.01, seed=3)
    computed = np.linalg.eigvalsh(form_dense(source))[::-1]
    np.testing.assert_allclose(computed, source.eigenvalues(), rtol=0, atol=1e-13 * 5.0)


def test_spectrum_exactly_symmetric_in_strips():
    source = SyntheticSource(n=50, seed=7)
    source.block_bytes = 8 * (50 + 2 * 50) * 7  # 7 rows per strip
    writer = RecordingWriter(50)
    source.form(50, writer)
    array = writer.array
    assert not np.isnan(array).any()
    assert np.array_equal(array, array.T)
    assert len(writer.shapes) == 2 * 8 - 1  # 8 strips, 7 transposed copies
    assert max(rows * cols * 8 for rows, cols in writer.shapes) <= source.block_bytes


def test_spectrum_leading_block_is_top_left():
    source = SyntheticSource(n=48, spectrum="linear", max_eig=4.0, min_eig=0.5, seed=11)
    full = form_dense(source)
    small = SyntheticSource(n=48, spectrum="linear", max_eig=4.0, min_eig=0.5, seed=11)
    small.block_bytes = 8 * (48 + 2 * 20) * 3
    leading = form_dense(small, 20)
    np.testing.assert_allclose(leading, full[:20, :20], rtol=0, atol=1e-14)
    assert small.describe(20).logdet is None
    assert small.describe(20).order == 20


def test_spectrum_seed_changes_matrix():
    first = form_dense(SyntheticSource(n=10, seed=1))
    again = form_dense(SyntheticSource(n=10, seed=1))
    other = form_dense(SyntheticSource(n=10, seed=2))
    assert np.array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("order", [1, 2, 7, 30])
def test_identity_logdet_every_order(order):
    source = SyntheticSource(kind="identity", n=30, scale=2.5)
    source.block_bytes = 8 * 30 * 4
    array = form_dense(source, order)
    info = source.describe(order)
    assert np.array_equal(array, 2.5 * np.eye(order))
    assert info.logdet == pytest.approx(order * math.log(2.5), rel=1e-15)
    assert info.logdet == pytest.approx(slogdet(array)[1], rel=1e-12)


@pytest.mark.parametrize("rho", [0.5, -0.7, 0.9, 0.0])
def test_kms_logdet_every_order(rho):
    n = 40
    source = SyntheticSource(kind="kms", n=n, rho=rho)
    source.block_bytes = 16 * n * 6
    full = form_dense(source)
    lags = np.abs(np.subtract.outer(np.arange(n), np.arange(n)))
    np.testing.assert_allclose(full, rho ** lags.astype(float), rtol=1e-15, atol=0)
    for order in range(1, n + 1):
        info = source.describe(order)
        sign, logabsdet = slogdet(full[:order, :order])
        expected = (order - 1) * math.log(1.0 - rho**2)
        assert sign == 1.0
        assert info.logdet == pytest.approx(expected, rel=1e-15, abs=1e-15)
        assert logabsdet == pytest.approx(expected, rel=1e-12, abs=1e-13)
    assert np.array_equal(form_dense(source, 17), full[:17, :17])


def test_block_size_labels_samples():
    source = SyntheticSource(kind="kms", n=12, block_size=3)
    info = source.describe(6)
    assert info.block_size == 3
    assert info.samples == 2
    with pytest.raises(ValueError, match="order 5 is not a multiple of block_size = 3"):
        source.describe(5)
    with pytest.raises(ValueError, match="order 13 is outside 1..12"):
        source.describe(13)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"n": 10, "min_eig": 0.0}, "min_eig = 0.0"),
        ({"n": 10, "min_eig": -1.0}, "min_eig = -1.0"),
        ({"n": 10, "max_eig": 1.0, "min_eig": 2.0}, "min_eig = 2.0 is larger"),
        ({"n": 10, "spectrum": "power", "max_eig": -2.0}, "max_eig = -2.0"),
        ({"n": 10, "kind": "kms", "rho": 1.0}, "rho = 1.0"),
        ({"n": 10, "kind": "kms", "rho": -1.5}, "rho = -1.5"),
        ({"n": 10, "kind": "identity", "scale": 0.0}, "scale = 0.0"),
        ({"n": 0}, "'n' = 0"),
        ({"n": 10, "block_size": 3}, "n = 10 is not a multiple of block_size = 3"),
        ({"n": 10, "kind": "cholesky"}, "'cholesky'"),
    ],
)
def test_bad_parameters_name_value(params, fragment):
    with pytest.raises(ParameterError, match=fragment):
        SyntheticSource(**params)


def test_power_spectrum_ignores_min_eig():
    source = SyntheticSource(n=4, spectrum="power", min_eig=-1.0, power=0.0)
    np.testing.assert_array_equal(source.eigenvalues(), np.ones(4))


def test_formation_flops():
    assert SyntheticSource(kind="identity", n=8).formation_flops(8) == 0.0
    assert SyntheticSource(kind="kms", n=8).formation_flops(4) == 4.0
    flops = SyntheticSource(n=30).formation_flops(10)
    assert flops == pytest.approx(8 * 30**3 / 3 + 30 * 10 + 30 * 10 * 11, rel=1e-15)
