"""Compare two runs: matched configurations, changes, significance, thresholds.

Records of run B are matched to run A by case id, and records whose ids have
no partner are matched by (matrix id, method, settings, repetition). Matched
records are then grouped by configuration, so each metric is compared over
the repetitions of both runs with a Mann-Whitney U test.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

# Metric name -> (record field, unit). For every metric lower is better.
METRICS = {
    "wall_time": ("wall_seconds", "s"),
    "solve_time": ("solve_seconds", "s"),
    "cpu_time": ("cpu_seconds", "s"),
    "rel_error": ("rel_error", ""),
    "peak_memory": ("peak_rss_mb", "MiB"),
}
DIRECTION = {name: "lower" for name in METRICS}
# Changes below these are reported as "same": rounding of log-dets near machine
# precision, and allocator noise in peak memory.
NEGLIGIBLE_ABSOLUTE = {"rel_error": 1e-12}
NEGLIGIBLE_RELATIVE = {"peak_memory": 0.01}
# Minimum number of samples per run for the two-sided test to reach p < 0.05.
# With 4 and 4 the smallest exact p-value is 2/70 = 0.029, with 3 and 3 it is 0.1.
MIN_TEST_SAMPLES = 4
STATUS = "status"


class CompareError(ValueError):
    """Invalid threshold or runs that cannot be compared."""


@dataclass(frozen=True)
class Threshold:
    """A ``--fail-on`` rule: fail when ``metric`` grows by more than ``limit``.

    ``relative`` limits are fractions of run A's median (``10%`` is 0.1),
    absolute ones are in the metric's unit. The metric ``status`` has no
    limit and fails when a configuration that succeeded in A fails in B.
    """

    metric: str
    limit: float = 0.0
    relative: bool = True

    def exceeded(self, a: float, b: float) -> bool:
        """Return True when the change from median ``a`` to ``b`` passes the limit."""
        change = b - a
        if self.relative:
            if a == 0:
                return change > 0
            return change / abs(a) > self.limit
        return change > self.limit


_THRESHOLD = re.compile(r"^(?P<metric>[a-z_]+)(?::(?P<value>[0-9.eE+-]+)(?P<pct>%)?)?$")


def parse_threshold(text: str) -> Threshold:
    """Parse ``wall_time:10%`` (relative), ``rel_error:0.01`` (absolute) or
    ``status``."""
    match = _THRESHOLD.match(text.strip())
    if not match:
        raise CompareError(
            f"invalid threshold {text!r}; write METRIC:LIMIT such as "
            "'wall_time:10%' or 'rel_error:0.001', or 'status'"
        )
    metric = match["metric"]
    if metric == STATUS and match["value"] is None:
        return Threshold(STATUS)
    if metric not in METRICS:
        raise CompareError(
            f"unknown metric {metric!r} in threshold {text!r}; valid: "
            f"{', '.join([*METRICS, STATUS])}"
        )
    if match["value"] is None:
        raise CompareError(
            f"threshold {text!r} has no limit; write e.g. '{metric}:10%'"
        )
    try:
        value = float(match["value"])
    except ValueError as exc:
        raise CompareError(f"invalid limit in threshold {text!r}: {exc}") from exc
    if match["pct"]:
        return Threshold(metric, value / 100.0, relative=True)
    return Threshold(metric, value, relative=False)


@dataclass
class MetricComparison:
    """One metric of one configuration in both runs."""

    metric: str
    a: list[float]
    b: list[float]
    a_median: float
    b_median: float
    p_value: float | None
    verdict: str
    regressions: list[str] = field(default_factory=list)

    @property
    def change(self) -> float:
        """Relative change of the median from A to B (``inf`` from a zero median)."""
        if self.a_median == 0:
            return 0.0 if self.b_median == 0 else math.inf
        return (self.b_median - self.a_median) / abs(self.a_median)


@dataclass
class GroupComparison:
    """One configuration matched in both runs."""

    matrix_id: str
    method: str
    settings: str
    a_status: list[str]
    b_status: list[str]
    metrics: list[MetricComparison] = field(default_factory=list)
    regressions: list[str] = field(default_factory=list)


@dataclass
class Comparison:
    """Result of :func:`compare_runs`."""

    groups: list[GroupComparison]
    only_a: list[dict[str, Any]]
    only_b: list[dict[str, Any]]
    alpha: float

    @property
    def regressions(self) -> list[str]:
        """Every threshold breach, one line each."""
        return [line for g in self.groups for line in g.regressions]


def _config_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return (
        str(record.get("matrix_id", "")),
        str(record.get("method", "")),
        str(record.get("settings", "")),
    )


def match_records(
    a: list[dict[str, Any]], b: list[dict[str, Any]]
) -> tuple[
    list[tuple[dict[str, Any], dict[str, Any]]],
    list[dict[str, Any]],
    list[dict[str, Any]],
]:
    """Pair records by case id, then the rest by configuration and repetition.

    Returns the pairs and the unmatched records of A and of B.
    """
    b_by_id = {r["case_id"]: r for r in b}
    pairs = []
    rest_a = []
    for record in a:
        partner = b_by_id.pop(record["case_id"], None)
        if partner is None:
            rest_a.append(record)
        else:
            pairs.append((record, partner))
    b_by_config = {
        (*_config_key(r), r.get("repetition", 0)): r for r in b_by_id.values()
    }
    only_a = []
    for record in rest_a:
        partner = b_by_config.pop(
            (*_config_key(record), record.get("repetition", 0)), None
        )
        if partner is None:
            only_a.append(record)
        else:
            pairs.append((record, partner))
    return pairs, only_a, list(b_by_config.values())


def mann_whitney(a: list[float], b: list[float]) -> float | None:
    """Two-sided Mann-Whitney U p-value of ``a`` against ``b``.

    Returns None when a run has fewer than :data:`MIN_TEST_SAMPLES` values,
    and 1.0 when every value of both runs is the same.
    """
    from scipy.stats import mannwhitneyu

    if min(len(a), len(b)) < MIN_TEST_SAMPLES:
        return None
    if len(set(a) | set(b)) == 1:
        return 1.0
    return float(mannwhitneyu(a, b, alternative="two-sided").pvalue)


def _compare_metric(
    metric: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]], alpha: float
) -> MetricComparison | None:
    name = METRICS[metric][0]
    a = [
        float(x[name])
        for x, _ in pairs
        if x.get("status") == "ok" and x.get(name) is not None
    ]
    b = [
        float(y[name])
        for _, y in pairs
        if y.get("status") == "ok" and y.get(name) is not None
    ]
    if not a or not b:
        return None
    a_median, b_median = float(np.median(a)), float(np.median(b))
    p_value = mann_whitney(a, b)
    change = abs(b_median - a_median)
    negligible = change <= max(NEGLIGIBLE_ABSOLUTE.get(metric, 0.0),
                               NEGLIGIBLE_RELATIVE.get(metric, 0.0) * abs(a_median))
    if negligible or (p_value is not None and p_value >= alpha):
        verdict = "same"
    elif b_median > a_median:
        verdict = "worse"
    else:
        verdict = "better"
    return MetricComparison(metric, a, b, a_median, b_median, p_value, verdict)


def compare_runs(
    a: list[dict[str, Any]],
    b: list[dict[str, Any]],
    thresholds: list[Threshold] | None = None,
    alpha: float = 0.05,
) -> Comparison:
    """Compare the records of run A (baseline) with run B.

    A metric of a configuration is a regression under a threshold when B's
    median exceeds A's by more than the limit and, where the test applies
    (at least :data:`MIN_TEST_SAMPLES` values per run), the Mann-Whitney
    p-value is below ``alpha``. With fewer values the limit alone decides.
    """
    thresholds = thresholds or []
    pairs, only_a, only_b = match_records(a, b)
    grouped: dict[
        tuple[str, str, str], list[tuple[dict[str, Any], dict[str, Any]]]
    ] = {}
    for pair in pairs:
        grouped.setdefault(_config_key(pair[0]), []).append(pair)
    groups = []
    for (matrix_id, method, settings), members in grouped.items():
        group = GroupComparison(
            matrix_id,
            method,
            settings,
            [x.get("status", "") for x, _ in members],
            [y.get("status", "") for _, y in members],
        )
        for metric in METRICS:
            result = _compare_metric(metric, members, alpha)
            if result is not None:
                group.metrics.append(result)
        _apply_thresholds(group, thresholds, alpha)
        groups.append(group)
    return Comparison(groups, only_a, only_b, alpha)


def _apply_thresholds(
    group: GroupComparison, thresholds: list[Threshold], alpha: float
) -> None:
    label = f"{group.matrix_id} / {group.method} ({group.settings})"
    for threshold in thresholds:
        if threshold.metric == STATUS:
            newly_failed = sum(
                1
                for x, y in zip(group.a_status, group.b_status)
                if x == "ok" and y != "ok"
            )
            if newly_failed:
                group.regressions.append(
                    f"{label}: {newly_failed} cases ok in A failed in B"
                )
            continue
        for result in group.metrics:
            if result.metric != threshold.metric:
                continue
            significant = result.p_value is None or result.p_value < alpha
            if threshold.exceeded(result.a_median, result.b_median) and significant:
                limit = (
                    f"{threshold.limit:.0%}"
                    if threshold.relative
                    else f"{threshold.limit:g}"
                )
                p_text = (
                    "no test, too few samples"
                    if result.p_value is None
                    else f"p = {result.p_value:.3g}"
                )
                line = (
                    f"{label}: {threshold.metric} {result.a_median:.4g} -> "
                    f"{result.b_median:.4g} ({result.change:+.1%}, limit {limit}, "
                    f"{p_text})"
                )
                result.regressions.append(line)
                group.regressions.append(line)


def render_comparison(comparison: Comparison, fmt: str = "github") -> str:
    """Render the matched configurations side by side, with unmatched cases
    and threshold breaches listed below the table."""
    from tabulate import tabulate

    rows = []
    for group in comparison.groups:
        for m in group.metrics:
            unit = METRICS[m.metric][1]
            p_text = "" if m.p_value is None else f"{m.p_value:.3g}"
            rows.append(
                [
                    group.matrix_id,
                    group.method,
                    group.settings,
                    m.metric,
                    f"{DIRECTION[m.metric]} is better",
                    f"{m.a_median:.4g} {unit}".strip(),
                    f"{m.b_median:.4g} {unit}".strip(),
                    f"{m.change:+.1%}",
                    f"{len(m.a)}/{len(m.b)}",
                    p_text,
                    "REGRESSION" if m.regressions else m.verdict,
                ]
            )
    headers = [
        "matrix",
        "method",
        "settings",
        "metric",
        "direction",
        "A median",
        "B median",
        "change",
        "n A/B",
        "p (Mann-Whitney)",
        "verdict",
    ]
    text = tabulate(rows, headers=headers, tablefmt=fmt, disable_numparse=True)
    notes = []
    for group in comparison.groups:
        changed = [
            f"{x} -> {y}" for x, y in zip(group.a_status, group.b_status) if x != y
        ]
        if changed:
            notes.append(
                f"{group.matrix_id} / {group.method} ({group.settings}): status "
                f"{', '.join(changed)}"
            )
    for side, records in (("A", comparison.only_a), ("B", comparison.only_b)):
        for r in records:
            notes.append(
                f"only in run {side}: {r.get('case_id')} {r.get('matrix_id')} "
                f"{r.get('method')} ({r.get('settings', '')}) rep "
                f"{r.get('repetition', 0)}"
            )
    if notes:
        text += "\n\n" + "\n".join(notes)
    if comparison.regressions:
        text += "\n\nRegressions beyond the --fail-on limits:\n" + "\n".join(
            f"- {line}" for line in comparison.regressions
        )
    return text
