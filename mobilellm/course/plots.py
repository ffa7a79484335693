"""One function per figure, one house style: readable on a workshop projector, seeds visible,
the paper's numbers beside ours but never on the same axis."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

from .._files import write_atomic
from .experiments import RunRecord, compare, output_dirs, summarize
from .paired import log_trend

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 130,
    "font.size": 12,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
}
OURS, PAPER = "#1f77b4", "#7f7f7f"
SEED_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]


@contextmanager
def style() -> Iterator[None]:
    """The house style for the figures drawn inside the ``with`` block.

    It sets and restores only the keys of ``STYLE``. ``plt.rc_context`` restores *every* rcParam on
    exit, the backend included, and in a Jupyter kernel that switches interactive mode off: the
    first figure drawn in it is shown, every later one stays undisplayed in pyplot."""
    saved = {key: mpl.rcParams[key] for key in STYLE}
    mpl.rcParams.update(STYLE)
    try:
        yield
    finally:
        mpl.rcParams.update(saved)


def seeds_label(n: int) -> str:
    """ "1 seed", "3 seeds"."""
    return f"{n} seed{'s' if n != 1 else ''}"


def save(fig, name: str) -> Path:
    """Write ``figures/<name>.png`` (a temp folder in quick mode) and return its path."""
    folder = output_dirs()[1]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    write_atomic(path, lambda t: fig.savefig(t, format="png", bbox_inches="tight"))
    return path


def _paper_panel(
    ax, paper: dict[str, float], label: str = "zero-shot avg. accuracy", title: str = "paper: 125M, 0.25T tokens"
) -> None:
    """The paper's numbers as grey bars of their change from the first entry, in points, on an axis
    that starts at zero: a 0.2-point step looks as small as it is. Each bar is labelled with the
    change and the paper's absolute number."""
    labels = list(paper)
    ref = paper[labels[0]]
    deltas = [paper[k] - ref for k in labels]
    bars = ax.bar(range(len(labels)), deltas, color=PAPER, width=0.6)
    ax.bar_label(
        bars,
        labels=[
            f"{paper[k]:.1f}" if i == 0 else f"{d:+.1f}\n({paper[k]:.1f})"
            for i, (k, d) in enumerate(zip(labels, deltas, strict=True))
        ],
        fontsize=10,
    )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)), labels)
    top = max(max(deltas), 0) + 0.6
    ax.set_ylim(min(min(deltas), 0) - 0.6, top + 0.4)
    ax.set_ylabel(f"change in {label}\n(points, vs {labels[0].splitlines()[0]}) ↑")
    ax.set_title(title)


def _ours_and_paper(paper: dict | None, n_variants: int = 3):
    """A figure with our panel (wider beyond three variants, so that their labels do not collide), and
    a narrower one for the paper's numbers when given."""
    ours = max(6.2, 2.1 * n_variants)
    widths = [ours, 6.2 / 1.4] if paper else [ours]
    return plt.subplots(
        1,
        len(widths),
        figsize=(sum(widths) + (1.8 if paper else 0), 4.2),
        squeeze=False,
        gridspec_kw={"width_ratios": widths},
    )


def _finish(fig, name: str | None, title: str | None = None):
    """Title, layout, and ``figures/<name>.png`` if named."""
    if title:
        fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    if name:
        save(fig, name)
    return fig


