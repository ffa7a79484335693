"""What the course compares: the curriculum's ablations, as data.

Each ablation is a question, labelled model variants at teaching scale, one recipe and the seeds;
``experiments.py`` runs them (and caches every run by its config, recipe, data and seed). The
chain: ReLU → SwiGLU, depth against width, tied embeddings, fewer KV heads, layer sharing, the
budget sweeps that check each ranking at other token budgets, and the roadmap that strings them
together.
"""

from __future__ import annotations

import dataclasses
import warnings

from ..config import ModelConfig
from .experiments import Ablation, Recipe


def _teach(**kw) -> ModelConfig:
    base = dict(vocab_size=512, max_seq_len=128, init="fan_in")
    base.update(kw)
    return ModelConfig(**base)


# The paper's baseline (12 layers x 768, MHA, FC-ReLU-FC with 4x hidden, untied embeddings) at
# teaching scale: 3 layers x 48, 4 heads, ReLU 192, untied — 132,432 parameters.
TEACH_BASELINE = _teach(
    dim=48, n_layers=3, n_heads=4, n_kv_heads=4, ffn_hidden_dim=192, ffn_type="relu", share_embedding=False
)

SWIGLU = Ablation(
    name="swiglu",
    question="Does SwiGLU beat FC-ReLU-FC at equal parameters?",
    variants=(
        ("ReLU (baseline)", TEACH_BASELINE),
        # Three matrices instead of two: hidden 2/3 as wide keeps the parameters equal.
        ("SwiGLU", TEACH_BASELINE.replace(ffn_type="swiglu", ffn_hidden_dim=128)),
    ),
)


def _shape(n_layers: int, dim: int, n_heads: int, ffn_hidden_dim: int) -> ModelConfig:
    return _teach(
        dim=dim,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        ffn_hidden_dim=ffn_hidden_dim,
        ffn_type="swiglu",
        share_embedding=False,
    )


# Depth against width at the SwiGLU model's 132k parameters (±1%): FFN ≈ 8/3·d, head_dim 8-14.
# 3 x 48 is exactly notebook 02's SwiGLU model, so its runs are reused.
DEPTH = Ablation(
    name="depth",
    question="At a fixed parameter budget, is deeper and thinner better?",
    variants=(
        ("1×72", _shape(1, 72, 6, 176)),
        ("2×56", _shape(2, 56, 4, 148)),
        ("3×48", _shape(3, 48, 4, 128)),
        ("5×40", _shape(5, 40, 4, 100)),
        ("8×32", _shape(8, 32, 4, 88)),
    ),
)


def scaled(ab: Ablation, width: int, corpus: str | None = None) -> Ablation:
    """``ab`` at a larger scale, for a GPU: every variant ``width``x wider (dim, FFN hidden and head
    counts; head size, depth, sharing and vocabulary kept), trained on tokens grown with the first
    variant's parameters, so that tokens per parameter stay as in the course. Run it with
    ``MOBILELLM_DEVICE=cuda python -m mobilellm ablation sharing --scale 8``. The embedded corpus has
    ~2.2M training tokens: beyond a few passes over it, pass a bigger ``corpus`` (e.g. ``tinystories``)."""
    from ..accounting import param_count

    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width ({width!r}) must be a positive integer, e.g. 4 or 8")
    if width == 1 and corpus is None:
        return ab

    def wider(c: ModelConfig) -> ModelConfig:
        return c.replace(
            dim=c.dim * width,
            n_heads=c.n_heads * width,
            n_kv_heads=c.n_kv_heads * width,
            ffn_hidden_dim=c.ffn_hidden_dim * width,
        )

    variants = tuple((label, wider(c)) for label, c in ab.variants)

    # The embeddings grow with the width, the blocks with its square: variants of equal size at 1x
    # (within 3% of the first) can drift apart. Say so rather than compare unequal models silently.
    def size(c: ModelConfig) -> int:
        return param_count(c)["total"]

    equal = [i for i, (_, c) in enumerate(ab.variants) if abs(size(c) / size(ab.variants[0][1]) - 1) <= 0.03]
    drift = max(abs(size(variants[i][1]) / size(variants[0][1]) - 1) for i in equal)
    if drift > 0.03:
        warnings.warn(
            f"{ab.name} at {width}x: variants of equal size at 1x now differ by up to {drift:.0%}; "
            f"rebalance their widths before comparing them",
            stacklevel=2,
        )
    grow = size(variants[0][1]) / size(ab.variants[0][1])
    recipe = dataclasses.replace(ab.recipe, tokens=int(ab.recipe.tokens * grow), corpus=corpus or ab.recipe.corpus)
    return Ablation(
        name=f"{ab.name}-x{width}" + (f"-{corpus}" if corpus else ""),
        variants=variants,
        recipe=recipe,
        seeds=ab.seeds,
        question=f"{ab.question} ({width}x wider)",
    )


