"""The comparison's plot: held-out loss against training step."""

import json
from collections.abc import Sequence
from pathlib import Path

from fishersft.contract.comparison import ComparisonRun
from fishersft.methods import YARDSTICK, method_spec


def plot_curves(rows: Sequence[ComparisonRun], out: Path, title: str) -> Path:
    """Held-out loss against training step, one line per run, a panel per budget kind (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in ("examples", "tokens") if any(r.budget_kind == k for r in rows)]
    figure, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.2), squeeze=False, sharey=True)
    for axis, kind in zip(axes[0], kinds, strict=True):
        random_runs = [r for r in rows if r.method == YARDSTICK]
        for row in [r for r in rows if r.budget_kind == kind] + (random_runs if kind == "tokens" else []):
            steps, losses = zip(*row.curve, strict=True)
            label = f"{row.label}: {row.examples} ex, {row.loss_tokens:,} tok"
            style = {"linewidth": 2.2} if method_spec(row.method).objective else {"alpha": 0.6, "linestyle": "--"}
            axis.plot(steps, losses, marker="o", markersize=3, label=label, **style)
        budget = next(r.budget.model_dump() for r in rows if r.budget_kind == kind)
        axis.set_title(f"equal {kind}: {json.dumps(budget)}")
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("held-out loss per loss token")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
