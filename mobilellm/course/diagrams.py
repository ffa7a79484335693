"""Eight hand-drawn teaching diagrams for the notebooks (matplotlib only): each function returns a
``Figure`` and ``DIAGRAMS`` maps a short name to each function."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch, Patch
from matplotlib.path import Path

PALETTE = {
    "io": "#eeeeee",  # inputs and outputs
    "norm": "#cfe2f3",  # RMSNorm
    "attn": "#f9cb9c",  # attention
    "ffn": "#b6d7a8",  # linear layers, feed-forward
    "act": "#ffe599",  # activations
    "embed": "#d5c6ec",  # embedding tables
    "edge": "#404040",  # outlines, arrows, text
    "note": "#666666",  # side notes
}
HEADS = ("#6fa8dc", "#f6b26b", "#93c47d", "#e06666")  # heads, groups and shared blocks, in order
FONT = 10

Point = tuple[float, float]


def _canvas(width: float, height: float) -> tuple[Figure, Axes]:
    """A figure whose single axes fills it, in inch coordinates (so circles stay round)."""
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_axis_off()
    return fig, ax


def _box(
    ax: Axes, x: float, y: float, text: str, color: str, w: float = 1.3, h: float = 0.42, ls: str = "-"
) -> FancyBboxPatch:
    """A rounded box centred on (x, y) with ``text`` in it."""
    box = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.08", fc=color, ls=ls)
    box.set(ec=PALETTE["edge"], lw=1.2)
    ax.add_patch(box)
    ax.text(x, y, text, ha="center", va="center", fontsize=FONT, color=PALETTE["edge"])
    return box


def _op(ax: Axes, x: float, y: float, symbol: str) -> Patch:
    """A small circle with an operator (+, ×) in it."""
    circle = Circle((x, y), 0.16, fc="white", ec=PALETTE["edge"], lw=1.2)
    ax.add_patch(circle)
    ax.text(x, y, symbol, ha="center", va="center", fontsize=12, color=PALETTE["edge"])
    return circle


def _text(ax: Axes, x: float, y: float, text: str, size: float = FONT, **kw) -> None:
    """Plain text in the house colours (notes are grey)."""
    color = PALETTE["note"] if size < FONT else PALETTE["edge"]
    ax.text(x, y, text, fontsize=size, color=kw.pop("color", color), ha=kw.pop("ha", "center"), va="center", **kw)


def _center(p: Patch | Point) -> Point:
    """The centre of a box or circle; a point is its own centre."""
    if isinstance(p, Circle):
        return p.center
    if isinstance(p, FancyBboxPatch):
        return (p.get_x() + p.get_width() / 2, p.get_y() + p.get_height() / 2)
    return p


def _arrow(ax: Axes, *points: Patch | Point, head: bool = True, color: str = PALETTE["edge"], lw: float = 1.3) -> None:
    """An arrow from the first point to the last; two points may be patches (clipped at their edges),
    more points make a polyline with its head on the last segment."""
    style = "-|>" if head else "-"
    kw = dict(arrowstyle=style, mutation_scale=12, color=color, lw=lw, shrinkA=1, shrinkB=1, zorder=1)
    if len(points) == 2:
        a, b = points
        pa, pb = (p if isinstance(p, Patch) else None for p in points)
        ax.add_patch(FancyArrowPatch(_center(a), _center(b), patchA=pa, patchB=pb, **kw))
    else:
        ax.add_patch(FancyArrowPatch(path=Path([_center(p) for p in points]), **kw))


def _chain(ax: Axes, patches: Sequence[Patch]) -> None:
    """Arrows between consecutive patches."""
    for a, b in pairwise(patches):
        _arrow(ax, a, b)


def block() -> Figure:
    """One pre-norm transformer block as a bottom-up flow, the residual paths drawn on the side."""
    fig, ax = _canvas(7.0, 5.5)
    cx, side = 3.2, 1.75
    x_in = _box(ax, cx, 0.35, "x", PALETTE["io"], w=0.8)
    norm1 = _box(ax, cx, 1.25, "RMSNorm", PALETTE["norm"], w=1.9)
    attn = _box(ax, cx, 1.9, "attention", PALETTE["attn"], w=1.9)
    add1 = _op(ax, cx, 2.55, "+")
    norm2 = _box(ax, cx, 3.35, "RMSNorm", PALETTE["norm"], w=1.9)
    ffn = _box(ax, cx, 4.0, "feed-forward", PALETTE["ffn"], w=1.9)
    add2 = _op(ax, cx, 4.65, "+")
    out = _box(ax, cx, 5.2, "output", PALETTE["io"], w=0.8, h=0.36)
    _chain(ax, [x_in, norm1, attn, add1, norm2, ffn, add2, out])
    for y0, add in ((0.8, add1), (2.95, add2)):  # residual: branch off, run up the side, add back in
        ax.add_patch(Circle((cx, y0), 0.04, color=PALETTE["edge"]))
        ay = add.center[1]
        _arrow(ax, (cx, y0), (cx - side, y0), (cx - side, ay), (cx - 0.17, ay))
        _text(ax, cx - side - 0.17, (y0 + ay) / 2, "residual", size=9, rotation=90)
    notes = ((norm1, "normalise each token"), (attn, "mix across positions (GQA)"), (ffn, "per-token MLP (SwiGLU)"))
    for patch, note in notes:
        _text(ax, cx + 1.15, _center(patch)[1], note, size=9, ha="left")
    frame = FancyBboxPatch((1.0, 0.65), 5.85, 4.2, boxstyle="round,pad=0,rounding_size=0.1", fill=False, ls="--")
    frame.set(ec=PALETTE["note"], lw=1.0)
    ax.add_patch(frame)
    _text(ax, 6.75, 0.85, "× n_layers", ha="right")
    return fig


def swiglu() -> Figure:
    """The SwiGLU feed-forward (gate, up, SiLU, multiply, down) beside a classic ReLU FFN."""
    fig, ax = _canvas(8.0, 4.6)
    cx = 2.4
    x_in = _box(ax, cx, 0.35, "x", PALETTE["io"], w=0.8)
    gate = _box(ax, cx - 1.0, 1.15, "W1  (gate)", PALETTE["ffn"], w=1.5)
    up = _box(ax, cx + 1.0, 1.15, "W3  (up)", PALETTE["ffn"], w=1.5)
    silu = _box(ax, cx - 1.0, 1.9, "SiLU", PALETTE["act"], w=1.0)
    mul = _op(ax, cx, 2.6, "×")
    down = _box(ax, cx, 3.25, "W2  (down)", PALETTE["ffn"], w=1.5)
    out = _box(ax, cx, 3.9, "out", PALETTE["io"], w=0.8, h=0.36)
    _chain(ax, [x_in, gate, silu, mul, down, out])
    _chain(ax, [x_in, up, mul])
    _text(ax, cx + 0.28, 2.6, "elementwise", size=9, ha="left")
    _text(ax, cx, 4.4, "SwiGLU: 3 matrices, hidden ≈ 8/3·d", weight="bold")
    ax.plot([4.85, 4.85], [0.2, 4.3], color=PALETTE["io"], lw=1.5)
    rx = 6.45
    relu_nodes = [
        _box(ax, rx, 0.35, "x", PALETTE["io"], w=0.8),
        _box(ax, rx, 1.15, "Linear  d → 4d", PALETTE["ffn"], w=1.7),
        _box(ax, rx, 1.9, "ReLU", PALETTE["act"], w=1.0),
        _box(ax, rx, 3.25, "Linear  4d → d", PALETTE["ffn"], w=1.7),
        _box(ax, rx, 3.9, "out", PALETTE["io"], w=0.8, h=0.36),
    ]
    _chain(ax, relu_nodes)
    _text(ax, rx, 4.4, "ReLU FFN: 2 matrices, hidden 4d", weight="bold")
    return fig


def deep_and_thin(*, shallow: tuple[int, int] = (2, 56), deep: tuple[int, int] = (8, 32)) -> Figure:
    """Two model shapes of about the same parameter count: few wide blocks against many thin ones."""
    fig, ax = _canvas(8.0, 4.2)
    scale = 3.0 / max(shallow[1], deep[1])  # inches per unit of width
    panels = ((2.1, shallow, "shallow and wide", HEADS[1]), (6.0, deep, "deep and thin", HEADS[0]))
    for cx, (n, width), title, color in panels:
        h = min(0.32, 2.9 / n)  # every block the same height, so depth reads as height
        for i in range(n):
            _box(ax, cx, 0.85 + h * (i + 0.5), "", color, w=width * scale, h=h * 0.8)
        _text(ax, cx, 0.45, f"{n} × {width}", size=12, weight="bold")
        _text(ax, cx, 0.12, "layers × width", size=9)
        _text(ax, cx, 4.0, title, size=12, weight="bold")
    _text(ax, 4.05, 2.3, "≈ same\nparameter\ncount", size=9)
    return fig


def embedding_sharing() -> Figure:
    """Untied input embedding and output head (two tables) against one tied table used at both ends."""
    fig, ax = _canvas(8.0, 4.3)
    xs = (0.6, 2.15, 4.0, 5.85, 7.4)
    _text(ax, 0.1, 3.95, "untied: two tables, 2·V·d parameters", weight="bold", ha="left")
    _chain(
        ax,
        [
            _box(ax, xs[0], 3.3, "token ids", PALETTE["io"], w=0.95),
            _box(ax, xs[1], 3.3, "input embedding\nV × d", PALETTE["embed"], w=1.45, h=0.6),
            _box(ax, xs[2], 3.3, "blocks", PALETTE["attn"], w=1.2),
            _box(ax, xs[3], 3.3, "output head\nd × V", PALETTE["embed"], w=1.45, h=0.6),
            _box(ax, xs[4], 3.3, "logits", PALETTE["io"], w=0.95),
        ],
    )
    ax.plot([0.1, 7.9], [2.65, 2.65], color=PALETTE["io"], lw=1.5)
    _text(ax, 0.1, 2.35, "tied: one table, V·d parameters", weight="bold", ha="left")
    lookup = _box(ax, xs[1], 1.75, "look up rows", "white", w=1.45, ls="--")
    head = _box(ax, xs[3], 1.75, "multiply by Eᵀ", "white", w=1.45, ls="--")
    _chain(
        ax,
        [
            _box(ax, xs[0], 1.75, "token ids", PALETTE["io"], w=0.95),
            lookup,
            _box(ax, xs[2], 1.75, "blocks", PALETTE["attn"], w=1.2),
            head,
            _box(ax, xs[4], 1.75, "logits", PALETTE["io"], w=0.95),
        ],
    )
    _box(ax, xs[2], 0.5, "one table E  (V × d)", PALETTE["embed"], w=3.0, h=0.5)
    _arrow(ax, (xs[2] - 1.35, 0.75), (xs[1], 1.54))
    _arrow(ax, (xs[2] + 1.35, 0.75), (xs[3], 1.54))
    _text(ax, xs[2] + 1.6, 0.5, "same weights, transposed", size=9, ha="left")
    return fig


def gqa(*, n_heads: int = 4, n_kv_heads: int = 2) -> Figure:
    """Grouped-query attention (query heads share key/value heads) beside multi-head attention."""
    if n_kv_heads < 1 or n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    fig, ax = _canvas(8.5, 3.6)
    panels = ((3.05, n_heads, "multi-head attention"), (6.65, n_kv_heads, "grouped-query attention"))
    _text(ax, 0.15, 2.6, "query heads", ha="left")
    _text(ax, 0.15, 1.1, "key/value\nheads", ha="left")
    step = min(0.8, 3.2 / n_heads)
    for cx, n_kv, title in panels:
        group = n_heads // n_kv
        kv_step = step * group
        kvs = [
            _box(ax, cx + (j - (n_kv - 1) / 2) * kv_step, 1.1, f"KV{j + 1}", HEADS[j % len(HEADS)], w=step * 0.8)
            for j in range(n_kv)
        ]
        for i in range(n_heads):
            color = HEADS[(i // group) % len(HEADS)]
            q = _box(ax, cx + (i - (n_heads - 1) / 2) * step, 2.6, f"Q{i + 1}", color, w=step * 0.7)
            q.set_alpha(0.55)
            _arrow(ax, q, kvs[i // group], head=False, color=color, lw=2.0)
        _text(ax, cx, 3.3, title, size=11, weight="bold")
        saving = f"  (KV cache ÷ {group})" if group > 1 else ""
        _text(ax, cx, 0.45, f"KV cache: {n_kv} heads{saving}", size=FONT)
    return fig


def layer_sharing() -> Figure:
    """Immediate block-wise weight sharing (A A B B C C) against repeat-all-over and reverse orders."""
    fig, ax = _canvas(8.0, 3.9)
    rows = (
        (2.75, "immediate block-wise\n(MobileLLM)", "AABBCC"),
        (1.55, "repeat-all-over", "ABCABC"),
        (0.55, "reverse", "ABCCBA"),
    )
    for y, label, order in rows:
        _text(ax, 0.2, y, label, ha="left", weight="bold" if "Mobile" in label else "normal")
        boxes = [_box(ax, 2.85 + 0.88 * i, y, b, HEADS["ABC".index(b)], w=0.62) for i, b in enumerate(order)]
        _chain(ax, boxes)
    _text(ax, 0.2, 3.55, "stored blocks: 3, executed: 6", size=12, weight="bold", ha="left")
    _text(ax, 2.54, 2.2, "a block runs twice while its weights are still in cache", size=9, ha="left", style="italic")
    return fig


def decode_step() -> Figure:
    """What one decode step reads from memory: every executed layer's weights and its KV cache, for
    three blocks stored once (A B C) and run twice each (A A B B C C)."""
    fig, ax = _canvas(8.6, 4.3)
    _text(
        ax,
        0.2,
        4.05,
        "one new token: each executed layer reads its weights and its cache slot",
        size=12,
        weight="bold",
        ha="left",
    )
    y_w, y_layer, y_kv = 3.2, 1.95, 0.75
    for i, b in enumerate("AABBCC"):
        x = 1.75 + 1.1 * i
        layer = _box(ax, x, y_layer, f"layer {i + 1}\nblock {b}", HEADS["ABC".index(b)], w=0.95, h=0.62)
        if i % 2 == 0:  # a block's weights: read from memory (DRAM) on its first pass ...
            _box(ax, x + 0.55, y_w, f"weights {b}", PALETTE["ffn"], w=1.9)
            _arrow(ax, (x, y_w - 0.22), (x, y_layer + 0.32))
            _text(ax, x - 0.08, (y_w + y_layer) / 2 + 0.05, "memory", size=9, ha="right")
        else:  # ... and found in the cache on the second
            _arrow(ax, (x, y_w - 0.22), (x, y_layer + 0.32), color=PALETTE["note"], lw=1.0)
            _text(ax, x - 0.08, (y_w + y_layer) / 2 + 0.05, "in cache", size=9, ha="right", style="italic")
        kv = _box(ax, x, y_kv, f"KV {i + 1}", PALETTE["attn"], w=0.8, h=0.36)
        _arrow(ax, kv, layer)
        if i:
            _arrow(ax, (x - 0.62, y_layer), (x - 0.48, y_layer))
    _text(ax, 0.2, y_w, "stored blocks", size=9, ha="left")
    _text(ax, 0.2, y_layer, "executed", size=9, ha="left")
    _text(ax, 0.2, y_kv, "6 cache slots", size=9, ha="left")
    _text(ax, 4.5, 0.2, "weights read from memory: 3 blocks' worth for 6 layers of compute", size=9, style="italic")
    return fig


def on_device() -> Figure:
    """The on-device path: a trained model, its exports, and the runtimes that run them."""
    fig, ax = _canvas(8.6, 3.6)
    ckpt = _box(ax, 1.0, 1.8, "checkpoint\n(safetensors)", PALETTE["io"], w=1.5, h=0.62)
    export = _box(ax, 3.0, 2.75, "torch.export\n+ int8 / 8da4w", PALETTE["norm"], w=1.8, h=0.62)
    lower = _box(ax, 5.0, 2.75, "XNNPACK\nlowering", PALETTE["ffn"], w=1.4, h=0.62)
    pte = _box(ax, 6.55, 2.75, ".pte", PALETTE["embed"], w=0.8)
    runtime = _box(ax, 7.75, 2.75, "ExecuTorch\nruntime", PALETTE["attn"], w=1.35, h=0.62)
    gguf = _box(ax, 3.0, 0.85, "GGUF writer\n(f16 / q8_0)", PALETTE["norm"], w=1.8, h=0.62)
    gfile = _box(ax, 5.0, 0.85, ".gguf", PALETTE["embed"], w=0.8)
    llama = _box(ax, 6.8, 0.85, "llama.cpp", PALETTE["attn"], w=1.35)
    _chain(ax, [export, lower, pte, runtime])
    _chain(ax, [gguf, gfile, llama])
    _arrow(ax, ckpt, export)
    _arrow(ax, ckpt, gguf)
    _text(ax, 5.9, 3.45, "KV cache inside the program: one slot per executed layer", size=9, style="italic")
    _text(ax, 4.9, 0.2, "shared blocks saved as separate layers (copies)", size=9, style="italic")
    return fig


DIAGRAMS: dict[str, Callable[[], Figure]] = {
    "block": block,
    "swiglu": swiglu,
    "deep_and_thin": deep_and_thin,
    "embedding_sharing": embedding_sharing,
    "gqa": gqa,
    "layer_sharing": layer_sharing,
    "decode_step": decode_step,
    "on_device": on_device,
}


def show(name: str, **kw):
    """The diagram ``name`` as an image for a notebook, also written to ``figures/diagram_<name>.png``."""
    import io

    from IPython.display import Image

    from .plots import save

    if name not in DIAGRAMS:
        raise ValueError(f"unknown diagram {name!r}; valid: {', '.join(DIAGRAMS)}")
    fig = DIAGRAMS[name](**kw)
    save(fig, f"diagram_{name}")
    png = io.BytesIO()
    fig.savefig(png, format="png", bbox_inches="tight", dpi=110)
    return Image(data=png.getvalue(), format="png")