def budget_sweep(
    ab: Ablation,
    labels: tuple[str, ...],
    factors: tuple[float, ...] = (0.25, 1.0, 3.0),
    seeds: tuple[int, ...] = (0,),
    kind: str = "budget",
) -> list[Ablation]:
    """The same variants trained on ``factor`` × the recipe's tokens (≈5, 20, 60 tokens/parameter):
    does the ranking hold when the budget changes? The 1× point reuses the ablation's own runs.
    Each budget is an ablation named ``{ab.name}-{kind}-{factor}x``."""
    variants = tuple((label, ab.config(label)) for label in labels)
    return [
        Ablation(
            name=f"{ab.name}-{kind}-{f:g}x",
            variants=variants,
            seeds=seeds,
            recipe=dataclasses.replace(ab.recipe, tokens=int(ab.recipe.tokens * f)),
            question=f"{ab.question} ({f:g}x the tokens)",
        )
        for f in factors
    ]


# Notebook 03's first exercise: one shape deeper still, 12 layers x 28 (2 heads of 14), the same budget.
DEEPER = Ablation(
    name="depth-12x28",
    question="Does 12 x 28 continue the depth sweep's trend?",
    variants=(("12×28", _shape(12, 28, 2, 64)),),
)

# The budget trend with paired seeds: the deep-thin extremes and the 5×40 optimum at ≈5, 19, 57 and
# 150 tokens per parameter (0.25x to 8x the tokens: 0.3 to 9 passes over the corpus), three seeds each.
DEPTH_TREND = budget_sweep(DEPTH, ("2×56", "5×40", "8×32"), (0.25, 1.0, 3.0, 8.0), (0, 1, 2), "trend")

# The roadmap continues from a deep-and-thin shape fixed in advance (not picked from the sweep's
# results): 5 x 40, 4 heads of 10 — so that 2 and 1 KV heads are possible in notebook 05.
DEEP_THIN = DEPTH.config("5×40")

EMBEDDING = Ablation(
    name="embedding",
    question="Does sharing the input and output embeddings cost quality, and does reinvesting the saving help?",
    variants=(
        ("untied", DEEP_THIN),
        ("tied", DEEP_THIN.replace(share_embedding=True)),
        # the 20k parameters the tie saves, spent on one more block
        ("tied + 1 layer", DEEP_THIN.replace(share_embedding=True, n_layers=6)),
    ),
)

TIED6 = EMBEDDING.config("tied + 1 layer")

GQA = Ablation(
    name="gqa",
    question="Do fewer key/value heads cost quality at equal parameters?",
    variants=(
        ("MHA (4 KV heads)", TIED6),
        # K and V shrink; the saving goes back into the feed-forward layers (as the paper reinvests it)
        ("GQA (2 KV heads)", TIED6.replace(n_kv_heads=2, ffn_hidden_dim=112)),
        ("MQA (1 KV head)", TIED6.replace(n_kv_heads=1, ffn_hidden_dim=120)),
    ),
)

# The roadmap's GQA step (2 KV heads, the saving in the FFN): the model that layer sharing starts from.
GQA6 = GQA.config("GQA (2 KV heads)")

SHARING = Ablation(
    name="sharing",
    question="Does running each block twice help at equal stored parameters, and how close does it get "
    "to a model that stores twice the blocks?",
    variants=(
        ("no sharing", GQA6),
        # the same 131k stored parameters, 12 blocks executed: A A B B C C …
        ("immediate ×2", GQA6.replace(layer_sharing="immediate")),
        # the same compute depth with every block stored: 2× the block parameters
        ("12 layers", GQA6.replace(n_layers=12)),
    ),
)

# The paper's three sharing orders at equal stored parameters and equal compute. Immediate
# sharing's runs are SHARING's; the other two orders cost 2x a plain run each, so
# this comparison has one seed, read against the seed spread SHARING measures, and notebook 06 says so.
SHARING_ORDERS = Ablation(
    name="sharing-orders",
    question="Which order of repeated blocks is best: immediate, repeat-all-over or reverse?",
    variants=(
        ("immediate", SHARING.config("immediate ×2")),
        ("repeat-all-over", GQA6.replace(layer_sharing="repeat_all")),
        ("reverse", GQA6.replace(layer_sharing="reverse")),
    ),
    seeds=(0, 1, 2),
)

