"""The bench chart: learners per second over time, per action, with the floor."""

from __future__ import annotations

from pathlib import Path


def rates(samples: list, smooth: float = 2.0) -> tuple[list[float], list[float]]:
    """(t, learners/s) from (t, done, ...) samples, over `smooth`-second spans."""
    times, values = [], []
    start = 0
    for i, (t, done, *_rest) in enumerate(samples):
        while samples[start][0] < t - smooth:
            start += 1
        t0, done0 = samples[start][0], samples[start][1]
        if i > start and t > t0:
            times.append(t)
            values.append((done - done0) / (t - t0))
    return times, values


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5), dpi=110)
    floor_run = result["baselines"].get("floor")
    if floor_run:
        t, v = rates(floor_run["samples"])
        ax.plot(t, v, color="black", linewidth=2, label="floor (bare Dramatiq actor, 1 INSERT)")
        ax.axhline(floor_run["per_second"], color="black", linestyle=":", linewidth=1)
    for name, run in result["actions"].items():
        t, v = rates(run["samples"])
        ax.plot(t, v, linewidth=1.3, label=f"{name} ({run['per_second']:,.0f}/s end to end)")
    config = result["config"]
    ax.set_title(
        f"Learners per second, {config['learners']:,} learners, "
        f"{config['processes']}x{config['threads']} workers, {result['machine']['cpus']} CPUs"
    )
    ax.set_xlabel("seconds since submit")
    ax.set_ylabel("learners finished per second (2 s spans)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import json
    import sys

    source = Path(sys.argv[1])
    print(plot(json.loads(source.read_text()), source.with_suffix(".png")))
