"""PNG charts for batch results (matplotlib, optional extra ``plot``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dcpue.errors import missing_extra
from dcpue.results import Scope


def pue_chart(windows: pd.DataFrame, path: str | Path, target: float = 1.2) -> Path:
    """Draw PUE over time for every site (and the fleet) with the target line; returns ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise missing_extra("matplotlib", "plot") from exc
    path = Path(path)
    fig, ax = plt.subplots(figsize=(11, 5.5), dpi=110)
    shown = windows[windows["scope"].isin([Scope.SITE.value, Scope.FLEET.value])]
    for (scope, ident), rows in shown.groupby(["scope", "id"], sort=True):
        when = pd.to_datetime(rows["start_ms"], unit="ms", utc=True)
        style = {"linewidth": 2.6, "color": "black"} if scope == Scope.FLEET.value else {"linewidth": 1.2}
        ax.plot(when, rows["pue"], label=f"{ident}", marker="." if len(rows) < 40 else None, **style)
    ax.axhline(target, color="crimson", linestyle="--", linewidth=1.5, label=f"target {target:g}")
    ax.set_ylabel("PUE (total facility energy ÷ IT energy)")
    ax.set_xlabel("window start (UTC)")
    ax.set_title("PUE per window; gaps are windows without a valid figure")
    ax.grid(alpha=0.3)
    ax.legend(ncol=4, fontsize=8, loc="upper right")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
