"""Pictures of results, logged to MLflow beside the numbers: training curves, crop-protocol comparison."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on workers and CI
    import matplotlib.pyplot as plt

    return plt


def training_curves(history: dict[str, list[tuple[int, float]]], out: Path) -> Path:
    """One panel per metric present: loss, learning rate, gradient norm, validation accuracy."""
    plt = _pyplot()
    panels = [("loss", ["loss", "train_loss"]), ("learning rate", ["lr"]), ("gradient norm", ["grad_norm"]), ("validation (EMA)", ["val_top1", "val_top5"])]
    panels = [(title, [k for k in keys if history.get(k)]) for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels):
        for key in keys:
            steps, values = zip(*sorted(history[key]))
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def crop_comparison(metrics: dict[str, float], out: Path, *, reference: dict[str, float] | None = None) -> Path:
    """Top-1 and top-5 accuracy per crop protocol, as grouped bars (paper table 4's comparison)."""
    plt = _pyplot()
    protocols = sorted({k.split("_")[1].removesuffix("crop") for k in metrics if k.startswith("top")}, key=int)
    fig, ax = plt.subplots(figsize=(1.6 * len(protocols) + 2.5, 3.6))
    width = 0.38
    for i, k in enumerate((1, 5)):
        values = [metrics.get(f"top{k}_{p}crop", float("nan")) for p in protocols]
        bars = ax.bar([x + (i - 0.5) * width for x in range(len(protocols))], values, width, label=f"top-{k}")
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(protocols)), [f"{p} crop{'s' if p != '1' else ''}" for p in protocols])
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title("multi-crop evaluation")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