def ablation(
    records: list[RunRecord],
    title: str,
    paper: dict[str, float] | None = None,
    paper_label: str = "zero-shot avg. accuracy",
    name: str | None = None,
    paper_title: str = "paper: 125M, 0.25T tokens",
):
    """Left: our validation loss per variant (every seed a dot, mean ± std as a bar).
    Right (if ``paper``): the paper's numbers for the same steps, on their own axis."""
    with style():
        summary = summarize(records)
        fig, axes = _ours_and_paper(paper, len(summary))
        ax = axes[0, 0]
        for i, s in enumerate(summary):
            ax.errorbar(i, s["mean"], yerr=s["std"], fmt="s", color=OURS, ms=9, capsize=6, zorder=3)
            for j, loss in enumerate(s["losses"]):
                ax.scatter(
                    i + 0.12,
                    loss,
                    color=SEED_COLORS[j % len(SEED_COLORS)],
                    s=22,
                    zorder=4,
                    label=f"seed {j}" if i == 0 else None,
                )
            ax.annotate(
                f"{s['mean']:.3f}",
                (i, s["mean"]),
                xytext=(-14, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=11,
            )
        ax.set_xticks(range(len(summary)), [f"{s['label']}\n{s['params']:,} params" for s in summary])
        ax.set_xlim(-0.6, len(summary) - 0.4)
        ax.set_ylabel("validation loss (nats/token) ↓")
        tok, n = summary[0]["tokens"], len(summary[0]["losses"])
        ax.set_title(
            f"ours: {tok / 1e6:.1f}M tokens; " + (f"mean ± 1 SD over {seeds_label(n)}" if n > 1 else seeds_label(n))
        )
        if n > 1:
            ax.legend(loc="best", fontsize=9)
        if paper:
            _paper_panel(axes[0, 1], paper, paper_label, paper_title)
        return _finish(fig, name, title)


def loss_curves(records: list[RunRecord], title: str, name: str | None = None, train: bool = True):
    """Validation loss (solid) and training loss (faint, dashed) against tokens seen: one line per
    run, a colour per variant. Training loss is measured on the batch just trained on, so it is
    noisier; it runs below the validation loss partly because the validation plays are other plays."""
    with style():
        fig, ax = plt.subplots(figsize=(7.5, 4.4))
        labels = list(dict.fromkeys(r.label for r in records))
        for r in records:
            color = SEED_COLORS[labels.index(r.label) % len(SEED_COLORS)]
            tokens_per_step = r.tokens / max(1, r.val_curve[-1][0])
            first = r.seed == min(x.seed for x in records if x.label == r.label)
            if train and r.train_curve:
                ax.plot(
                    [s * tokens_per_step / 1e6 for s, _ in r.train_curve],
                    [v for _, v in r.train_curve],
                    color=color,
                    alpha=0.35,
                    lw=0.8,
                    ls="--",
                )
            xs = [s * tokens_per_step / 1e6 for s, _ in r.val_curve]
            ax.plot(xs, [v for _, v in r.val_curve], color=color, alpha=0.9, lw=1.6, label=r.label if first else None)
        if train:
            ax.plot([], [], color="grey", lw=1.6, label="validation (solid)")
            ax.plot([], [], color="grey", lw=0.8, ls="--", alpha=0.6, label="training (dashed)")
        vals = [v for r in records for _, v in r.val_curve]
        low = min(vals + ([v for r in records for _, v in r.train_curve] if train else []))
        ax.set_ylim(low - 0.05, min(max(vals), min(vals) + 2.5))  # the start is off-scale: the end matters
        ax.set_xlabel("training tokens (millions)")
        ax.set_ylabel("loss (nats/token) ↓")
        ax.set_title(title)
        ax.legend(fontsize=9)
        return _finish(fig, name)


def versus(
    records: list[RunRecord],
    x_of,
    xlabel: str,
    title: str,
    paper: dict[str, float] | None = None,
    name: str | None = None,
    logx: bool = False,
):
    """Validation loss against a numeric property of each variant (e.g. its depth), seeds as dots."""
    with style():
        summary = summarize(records)
        fig, axes = _ours_and_paper(paper)
        ax = axes[0, 0]
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
        n = len(summary[0]["losses"])
        ax.set_title(
            f"ours: {summary[0]['tokens'] / 1e6:.1f}M tokens, ~{summary[0]['params'] / 1e3:.0f}k params; "
            + (f"mean ± 1 SD over {seeds_label(n)}" if n > 1 else seeds_label(n)),
            fontsize=11,
        )
        if paper:
            _paper_panel(axes[0, 1], paper)
        return _finish(fig, name, title)


def _seeds_note(ax, x: float, n_seeds: int) -> None:
    """The seed count of budget ``x``, just inside the bottom edge (clear of the points and bars)."""
    ax.annotate(
        seeds_label(n_seeds),
        (x, 0.0),
        xycoords=("data", "axes fraction"),
        xytext=(0, 3),
        textcoords="offset points",
        ha="center",
        va="bottom",
        fontsize=9,
        color="dimgray",
    )


def _passes_axis(ax, passes_per_token_per_param: float) -> None:
    """A top axis in passes over the training text (proportional to tokens per parameter)."""
    k = passes_per_token_per_param
    top = ax.secondary_xaxis("top", functions=(lambda x: x * k, lambda p: p / k))
    top.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    top.set_xlabel("passes over the training text", fontsize=10, color="dimgray")
    top.tick_params(colors="dimgray", labelsize=9)


def _log_budget_axis(ax) -> None:
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
    ax.set_xlabel("training tokens per parameter (log scale)")


def _budget_axes(
    ax,
    a: str,
    b: str,
    runs: dict[int, list[RunRecord]],
    title: str,
    extrapolate_to: float | None = None,
    train_tokens: int | None = None,
) -> None:
    """One panel of ``budget_panels``: ``b − a`` per seed (dots) and its mean with the 95% interval,
    at each training budget; a zero line; optionally a fitted trend drawn out to ``extrapolate_to``,
    and the passes over a training text of ``train_tokens``."""
    xs_all, ys_all = [], []
    for tokens, recs in sorted(runs.items()):
        p = compare(recs, a, b)
        x = tokens / next(r.params for r in recs if r.label == a)
        ax.scatter([x] * p.n, p.diffs, color="k", s=16, alpha=0.5, zorder=4)
        if p.n > 1:
            ax.errorbar(
                x, p.mean, yerr=[[p.mean - p.low], [p.high - p.mean]], fmt="s", color=OURS, ms=7, capsize=5, zorder=3
            )
        else:
            ax.scatter(x, p.mean, marker="s", color=OURS, s=40, zorder=3)
        _seeds_note(ax, x, p.n)
        per_param = x / tokens
        xs_all += [x] * p.n
        ys_all += list(p.diffs)
    ax.axhline(0, color="k", lw=0.8)
    if extrapolate_to and len(set(xs_all)) >= 2 and len(xs_all) >= 3:
        trend = log_trend(xs_all, ys_all)
        grid = np.logspace(np.log10(min(xs_all)), np.log10(extrapolate_to), 60)
        lo, hi = zip(*(trend.band(g) for g in grid), strict=True)
        ax.plot(
            grid,
            [trend.at(g) for g in grid],
            "--",
            color=OURS,
            lw=1.2,
            label=f"linear in log budget: {trend.slope:+.3f} per 10×",
        )
        ax.fill_between(grid, lo, hi, color=OURS, alpha=0.12, label="95% band (extrapolation: a hypothesis)")
        ax.axvline(max(xs_all), color="grey", lw=0.6, ls=":")
        ax.legend(fontsize=8, loc="best")
    _log_budget_axis(ax)
    if train_tokens and runs:
        _passes_axis(ax, 1 / (per_param * train_tokens))
    ax.set_ylabel(f"{b} − {a}\n(validation loss, nats; < 0: {b} better)", fontsize=10)
    ax.set_title(title, fontsize=12)


def budget_panels(
    panels: dict[str, tuple[str, str, dict[int, list[RunRecord]]]],
    title: str | None = None,
    name: str | None = None,
    extrapolate_to: float | None = None,
    ncols: int = 3,
    train_tokens: int | None = None,
):
    """Several paired budget comparisons, ``ncols`` to a row: per panel ``(a, b, {tokens: runs})``;
    each point is ``b − a`` seed by seed, the square its mean with a 95% t-interval. With
    ``train_tokens`` (the training text's size) each budget also says how often the text was read."""
    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    with style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.8 * ncols, 4.4 * nrows), squeeze=False)
        flat = list(axes.flat)
        for ax, (panel_title, (a, b, runs)) in zip(flat, panels.items(), strict=False):
            _budget_axes(ax, a, b, runs, panel_title, extrapolate_to, train_tokens)
        for ax in flat[len(panels) :]:
            ax.set_visible(False)
        return _finish(fig, name, title)


