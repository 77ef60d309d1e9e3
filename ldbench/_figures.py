"""Figures of a run, written as PNG files into ``RUN/figures``.

- ``flodance-<matrix>-<case>.png``: for each FLODANCE case, the log-determinant
  per sample ``l_k / k`` of the leading blocks against the sample count k.
  It shades the fitting window and draws the fitted law, its extrapolation
  to n, the estimate with its interval and the reference value at n. A
  second axis shows the relative error of the law.
- ``error-vs-cost.png``: relative error against estimated cost for every
  successful case with a reference, log-log, one marker per method.
- ``slq-budget.png``: SLQ's relative error and its own error estimate against
  the Lanczos budget ``l * s`` (degree times samples).

matplotlib is imported when a figure is drawn, through the object-oriented
API with the Agg canvas, so no global backend or pyplot state changes.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["write_figures"]

#: Relative errors of exact methods (0) are drawn at this floor on log axes.
ERROR_FLOOR = 1e-16

_MARKERS = "osD^v<>ph*"


def write_figures(run_dir: Path | str, records: list[dict[str, Any]]) -> list[Path]:
    """Draw every figure the records support into ``run_dir/figures``.

    Returns
    -------
    list of pathlib.Path
        The PNG files written; empty when no record has what a figure needs.
    """
    folder = Path(run_dir) / "figures"
    done = [r for r in records if r.get("status") == "ok"]
    paths: list[Path] = []
    for record in done:
        if record.get("method") == "flodance" and _has_curve(record):
            name = _slug(f"flodance-{record.get('matrix_id', '')}-{record['case_id']}")
            paths.append(_save(plot_extrapolation(record), folder / f"{name}.png"))
    with_error = [r for r in done if _finite(r.get("rel_error"))]
    if with_error:
        paths.append(_save(plot_error_vs_cost(with_error), folder / "error-vs-cost.png"))
    slq = [r for r in with_error if r.get("method") == "slq"]
    if slq:
        paths.append(_save(plot_slq_budget(slq), folder / "slq-budget.png"))
    for path in paths:
        logger.info("wrote %s", path)
    return paths


def plot_extrapolation(record: dict[str, Any]) -> Any:
    """Return the FLODANCE fit and extrapolation figure of one record."""
    details = record["details"]
    curve = details["curve"]
    n = int(details["n"])
    n0, n_s = details["window"]
    figure, axis = _figure()
    ks = [k for k, v in zip(curve["k"], curve["logdet"]) if v is not None]
    values = [v / k for k, v in zip(curve["k"], curve["logdet"]) if v is not None]
    axis.plot(ks, values, ".", markersize=3, color="black",
              label="$\\ell_k/k$ (leading blocks)")
    axis.axvspan(n0, n_s, color="tab:blue", alpha=0.12,
                 label=f"fitting window [{n0}, {n_s}]")

    window_ks = [k for k in curve["k"] if k >= n0]
    fitted = [v / k for k, v in zip(curve["k"], curve["fit"]) if k >= n0]
    axis.plot(window_ks, fitted, "-", color="tab:blue",
              label=f"fitted law (q={details['q_used']})")
    beyond = curve["extrapolation"]
    axis.plot(beyond["k"], [v / k for k, v in zip(beyond["k"], beyond["logdet"])], "--",
              color="tab:blue", label="extrapolation")

    estimate = record["logabsdet"]
    interval = record.get("interval")
    if interval:
        level = details.get("level", 0.95)
        low, high = (v / n for v in interval)
        axis.errorbar([n], [estimate / n], yerr=[[estimate / n - low], [high - estimate / n]],
                      fmt="o", color="tab:blue", capsize=4,
                      label=f"estimate, {level * 100:g}% interval")
    reference = record.get("reference_logdet")
    if _finite(reference):
        axis.plot([n], [reference / n], "*", markersize=12, color="tab:red",
                  label=f"reference ({record.get('reference_method') or 'exact'})")
    axis.set_xscale("log")
    axis.set_xlabel("samples k")
    axis.set_ylabel("log-determinant per sample $\\ell_k / k$")
    # A huge interval would flatten the curves, so the y range follows the
    # data and the reference, and the error bar may run off the axis.
    plotted_values = values + fitted + [estimate / n]
    if _finite(reference):
        plotted_values.append(reference / n)
    low_y, high_y = min(plotted_values), max(plotted_values)
    margin = 0.15 * (high_y - low_y) or 1.0
    axis.set_ylim(low_y - margin, high_y + margin)

    error_axis = _draw_error_axis(axis, record, n0)
    handles, labels = axis.get_legend_handles_labels()
    more_handles, more_labels = error_axis.get_legend_handles_labels()
    figure.legend(handles + more_handles, labels + more_labels, fontsize=7, ncol=3,
                  loc="outside lower center")
    axis.set_title(f"FLODANCE {record.get('settings', '')} on "
                   f"{record.get('matrix_id', '')} (n={n}, n_s={n_s})", fontsize=9)
    return figure


def _draw_error_axis(axis: Any, record: dict[str, Any], n0: int) -> Any:
    """Add the relative error of the fitted law on a second, log y axis."""
    curve = record["details"]["curve"]
    n = int(record["details"]["n"])
    error_axis = axis.twinx()
    # The law passes through the anchor l_(n_s), where its error is 0, so
    # relative errors below 1e-12 (the anchor, rounding) are left out of the
    # log axis.
    pairs = [(k, abs(f - v) / abs(v)) for k, f, v in zip(curve["k"], curve["fit"],
                                                          curve["logdet"])
             if v is not None and v != 0 and k >= n0 and abs(f - v) > 1e-12 * abs(v)]
    error_axis.plot([k for k, _ in pairs], [e for _, e in pairs], ":", color="tab:gray",
                    label="relative error of the law")
    if _finite(record.get("rel_error")):
        error_axis.plot([n], [max(record["rel_error"], ERROR_FLOOR)], "x", color="tab:gray",
                        markersize=9, label=f"relative error at n={n}")
    error_axis.set_yscale("log")
    error_axis.set_ylabel("relative error of $\\ell_k$", color="tab:gray")
    return error_axis


def plot_error_vs_cost(records: list[dict[str, Any]]) -> Any:
    """Return relative error against estimated cost, one marker per method."""
    figure, axis = _figure()
    methods = sorted({r["method"] for r in records})
    several_matrices = len({r.get("matrix_id") for r in records}) > 1
    for index, method in enumerate(methods):
        rows = [r for r in records if r["method"] == method]
        costs = [max(float(r.get("cost_usd") or 0.0), 1e-12) for r in rows]
        errors = [max(float(r["rel_error"]), ERROR_FLOOR) for r in rows]
        axis.plot(costs, errors, _MARKERS[index % len(_MARKERS)], label=method, markersize=7)
        for row, x, y in zip(rows, costs, errors):
            label = row.get("settings", "")
            if several_matrices:
                label += f" [{row.get('matrix_id', '')}]"
            axis.annotate(label, (x, y), fontsize=6, xytext=(3, 3),
                          textcoords="offset points")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("estimated cost (USD): formation + solve, at the suite's prices")
    axis.set_ylabel(f"relative error of log|det| (exact methods at {ERROR_FLOOR:g})")
    axis.legend(fontsize=8)
    axis.set_title("Relative error against estimated cost", fontsize=9)
    return figure


def plot_slq_budget(records: list[dict[str, Any]]) -> Any:
    """Return SLQ's true and self-estimated relative errors against ``l * s``."""
    figure, axis = _figure()
    matrices = sorted({r.get("matrix_id", "") for r in records})
    for index, matrix in enumerate(matrices):
        rows = [r for r in records if r.get("matrix_id", "") == matrix]
        budgets = [_slq_budget(r) for r in rows]
        marker = _MARKERS[index % len(_MARKERS)]
        axis.plot(budgets, [max(float(r["rel_error"]), ERROR_FLOOR) for r in rows], marker,
                  color=f"C{index}", label=f"{matrix}: true error")
        estimated = [(b, _own_error(r)) for b, r in zip(budgets, rows) if _own_error(r)]
        if estimated:
            axis.plot([b for b, _ in estimated], [e for _, e in estimated], marker,
                      color=f"C{index}", fillstyle="none", markersize=10,
                      label=f"{matrix}: SLQ's own error estimate")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("Lanczos budget l x s (degree x samples)")
    axis.set_ylabel("relative error of log|det|")
    axis.legend(fontsize=7)
    axis.set_title("SLQ error against its budget", fontsize=9)
    return figure


def _slq_budget(record: dict[str, Any]) -> float:
    details = record.get("details") or {}
    return float(details.get("lanczos_degree", 0)) * float(details.get("samples", 0))


def _own_error(record: dict[str, Any]) -> float | None:
    """Return the interval half-width over |estimate|, the solver's own error."""
    interval = record.get("interval")
    value = record.get("logabsdet")
    if not interval or not _finite(value) or value == 0:
        return None
    return max((float(interval[1]) - float(interval[0])) / 2.0 / abs(value), ERROR_FLOOR)


def _has_curve(record: dict[str, Any]) -> bool:
    details = record.get("details") or {}
    curve = details.get("curve") or {}
    return not details.get("exact", True) and "extrapolation" in curve


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")


def _figure() -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7.5, 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path
