"""Matplotlib figures for reports (optional: matplotlib comes with the `raytrace` extra)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend; ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, axes, path: str | Path, legend_fontsize: float | None = None) -> Path:
    """Grid and legend on every axis, tight layout, write PNG (parents created), close the figure."""
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_fontsize)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