def best_depth(rows, title: str | None = None, name: str | None = None):
    """Which shape wins at each budget (``evidence.best_depth`` rows): each shape's loss minus the
    shapes' mean on the same seed, with its 95% t-interval; the winner ringed, the passes noted."""
    labels = list(rows[0].relative)
    with style():
        fig, ax = plt.subplots(figsize=(8.5, 4.6))
        for i, label in enumerate(labels):
            xs = [r.tokens_per_param * (1 + 0.04 * (i - 1)) for r in rows]  # side by side, not on top
            mean, low, high = zip(*(r.relative[label] for r in rows), strict=True)
            yerr = [np.subtract(mean, low), np.subtract(high, mean)]
            color = SEED_COLORS[i % len(SEED_COLORS)]
            ax.errorbar(xs, mean, yerr=yerr, fmt="o-", color=color, ms=6, capsize=4, label=label)
            for x, r, m in zip(xs, rows, mean, strict=True):
                if r.winner == label:
                    ax.scatter(x, m, s=220, facecolors="none", edgecolors=color, lw=1.6, zorder=5)
        for r in rows:
            _seeds_note(ax, r.tokens_per_param, r.seeds)
        ax.axhline(0, color="k", lw=0.8)
        _log_budget_axis(ax)
        _passes_axis(ax, rows[0].passes / rows[0].tokens_per_param)  # after the log scale, or its ticks are 10^k
        ax.set_ylabel("loss − the shapes' mean, same seed\n(nats; lower is better)", fontsize=10)
        ax.legend(title="shape (ringed: lowest)", fontsize=9, title_fontsize=9, loc="best")
        return _finish(fig, name, title)