# Budget dependence of the later choices (notebook 03's budget figure): 0.25x, 1x, 3x the tokens
# with three seeds (1x is the ablation itself), and 8x for tying. The 3x shared model of seed 0 is
# also the roadmap's "final small MobileLLM, trained longer".
EMBEDDING_TREND = budget_sweep(EMBEDDING, ("untied", "tied"), (0.25, 1.0, 3.0, 8.0), (0, 1, 2), "trend")
SHARING_TREND = budget_sweep(SHARING, ("no sharing", "immediate ×2"), (0.25, 1.0, 3.0), (0, 1, 2), "trend")

# Layer sharing where stored parameters are what is scarce: a model ~4x smaller than the teaching
# models (tied 3 x 24, 4 heads of 6, 2 KV heads, SwiGLU 64: 31,464 parameters) trained to ~300
# tokens per parameter, so that it is bound by what it can store rather than by its training.
SCARCE = _teach(dim=24, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden_dim=64, ffn_type="swiglu", share_embedding=True)
SHARING_SCARCE = Ablation(
    name="sharing-scarce",
    question="When a model is bound by its stored parameters, does running each block twice buy back "
    "what a model with twice the blocks gains?",
    variants=(
        ("no sharing", SCARCE),
        ("immediate ×2", SCARCE.replace(layer_sharing="immediate")),
        ("repeat-all-over ×2", SCARCE.replace(layer_sharing="repeat_all")),
        ("6 layers", SCARCE.replace(n_layers=6)),
    ),
    recipe=Recipe(tokens=9_400_000),
)

# The paper's roadmap as one chain of the variants above: every step is a config
# another ablation already trained, so this "ablation" only gathers cached runs. Like the paper's,
# the tied step is smaller (113k; the paper's 119M) until the saving is spent on depth.
ROADMAP = Ablation(
    name="roadmap",
    question="How far does each design choice move a ~130k-parameter model, one after another?",
    variants=(
        ("baseline", SWIGLU.config("ReLU (baseline)")),
        ("+ SwiGLU", SWIGLU.config("SwiGLU")),
        ("+ deep & thin", DEEP_THIN),
        ("+ tied embeddings", EMBEDDING.config("tied")),
        ("+ 1 layer", TIED6),
        ("+ GQA", GQA6),
        ("+ layer sharing", SHARING.config("immediate ×2")),
    ),
)

# Notebook 07's first exercise: layer sharing straight after SwiGLU, on the 3 x 48 shape (the first
# variant is the roadmap's "+ SwiGLU" run, read from the cache).
EARLY_SHARING = Ablation(
    name="early-sharing",
    question="Does layer sharing gain as much straight after SwiGLU (3 x 48) as at the end of the roadmap?",
    variants=(
        ("+ SwiGLU", SWIGLU.config("SwiGLU")),
        ("+ SwiGLU, shared", SWIGLU.config("SwiGLU").replace(layer_sharing="immediate")),
    ),
)


def repetition(sweep: Ablation, every: int = 3) -> Ablation:
    """``sweep`` trained on every ``every``-th training play only, on the same tokens: ``every``×
    the passes over the data at the same budget. If a budget trend came from repeating the corpus,
    the paired difference moves here; if it came from the budget, it stays."""
    return dataclasses.replace(
        sweep,
        name=f"{sweep.name}-repeat{every}",
        recipe=dataclasses.replace(sweep.recipe, train_docs_every=every),
        question=f"{sweep.question}, on every {every}th play ({every}x the passes)",
    )


# The repetition test at ≈57 tokens per parameter (3x the tokens: ~3 passes over the corpus, ~9 over a
# third of it), for the two budget trends that moved: depth's extremes and tying.
DEPTH_REPEAT = repetition(budget_sweep(DEPTH, ("2×56", "8×32"), (3.0,), (0, 1, 2), "trend")[0])
EMBEDDING_REPEAT = repetition(budget_sweep(EMBEDDING, ("untied", "tied"), (3.0,), (0, 1, 2), "trend")[0])

ABLATIONS = {
    ab.name: ab
    for ab in (
        SWIGLU,
        DEPTH,
        DEEPER,
        EMBEDDING,
        GQA,
        SHARING,
        SHARING_ORDERS,
        ROADMAP,
        EARLY_SHARING,
        SHARING_SCARCE,
        *DEPTH_TREND,
        *EMBEDDING_TREND,
        *SHARING_TREND,
        DEPTH_REPEAT,
        EMBEDDING_REPEAT,
    )
}


def get_ablation(name: str) -> Ablation:
    """The ablation called ``name``."""
    try:
        return ABLATIONS[name]
    except KeyError:
        raise ValueError(f"unknown ablation {name!r}; valid: {', '.join(ABLATIONS)}") from None
