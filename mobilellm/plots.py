"""One function per figure, one house style: readable on a workshop projector, seeds visible,
the paper's numbers beside ours but never on the same axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from .experiments import RunRecord, output_dirs, summarize

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 130, "font.size": 12, "axes.titlesize": 13, "axes.labelsize": 12,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False,
}
OURS, PAPER = "#1f77b4", "#7f7f7f"
SEED_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]


def save(fig, name: str) -> Path:
    """Write ``figures/<name>.png`` (a temp folder in quick mode) and return its path."""
    folder = output_dirs()[1]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.savefig(path, bbox_inches="tight")
    return path


def _paper_panel(ax, paper: dict[str, float], label: str = "paper: zero-shot avg. accuracy (%)") -> None:
    """The paper's numbers as grey bars on their own axis."""
    labels = list(paper)
    bars = ax.bar(range(len(labels)), [paper[k] for k in labels], color=PAPER, width=0.6)
    ax.bar_label(bars, fmt="%.1f", fontsize=11)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylim(min(paper.values()) - 3, max(paper.values()) + 1.5)
    ax.set_ylabel(label + " ↑")
    ax.set_title("paper: 125M, 0.25T tokens")


def _ours_and_paper(paper: dict | None):
    """A figure with our panel, and a narrower one for the paper's numbers when given."""
    ncols = 2 if paper else 1
    return plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.2), squeeze=False,
                        gridspec_kw={"width_ratios": [1.4, 1][:ncols]})


def _finish(fig, name: str | None, title: str | None = None):
    """Title, layout, and ``figures/<name>.png`` if named."""
    if title:
        fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    if name:
        save(fig, name)
    return fig


def ablation(records: list[RunRecord], title: str, paper: dict[str, float] | None = None,
             paper_label: str = "paper: zero-shot avg. accuracy (%)", name: str | None = None):
    """Left: our validation loss per variant (every seed a dot, mean ± std as a bar).
    Right (if ``paper``): the paper's numbers for the same steps, on their own axis."""
    with plt.rc_context(STYLE):
        fig, axes = _ours_and_paper(paper)
        ax = axes[0, 0]
        summary = summarize(records)
        for i, s in enumerate(summary):
            ax.errorbar(i, s["mean"], yerr=s["std"], fmt="s", color=OURS, ms=9, capsize=6, zorder=3)
            for j, loss in enumerate(s["losses"]):
                ax.scatter(i + 0.12, loss, color=SEED_COLORS[j % len(SEED_COLORS)], s=22, zorder=4,
                           label=f"seed {j}" if i == 0 else None)
            ax.annotate(f"{s['mean']:.3f}", (i, s["mean"]), xytext=(-14, 0), textcoords="offset points",
                        ha="right", va="center", fontsize=11)
        ax.set_xticks(range(len(summary)), [f"{s['label']}\n{s['params']:,} params" for s in summary])
        ax.set_xlim(-0.6, len(summary) - 0.4)
        ax.set_ylabel("validation loss (nats/token) ↓")
        tok = summary[0]["tokens"]
        ax.set_title(f"ours: {tok / 1e6:.1f}M tokens, {len(summary[0]['losses'])} seeds")
        if len(summary[0]["losses"]) > 1:
            ax.legend(loc="best", fontsize=9)
        if paper:
            _paper_panel(axes[0, 1], paper, paper_label)
        return _finish(fig, name, title)


