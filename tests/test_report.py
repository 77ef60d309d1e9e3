"""Tests of the comparison table in github, plain and LaTeX formats."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from ldbench import cli
from ldbench._report import paper_table, render

PRICING = {
    "cpu_per_hour": 0.2,
    "gpu_per_hour": 2.0,
    "date": "2025-05",
    "source": "H100-class GPU at $2/h and 8-core CPU at $0.2/h",
}


def record(method: str, settings: str, **fields) -> dict:
    base = {
        "case_id": method + settings,
        "matrix_id": "digits_ntk",
        "method": method,
        "settings": settings,
        "repetition": 0,
        "status": "ok",
        "logabsdet": -1000.0,
        "tflops": 0.5,
        "rel_error": 0.012,
        "cost_usd": 0.25,
        "wall_seconds": 90.0,
        "formation_seconds": 60.0,
        "solve_seconds": 30.0,
        "interval": None,
        "details": {},
    }
    base.update(fields)
    return base


RECORDS = [
    record("dense", "Cholesky", rel_error=0.0),
    record("flodance", "n_s=500, q=0", interval=[-1030.0, -970.0],
           details={"level": 0.95}),
    record("slq", "l=100, s=104", interval=[-1002.0, -998.0], rel_error=0.55,
           details={"interval_level": 0.9}),
    record("memdet", "LDL, n_b=32", status="timeout", error="timed out after 60 s"),
]


def test_error_bar_beside_true_error():
    table = paper_table(RECORDS)
    assert list(table.columns[:6]) == ["method", "settings", "matrix", "TFLOPs",
                                       "rel. error", "error bar"]
    rows = table.set_index("method")
    assert rows.loc["flodance", "rel. error"] == "1.2%"
    assert rows.loc["flodance", "error bar"] == "±3% (95%)"
    assert rows.loc["slq", "rel. error"] == "55%"
    assert rows.loc["slq", "error bar"] == "±0.2% (90%)"
    assert rows.loc["dense", "error bar"] == ""
    assert rows.loc["memdet", "status"].startswith("timeout")


def test_github_table_is_markdown():
    text = render(RECORDS, "github", PRICING)
    table, footnote = text.split("\n\n")
    lines = table.splitlines()
    assert len(lines) == 2 + len(RECORDS)
    columns = lines[0].count("|")
    for line in lines:
        assert line.startswith("|")
        assert line.endswith("|")
        assert line.count("|") == columns
    separators = [cell.strip() for cell in lines[1].strip("|").split("|")]
    assert all(set(cell) <= {"-", ":"} and cell for cell in separators)
    assert footnote.startswith("Cost uses $0.2/h per CPU and $2.0/h per GPU")
    assert "2025-05" in footnote


def test_plain_table_has_footnote():
    text = render(RECORDS, "plain", PRICING)
    assert "|" not in text
    assert text.splitlines()[0].split()[:3] == ["method", "settings", "matrix"]
    assert text.rstrip().endswith("8-core CPU at $0.2/h).")


def test_latex_table_escapes_and_uses_booktabs():
    text = render(RECORDS, "latex", PRICING)
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert text.count(rule) == 1
    assert r"n\_s=500" in text
    assert r"1.2\%" in text
    assert r"\$0.25" in text
    assert r"$\pm$3\% (95\%)" in text
    assert r"{\footnotesize Cost uses \$0.2/h per CPU" in text
    assert text.startswith("% needs \\usepackage{booktabs}")
    assert text.rstrip().endswith(r"\end{table}")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_table_compiles(tmp_path):
    body = render(RECORDS, "latex", PRICING)
    document = ("\\documentclass{article}\n\\usepackage[T1]{fontenc}\n"
                "\\usepackage{booktabs}\n\\usepackage{graphicx}\n"
                "\\begin{document}\n" + body
                + "\n\\end{document}\n")
    (tmp_path / "table.tex").write_text(document, encoding="utf-8")
    result = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "table.tex"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert (tmp_path / "table.pdf").stat().st_size > 1000
    log = (tmp_path / "table.log").read_text(encoding="utf-8", errors="replace")
    assert "Overfull \\hbox" not in log


def test_unknown_format_rejected():
    with pytest.raises(ValueError, match="'html'"):
        render(RECORDS, "html")


def test_report_command_reads_run_pricing(tmp_path, capsys):
    lines = "".join(json.dumps(r) + "\n" for r in RECORDS)
    (tmp_path / "results.jsonl").write_text(lines)
    (tmp_path / "suite.json").write_text(json.dumps({"pricing": PRICING}))
    assert cli.main(["report", str(tmp_path), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert r"\begin{tabular}" in out
    assert "H100-class GPU" in out
    (tmp_path / "suite.json").unlink()
    assert cli.main(["report", str(tmp_path), "--format", "github"]) == 0
    captured = capsys.readouterr()
    assert "Cost uses" not in captured.out
    assert "| flodance" in captured.out