def pairs(records: list[RunRecord], a: str, b: str, title: str, name: str | None = None):
    """The paired rule as a picture. Left: each seed's two runs joined by a line (same seed = same
    initialisation and batch order). Right: the per-seed differences ``b − a``, their mean and its
    95% t-interval, against zero."""
    p = compare(records, a, b)
    with style():
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
        la = {r.seed: r.final_val_loss for r in records if r.label == a}
        lb = {r.seed: r.final_val_loss for r in records if r.label == b}
        for i, s in enumerate(p.seeds):
            color = SEED_COLORS[i % len(SEED_COLORS)]
            left.plot([0, 1], [la[s], lb[s]], "o-", color=color, label=f"seed {s}")
        left.set_xticks([0, 1], [a, b])
        left.set_xlim(-0.3, 1.3)
        left.set_ylabel("validation loss (nats/token) ↓")
        left.set_title("each seed's pair of runs")
        left.legend(fontsize=9)
        for i, d in enumerate(p.diffs):
            right.scatter(0, d, color=SEED_COLORS[i % len(SEED_COLORS)], s=30, zorder=4)
        if p.n > 1:
            right.errorbar(
                0.25,
                p.mean,
                yerr=[[p.mean - p.low], [p.high - p.mean]],
                fmt="s",
                color="k",
                ms=7,
                capsize=6,
                label="mean, 95% t-interval",
            )
            right.legend(fontsize=9, loc="best")
        right.axhline(0, color="k", lw=0.8)
        right.set_xlim(-0.5, 0.75)
        right.set_xticks([])
        right.set_ylabel(f"{b} − {a} (nats) ↓")
        right.set_title(p.text(), fontsize=10)
        return _finish(fig, name, title)


def roadmap(records: list[RunRecord], paper_steps: dict[str, float], title: str, name: str | None = None):
    """The roadmap one step at a time. Top: what each step changed in our validation loss, paired by
    seed against the step before (dots: seeds; square: mean with its 95% t-interval). Bottom: what
    the paper's step changed in its zero-shot average (points; a step it has no number for is left
    empty). Our change is the table's: this step minus the step before, lower is better (an arrow on
    each axis says which way is better)."""
    labels = list(dict.fromkeys(r.label for r in records))
    with style():
        fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [1.3, 1]})
        for i, (prev, cur) in enumerate(zip(labels, labels[1:], strict=False), start=1):
            p = compare(records, prev, cur)
            top.scatter([i + 0.12] * p.n, p.diffs, color="k", s=14, alpha=0.5, zorder=4)
            top.errorbar(
                i,
                p.mean,
                yerr=[[p.mean - p.low], [p.high - p.mean]] if p.n > 1 else None,
                fmt="s",
                color=OURS,
                ms=8,
                capsize=5,
                zorder=3,
            )
            top.annotate(
                f"{p.mean:+.3f}\n{p.agree}/{p.n}",
                (i, p.mean),
                xytext=(-12, 0),
                textcoords="offset points",
                ha="right",
                va="center",
                fontsize=9,
            )
        top.axhline(0, color="k", lw=0.8)
        top.set_ylabel("ours: loss change vs the\nstep before (nats) ↓ better", fontsize=11)
        n = max(len({r.seed for r in records if r.label == lab}) for lab in labels)
        top.set_title(
            f"ours: ~{records[0].params / 1e3:.0f}k parameters, {records[0].tokens / 1e6:.1f}M tokens, "
            f"paired over {seeds_label(n)} (labels: mean, seeds agreeing in sign)",
            fontsize=11,
        )
        have = [(i, paper_steps[lab]) for i, lab in enumerate(labels) if lab in paper_steps]
        bars = bottom.bar([i for i, _ in have], [v for _, v in have], color=PAPER, width=0.55)
        bottom.bar_label(bars, fmt="%+.1f", fontsize=11)
        bottom.axhline(0, color="k", lw=0.8)
        bottom.set_ylim(min(0, min(v for _, v in have)) - 0.4, max(v for _, v in have) + 0.5)
        bottom.set_ylabel("paper: change in zero-shot\navg. (points) ↑ better", fontsize=11)
        bottom.set_title("paper: 125M at 0.25T tokens (layer sharing: at 1T tokens)", fontsize=11)
        params = {r.label: r.params for r in records}
        bottom.set_xticks(range(len(labels)), [f"{lab}\n{params[lab] / 1e3:.0f}k" for lab in labels], fontsize=10)
        return _finish(fig, name, title)
