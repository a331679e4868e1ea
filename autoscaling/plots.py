"""PNG plots of simulator runs: load, replicas and TTFT p95 over time, policies overlaid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server

import matplotlib.pyplot as plt  # noqa: E402


def _time_axis(t_s: list[float]) -> tuple[list[float], str]:
    """Hours for long runs, minutes for medium ones, seconds for short ones."""
    span = t_s[-1] if t_s else 0
    if span > 4 * 3600:
        return [t / 3600 for t in t_s], "hours"
    if span > 600:
        return [t / 60 for t in t_s], "minutes"
    return list(t_s), "seconds"


def plot_runs(results: list, title: str, ttft_target_s: float, path: str | Path) -> Path:
    """One figure of three panels for ``results`` (sim_runs.RunResult); returns the path."""
    fig, (load, reps, ttft) = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    x, unit = _time_axis(results[0].timeline["t_s"])
    load.plot(x, results[0].timeline["rps"], color="gray")
    load.set_ylabel("load (requests/s)")
    for i, r in enumerate(results):
        color = f"C{i}"
        xs, _ = _time_axis(r.timeline["t_s"])
        reps.plot(xs, r.timeline["running"], color=color, label=f"{r.name}: running")
        reps.plot(
            xs,
            r.timeline["target"],
            color=color,
            linestyle="--",
            alpha=0.6,
            label=f"{r.name}: target",
        )
        ttft.plot(xs, r.timeline["ttft_p95_s"], color=color, label=r.name)
    reps.set_ylabel("replicas")
    reps.legend(fontsize=8, loc="upper left")
    ttft.axhline(ttft_target_s, color="red", linestyle=":", label="TTFT target")
    ttft.set_ylabel("TTFT p95 (s)")
    ttft.set_yscale("log")
    ttft.legend(fontsize=8, loc="upper left")
    ttft.set_xlabel(unit)
    load.set_title(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
