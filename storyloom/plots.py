"""Every figure storyloom draws, with matplotlib, to PNG files (no display needed)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path)
    _plt().close(fig)


def compare_curves(results: list[dict], path: Path) -> None:
    """Validation bpc against wall-clock minutes, one line per compared run."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in results:
        xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
        ax.plot([x / 60 for x in xs], ys, marker="o", ms=3, label=f"{r['spec']} ({r['val_bpc']:.3f})")
    ax.set_xlabel("wall-clock minutes of training")
    ax.set_ylabel("validation bits per character")
    ax.set_title("storyloom compare: the same validation text, every level in bpc")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def run_curves(runs: list[tuple[str, list[dict]]], path: Path) -> None:
    """Train and validation bpc of each run against steps (left) and wall-clock minutes (right)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110, sharey=True)
    for (name, rows), color in zip(runs, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 10):
        train = [r for r in rows if "train_bpc" in r]
        val = [r for r in rows if "val_bpc" in r]
        for ax, x in zip(axes, ("step", "elapsed_s")):
            scale = 60 if x == "elapsed_s" else 1
            ax.plot([r[x] / scale for r in train], [r["train_bpc"] for r in train], color=color, alpha=0.45, lw=1,
                    label=f"{name} train")
            ax.plot([r[x] / scale for r in val], [r["val_bpc"] for r in val], color=color, marker="o", ms=3,
                    label=f"{name} val")
    axes[0].set_xlabel("optimizer steps")
    axes[1].set_xlabel("wall-clock minutes")
    axes[0].set_ylabel("bits per character")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    _save(fig, path)


def accuracy_by_distance(results: dict[str, list[tuple[int, float]]], chance: float, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for cell, pts in results.items():
        ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", label=cell)
    ax.axhline(chance, color="grey", ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("K: steps between the symbol and the question")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("long-range recall at equal training budgets")
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def gradient_norms(norms: dict[str, list[float]], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for cell, ys in norms.items():
        ax.plot(range(1, len(ys) + 1), ys, label=cell)
    ax.set_yscale("log")
    ax.set_xlabel("T - t: steps back from the loss")
    ax.set_ylabel("mean ||dL_T / dh_t||")
    ax.set_title("vanishing gradients on real text")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, path)


def training_runs(curves: dict[str, list[float]], ylabel: str, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for name, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, label=name, lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, path)
