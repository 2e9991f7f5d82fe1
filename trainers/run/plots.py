"""The accuracy-vs-length Pareto plot: what a concise-reasoning run is judged by.

Each evaluation (before/after, a checkpoint, another run) is one point: mean completion tokens (x, lower is
better) against held-out accuracy (y, higher is better). The frontier joins the points no other point beats on both
axes; a successful run moves the "after" point left without moving it down. matplotlib is imported inside the
function and draws through the Agg canvas directly, so no global backend is chosen for the caller.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ParetoPoint:
    label: str  # e.g. "step 0 (before)", "export", a run's name
    mean_tokens: float  # mean completion tokens on the held-out set
    acc: float  # pass@1 (fraction of correct samples)


def pareto_frontier(points: list[ParetoPoint]) -> list[ParetoPoint]:
    """Points not dominated by another (one with no more tokens and no less accuracy, better in one), by tokens.

    Example: (100 tok, 0.5), (80 tok, 0.5), (120 tok, 0.7) -> [(80, 0.5), (120, 0.7)]: (100, 0.5) costs more tokens
    than (80, 0.5) for the same accuracy."""
    front, best = [], float("-inf")
    for p in sorted(points, key=lambda p: (p.mean_tokens, -p.acc)):
        if p.acc > best:
            front.append(p)
            best = p.acc
    return front


def eval_points(records: list[dict], label_key: str = "step") -> list[ParetoPoint]:
    """eval.jsonl records -> points; a run's records are labelled ``step N`` (the first "before", the last "after")."""
    out = []
    for i, r in enumerate(records):
        label = f"step {r['step']}" if label_key == "step" else str(r[label_key])
        if label_key == "step" and len(records) > 1 and i in (0, len(records) - 1):
            label += " (before)" if i == 0 else " (after)"
        out.append(ParetoPoint(label, float(r["eval/len_mean"]), float(r["eval/acc"])))
    return out


def pareto_plot(points: list[ParetoPoint], path: str | Path, title: str = "held-out accuracy vs mean tokens") -> Path:
    """Write the plot as a PNG at ``path`` and return the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not points:
        raise ValueError("pareto_plot needs at least one evaluation")
    fig = Figure(figsize=(6.0, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    front = pareto_frontier(points)
    ax.step([p.mean_tokens for p in front], [p.acc for p in front], where="post", color="tab:gray", lw=1, ls="--",
            marker="o", ms=11, mfc="none", label="Pareto frontier")
    for i, p in enumerate(points):
        ax.scatter([p.mean_tokens], [p.acc], s=36, color=f"C{i % 10}", zorder=3)
        ax.annotate(p.label, (p.mean_tokens, p.acc), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("mean completion tokens (lower is better)")
    ax.set_ylabel("accuracy, pass@1 (higher is better)")
    ax.set_title(title, fontsize=10)
    ax.margins(0.15)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
