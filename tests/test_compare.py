"""``ldbench compare``: matching, Mann-Whitney verdicts and --fail-on limits."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from faulty_plugin import EXTRA_DELAY_ENV, install, run_cli
from ldbench._compare import (
    CompareError,
    Threshold,
    compare_runs,
    mann_whitney,
    parse_threshold,
)


def record(
    case_id: str,
    rep: int,
    wall: float,
    error: float = 0.0,
    status: str = "ok",
    settings: str = "LU",
) -> dict:
    return {
        "case_id": case_id,
        "matrix_id": "kms",
        "method": "dense",
        "settings": settings,
        "repetition": rep,
        "status": status,
        "wall_seconds": wall,
        "solve_seconds": wall,
        "rel_error": error,
    }


def test_parse_threshold():
    assert parse_threshold("wall_time:10%") == Threshold("wall_time", 0.1, True)
    assert parse_threshold("rel_error:0.001") == Threshold("rel_error", 0.001, False)
    assert parse_threshold("status") == Threshold("status")
    with pytest.raises(CompareError, match="unknown metric 'wall'"):
        parse_threshold("wall:10%")
    with pytest.raises(CompareError, match="has no limit"):
        parse_threshold("wall_time")


def test_mann_whitney_exact():
    # Fully separated samples of 5 and 5: two-sided exact p = 2 / C(10, 5).
    assert mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    assert mann_whitney([1, 2, 3], [6, 7, 8]) is None
    assert mann_whitney([1.0] * 4, [1.0] * 4) == 1.0


def test_compare_matches_by_id_then_configuration():
    a = [record(f"a{r}", r, 1.0 + 0.01 * r) for r in range(5)]
    # Different ids (another matrix parameter, say) but the same configuration.
    b = [record(f"b{r}", r, 1.5 + 0.01 * r) for r in range(5)]
    b.append(record("b-extra", 0, 1.0, settings="LDL"))
    comparison = compare_runs(a, b, [parse_threshold("wall_time:10%")])
    assert len(comparison.groups) == 1
    assert [r["case_id"] for r in comparison.only_b] == ["b-extra"]
    wall = comparison.groups[0].metrics[0]
    assert wall.metric == "wall_time"
    assert wall.a_median == pytest.approx(1.02)
    assert wall.b_median == pytest.approx(1.52)
    assert wall.change == pytest.approx(0.5 / 1.02)
    assert wall.p_value == pytest.approx(2 / 252)
    assert wall.verdict == "worse"
    assert len(comparison.regressions) == 1
    assert (
        "wall_time 1.02 -> 1.52 (+49.0%, limit 10%, p = 0.00794)"
        in comparison.regressions[0]
    )


def test_threshold_needs_significance():
    # Medians differ by 20 %, but the samples overlap: p is far above 0.05.
    a = [record(f"c{r}", r, w) for r, w in enumerate([1.0, 1.2, 1.4, 1.6, 1.8])]
    b = [record(f"c{r}", r, w) for r, w in enumerate([1.1, 1.3, 1.68, 1.9, 2.0])]
    comparison = compare_runs(a, b, [parse_threshold("wall_time:10%")])
    wall = comparison.groups[0].metrics[0]
    assert wall.change == pytest.approx(0.2)
    assert wall.p_value > 0.3
    assert wall.verdict == "same"
    assert comparison.regressions == []


def test_status_and_absolute_error_limits():
    a = [record("d0", 0, 1.0, error=0.010), record("d1", 1, 1.0, error=0.010)]
    b = [record("d0", 0, 1.0, error=0.013), record("d1", 1, 1.0, status="timeout")]
    comparison = compare_runs(
        a, b, [parse_threshold("status"), parse_threshold("rel_error:0.002")]
    )
    regressions = comparison.regressions
    assert len(regressions) == 2
    assert "1 cases ok in A failed in B" in regressions[0]
    assert "rel_error 0.01 -> 0.013" in regressions[1]
    assert "no test, too few samples" in regressions[1]


SUITE = """
[suite]
name = "timing"
repetitions = 5

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = 20

[[solver]]
name = "sleeper"
seconds = 0.1
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    plugin_path = install(
        tmp_path_factory.mktemp("dist"), tmp_path_factory.mktemp("site")
    )
    tmp_path = tmp_path_factory.mktemp("runs")
    suite = tmp_path / "timing.toml"
    suite.write_text(textwrap.dedent(SUITE))
    folders = {}
    for name, delay in (("base", "0"), ("same", "0"), ("slow", "0.3")):
        folders[name] = tmp_path / name
        out = run_cli(
            [
                "run",
                str(suite),
                "--out",
                str(folders[name]),
                "--store",
                str(tmp_path / "store"),
            ],
            plugin_path,
            tmp_path,
            **{EXTRA_DELAY_ENV: delay},
        )
        assert out.returncode == 0, out.stderr
    return plugin_path, folders


def test_slowed_solver_is_a_regression(runs, tmp_path):
    plugin_path, folders = runs
    out = run_cli(
        [
            "compare",
            str(folders["base"]),
            str(folders["slow"]),
            "--fail-on",
            "wall_time:10%",
            "--fail-on",
            "status",
        ],
        plugin_path,
        tmp_path,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "REGRESSION" in out.stdout
    assert "kms / sleeper (seconds=0.1): wall_time" in out.stdout
    assert "p = 0.00794" in out.stdout


def test_same_code_is_not_flagged(runs, tmp_path):
    plugin_path, folders = runs
    out = run_cli(
        [
            "compare",
            str(folders["base"]),
            str(folders["same"]),
            "--fail-on",
            "wall_time:10%",
            "--fail-on",
            "solve_time:10%",
        ],
        plugin_path,
        tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "REGRESSION" not in out.stdout
    assert "lower is better" in out.stdout


def test_rounding_level_changes_are_same():
    from ldbench._compare import compare_runs

    def record(rep: int, rel_error: float, memory: float) -> dict:
        return {"case_id": f"c{rep}", "matrix_id": "m", "method": "dense",
                "settings": "LU", "repetition": rep, "status": "ok",
                "rel_error": rel_error, "peak_rss_mb": memory, "wall_seconds": 1.0,
                "solve_seconds": 1.0, "cpu_seconds": 1.0}

    a = [record(r, 1.7e-16, 100.0 + r * 0.01) for r in range(5)]
    b = [record(r, 0.0, 99.9 + r * 0.01) for r in range(5)]
    comparison = compare_runs(a, b)
    verdicts = {m.metric: m.verdict for group in comparison.groups for m in group.metrics}
    assert verdicts["rel_error"] == "same"
    assert verdicts["peak_memory"] == "same"