def loss_curves(records: list[RunRecord], title: str, name: str | None = None):
    """Validation loss against tokens seen, one line per run, a colour per variant."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        labels = list(dict.fromkeys(r.label for r in records))
        for r in records:
            color = SEED_COLORS[labels.index(r.label) % len(SEED_COLORS)]
            tokens_per_step = r.tokens / max(1, r.val_curve[-1][0])
            xs = [s * tokens_per_step / 1e6 for s, _ in r.val_curve]
            ax.plot(xs, [v for _, v in r.val_curve], color=color, alpha=0.8, lw=1.5,
                    label=r.label if r.seed == min(x.seed for x in records if x.label == r.label) else None)
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel("validation loss (nats/token) ↓")
        ax.set_title(title)
        ax.legend()
        return _finish(fig, name)


def versus(records: list[RunRecord], x_of, xlabel: str, title: str, paper: dict[str, float] | None = None,
           name: str | None = None, logx: bool = False):
    """Validation loss against a numeric property of each variant (e.g. its depth), seeds as dots."""
    with plt.rc_context(STYLE):
        fig, axes = _ours_and_paper(paper)
        ax = axes[0, 0]
        summary = summarize(records)
        xs = [x_of(next(r for r in records if r.label == s["label"])) for s in summary]
        ax.plot(xs, [s["mean"] for s in summary], "-", color=OURS, lw=1.5, zorder=2)
        for x, s in zip(xs, summary, strict=True):
            ax.errorbar(x, s["mean"], yerr=s["std"], fmt="s", color=OURS, ms=8, capsize=5, zorder=3)
            ax.scatter([x] * len(s["losses"]), s["losses"], color="k", s=12, alpha=0.5, zorder=4)
            ax.annotate(s["label"], (x, s["mean"]), xytext=(6, 8), textcoords="offset points", fontsize=10)
        if logx:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss (nats/token) ↓")
        ax.set_title(f"ours: {summary[0]['tokens'] / 1e6:.1f}M tokens, {len(summary[0]['losses'])} seeds, "
                     f"~{summary[0]['params'] / 1e3:.0f}k params")
        if paper:
            _paper_panel(axes[0, 1], paper)
        return _finish(fig, name, title)


def _budget_axes(ax, runs: dict[float, list[RunRecord]], title: str) -> None:
    labels = list(dict.fromkeys(r.label for recs in runs.values() for r in recs))
    for i, label in enumerate(labels):
        pts = sorted((r.tokens / r.params, r.final_val_loss) for recs in runs.values() for r in recs
                     if r.label == label)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=SEED_COLORS[i % len(SEED_COLORS)],
                label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens per parameter")
    ax.set_ylabel("validation loss (nats/token) ↓")
    ax.set_title(title)
    ax.legend()


def budget(runs: dict[float, list[RunRecord]], title: str, name: str | None = None):
    """Validation loss against tokens per parameter, one line per variant: does the ranking hold?"""
    return budget_panels({title: runs}, name=name)


def budget_panels(panels: dict[str, dict[float, list[RunRecord]]], title: str | None = None,
                  name: str | None = None):
    """Several budget comparisons side by side (one panel per pair of variants)."""
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.2), squeeze=False)
        for ax, (panel_title, runs) in zip(axes[0], panels.items(), strict=True):
            _budget_axes(ax, runs, panel_title)
        return _finish(fig, name, title)


def roadmap(records: list[RunRecord], paper: dict[str, float], title: str, name: str | None = None):
    """The roadmap: our validation loss step by step (top; seeds as dots, mean joined by a line) and
    the paper's zero-shot average for the same steps (bottom, its own axis; a step it has no number
    for is left empty)."""
    with plt.rc_context(STYLE):
        summary = summarize(records)
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True,
                                          gridspec_kw={"height_ratios": [1.5, 1]})
        xs = range(len(summary))
        top.plot(xs, [s["mean"] for s in summary], "-", color=OURS, lw=1.5, zorder=2)
        for i, s in enumerate(summary):
            top.errorbar(i, s["mean"], yerr=s["std"], fmt="s", color=OURS, ms=8, capsize=5, zorder=3)
            top.scatter([i + 0.1] * len(s["losses"]), s["losses"], color="k", s=14, alpha=0.5, zorder=4)
            top.annotate(f"{s['mean']:.3f}", (i, s["mean"]), xytext=(-10, 0), textcoords="offset points",
                         ha="right", va="center", fontsize=10)
        top.set_ylabel("validation loss (nats/token) ↓")
        top.set_title(f"ours: ~{summary[0]['params'] / 1e3:.0f}k parameters, {summary[0]['tokens'] / 1e6:.1f}M "
                      f"tokens, {max(s['n_seeds'] for s in summary)} seeds (dots)")
        have = [(i, paper[s["label"]]) for i, s in enumerate(summary) if s["label"] in paper]
        bars = bottom.bar([i for i, _ in have], [v for _, v in have], color=PAPER, width=0.55)
        bottom.bar_label(bars, fmt="%.1f", fontsize=11)
        bottom.set_ylim(min(v for _, v in have) - 3, max(v for _, v in have) + 1.5)
        bottom.set_ylabel("zero-shot avg. (%) ↑")
        bottom.set_title("paper: 125M, 0.25T tokens")
        bottom.set_xticks(list(xs), [f"{s['label']}\n{s['params'] / 1e3:.0f}k" for s in summary])
        return _finish(fig, name, title)
