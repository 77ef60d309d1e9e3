"""Tests of the run figures: FLODANCE extrapolation, error against cost, SLQ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ldbench import cli
from ldbench._figures import plot_extrapolation, write_figures
from ldbench._runner import read_records

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SUITE = """
[suite]
name = "figures"
timeout = "2m"
reference = { name = "dense", method = "cholesky" }

[[matrix]]
id = "kms"
source = "synthetic"
kind = "kms"
n = 120
rho = 0.6
block_size = 2

[[matrix]]
id = "matern"
source = "matern"
n = 60
outputs = 3
length_scale = 0.3

[[solver]]
name = "dense"
method = "cholesky"

[[solver]]
name = "flodance"
fraction = 0.25

[[solver]]
name = "slq"
lanczos_degree = [5, 10]
samples = 5
"""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    import ldbench

    folder = tmp_path_factory.mktemp("figures")
    suite = folder / "figures.toml"
    suite.write_text(SUITE)
    ldbench.run(suite, run_dir=folder / "run", store=folder / "store")
    return folder / "run"


def test_run_writes_figures(run_dir):
    records = read_records(run_dir)
    assert {r["status"] for r in records} == {"ok"}
    figures = run_dir / "figures"
    expected = {"error-vs-cost.png", "slq-budget.png"}
    expected |= {f"flodance-{r['matrix_id']}-{r['case_id']}.png" for r in records
                 if r["method"] == "flodance"}
    assert {p.name for p in figures.iterdir()} == expected
    for path in figures.iterdir():
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC)
        assert len(data) > 10_000


def test_plot_command_redraws(run_dir, capsys):
    for path in (run_dir / "figures").iterdir():
        path.unlink()
    assert cli.main(["plot", str(run_dir)]) == 0
    printed = capsys.readouterr().out.split()
    assert len(printed) == 4
    assert all(Path(p).exists() for p in printed)


def test_extrapolation_figure_contents(run_dir):
    record = next(r for r in read_records(run_dir)
                  if r["method"] == "flodance" and r["matrix_id"] == "matern")
    figure = plot_extrapolation(record)
    axis, error_axis = figure.axes
    assert axis.get_xlabel() == "samples k"
    assert "per sample" in axis.get_ylabel()
    assert "relative error" in error_axis.get_ylabel()
    assert error_axis.get_yscale() == "log"
    # The shaded fitting window spans [n0, n_s] in data coordinates.
    n0, n_s = record["details"]["window"]
    spans = [p for p in axis.patches if p.get_alpha() is not None]
    assert len(spans) == 1
    assert spans[0].get_x() == pytest.approx(n0)
    assert spans[0].get_x() + spans[0].get_width() == pytest.approx(n_s)
    labels = figure.legends[0].get_texts()
    text = [t.get_text() for t in labels]
    assert "extrapolation" in text
    assert any(t.startswith("reference") for t in text)
    assert any("95% interval" in t for t in text)


def test_no_figures_without_results(tmp_path):
    failed = {"case_id": "x", "status": "error", "method": "flodance"}
    assert write_figures(tmp_path, [failed]) == []
    assert not (tmp_path / "figures").exists()


def test_plot_command_rejects_empty_run(tmp_path, capsys):
    (tmp_path / "results.jsonl").write_text("")
    assert cli.main(["plot", str(tmp_path)]) == 2
    assert "no results" in capsys.readouterr().err


def test_plotting_failure_keeps_run(run_dir, tmp_path, monkeypatch, caplog):
    from ldbench import _api_run, _figures

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(_figures, "write_figures", broken)
    records = [json.loads(line) for line in
               (run_dir / "results.jsonl").read_text().splitlines()]
    _api_run._write_figures(tmp_path, records)
    assert "no canvas" in caplog.text
    assert "ldbench plot" in caplog.text
