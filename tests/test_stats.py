"""Repetition statistics on synthetic records, and paired seeds of a suite."""

from __future__ import annotations

import logging
import textwrap

import pytest

from ldbench._plugins import Registry
from ldbench._stats import aggregate, render_statistics, summarize
from ldbench._suite import load_suite


def record(
    method: str,
    params: dict,
    rep: int,
    wall: float,
    solve: float,
    error: float | None = 0.0,
    status: str = "ok",
) -> dict:
    return {
        "matrix_id": "kms",
        "method": method,
        "settings": str(params),
        "solver": {"name": method, "params": params},
        "repetition": rep,
        "seed": rep,
        "status": status,
        "wall_seconds": wall,
        "solve_seconds": solve,
        "rel_error": error,
        "stochastic": method == "slq",
    }


def test_summarize_exact():
    assert summarize([3.0, 1.0, 2.0, 4.0, 100.0]) == {
        "median": 3.0,
        "iqr": 2.0,
        "min": 1.0,
        "count": 5,
    }
    assert summarize([]) is None


def test_aggregate_groups_and_warnings(caplog):
    records = [
        record("dense", {"method": "lu"}, r, wall, 1.0)
        for r, wall in enumerate([10.0, 10.1, 10.2, 10.3, 10.4])
    ]
    errors = [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00]
    records += [
        record("slq", {"steps": 10}, r, 1.0 + r, 0.5 + r, e)
        for r, e in enumerate(errors)
    ]
    records.append(record("slq", {"steps": 10}, 10, 99.0, 99.0, None, status="timeout"))
    with caplog.at_level(logging.WARNING, logger="ldbench._stats"):
        rows = aggregate(records, statistics=True)
    dense, slq = rows
    assert (dense["count"], dense["failed"]) == (5, 0)
    assert dense["wall_median"] == pytest.approx(10.2)
    assert dense["wall_iqr"] == pytest.approx(0.2)
    assert dense["wall_min"] == 10.0
    assert dense["solve_iqr"] == 0.0
    assert dense["warnings"] == []

    assert (slq["count"], slq["failed"]) == (10, 1)
    assert slq["stochastic"] is True
    assert slq["seeds"] == list(range(10))
    assert slq["wall_median"] == pytest.approx(5.5)
    assert slq["wall_iqr"] == pytest.approx(4.5)
    assert slq["solve_median"] == pytest.approx(5.0)
    assert slq["rel_error_median"] == pytest.approx(0.55)
    assert slq["rel_error_p90"] == pytest.approx(0.91)
    assert len(slq["warnings"]) == 2
    assert slq["warnings"][0].startswith(
        "unstable wall time: interquartile range 4.5 s is 82% of the median 5.5 s"
    )
    assert slq["warnings"][1].startswith("unstable solve time")
    assert sum("unstable" in m for m in caplog.messages) == 2
    assert "Warnings:" in render_statistics(rows)


def test_too_few_samples_warns_only_when_asked():
    records = [record("dense", {"method": "lu"}, r, 1.0, 0.5) for r in range(3)]
    assert aggregate(records)[0]["warnings"] == []
    warnings = aggregate(records, statistics=True)[0]["warnings"]
    assert warnings == [
        "only 3 successful repetitions; set repetitions >= 5 for stable statistics"
    ]


def test_seeds_are_paired_across_configurations(tmp_path):
    path = tmp_path / "paired.toml"
    path.write_text(
        textwrap.dedent("""
        [suite]
        repetitions = 3
        seed = 7
        statistics = true

        [[matrix]]
        id = "a"
        source = "synthetic"
        kind = "kms"
        n = 10

        [[matrix]]
        id = "b"
        source = "synthetic"
        kind = "identity"
        n = 10

        [[solver]]
        name = "dense"
        method = ["lu", "ldl", "cholesky"]
    """)
    )
    suite = load_suite(path, Registry())
    cases = suite.cases()
    assert len(cases) == 18
    for case in cases:
        assert case.seed == 7 + case.repetition
    assert len({c.id for c in cases}) == 18
