"""The loss curve as a PNG, written once at the end of a run."""

from __future__ import annotations

from collections.abc import Sequence


def plot_loss(losses: Sequence[float], path: str, title: str = "") -> None:
    """Per-step loss, and its moving average when there are enough steps to smooth."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = range(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.8, alpha=0.5, label="loss")
    window = max(1, len(losses) // 50)
    if window > 1:
        smooth = [
            sum(losses[max(0, i - window + 1) : i + 1]) / (i + 1 - max(0, i - window + 1))
            for i in range(len(losses))
        ]
        ax.plot(steps, smooth, lw=1.6, label=f"mean of {window} steps")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
