"""benchmarks/latency.png: latency percentiles against load, and a CDF per load level."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, never a window
import matplotlib.pyplot as plt

from benchmarks.workers import LatencyRun


def draw_latency(
    runs: Sequence[LatencyRun],
    base: Sequence[LatencyRun],
    path: Path,
    targets: dict[float, tuple[float | None, float]],
) -> None:
    """Left: p50/p90/p99/max against the sent rate, targets as marks; right: CDFs."""
    fig, (curve, cdf) = plt.subplots(1, 2, figsize=(12, 4.8))
    rates = [run.achieved_rate for run in runs]
    for q, style in ((0.5, "o-"), (0.9, "s-"), (0.99, "^-")):
        curve.plot(rates, [run.percentile(q) for run in runs], style, label=f"p{q * 100:g}")
    curve.plot(rates, [max(run.latencies_ms, default=0) for run in runs], "x:", label="max")
    if base:
        curve.plot(
            [run.achieved_rate for run in base],
            [run.percentile(0.99) for run in base],
            "^--",
            color="grey",
            label="p99, base revision",
        )
    for run in runs:
        want = targets.get(round(run.share, 2))
        if want is None:
            continue
        for value, marker in zip(want, ("_", "v"), strict=True):
            if value is not None:
                curve.plot([run.achieved_rate], [value], marker, color="red", markersize=14)
        curve.annotate(
            f"{run.share:.0%}",
            (run.achieved_rate, run.percentile(0.5)),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
    curve.set_yscale("log")
    curve.set_xlabel("usage sent, events/s (label: share of the 1-process rate)")
    curve.set_ylabel("produce → reminder readable, ms")
    curve.set_title("Latency against load (red: targets, — p50, ▼ p99)")
    curve.grid(True, which="both", alpha=0.3)
    curve.legend()
    for run in runs:
        values = sorted(run.latencies_ms)
        if not values:
            continue
        n = len(values)
        cdf.plot(
            values,
            [(i + 1) / n for i in range(n)],
            label=f"{run.share:.0%} ({run.achieved_rate:,.0f}/s, n={n:,})",
        )
    cdf.set_xscale("log")
    cdf.set_xlabel("produce → reminder readable, ms")
    cdf.set_ylabel("share of reminders")
    cdf.set_title("CDF per load level")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
