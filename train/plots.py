"""The evaluation's plots: gain over random per class, and the acquisition curves (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def write_plots(out: Path, rows: list[dict[str, Any]], summary: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = [p for p in summary["policies"] if p != "random"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for policy in policies:
        gains = sorted(summary["policies"][policy]["gain_over_random"].values(), reverse=True)
        ax.plot(range(1, len(gains) + 1), gains, marker=".", label=policy)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("classes, sorted by gain")
    ax.set_ylabel("target pixels over random")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gain_over_random.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    for policy in summary["policies"]:
        curves = [r["curve"] for r in rows if r["policy"] == policy]
        if curves:
            length = min(len(c) for c in curves)
            ax.plot(np.mean([c[:length] for c in curves], axis=0), label=policy)
    ax.set_xlabel("patches picked")
    ax.set_ylabel("target pixels acquired (mean over classes and seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "acquisition.png", dpi=100)
    plt.close(fig)
