"""The paper's numbers, quoted once (Liu et al., MobileLLM, ICML 2024, arXiv 2402.14905).

Every notebook, figure and README table that quotes the paper reads it from here, so one number
cannot be quoted two ways. Accuracies are the average zero-shot accuracy (%) over eight commonsense
tasks (ARC-e, ARC-c, BoolQ, PIQA, SIQA, HellaSwag, OBQA, WinoGrande); "points" are differences of
that average. Each constant names where in the paper it comes from.
"""

from __future__ import annotations

# Design roadmap (Fig. 2), 125M models. The first five steps are trained on 0.25T tokens; the
# paper then trains the GQA model on 1T tokens (46.3) and adds layer sharing (47.0). Its GQA step
# also spends the embedding saving on depth (32 layers; see EMBEDDING_SHARING).
ROADMAP_125M = {
    "baseline": 42.6,  # 12 layers x 768, FC-ReLU-FC, MHA, untied embeddings
    "+ SwiGLU": 43.9,
    "+ deep & thin": 44.8,  # 30 layers, same parameters
    "+ tied embeddings": 44.6,  # 11.8% fewer parameters
    "+ GQA": 45.0,  # 16 -> 4 KV heads, with the saved parameters reinvested as depth
    "1T tokens": 46.3,  # MobileLLM-125M
    "+ layer sharing": 47.0,  # MobileLLM-LS-125M (immediate block-wise sharing, 1T tokens)
}

# Embedding sharing at 125M, 0.25T tokens (the embedding-sharing ablation): untied 30 layers, tied
# 30 layers, tied with the saved parameters spent on two more layers.
EMBEDDING_SHARING = {"untied, 30 layers (135M)": 44.8, "tied, 30 layers (119M)": 44.6, "tied, 32 layers (125M)": 45.0}

# Layer-sharing strategies (the sharing-strategy ablation) at equal stored parameters: average
# accuracy of the two strategies the paper compares most closely, for 125M and 350M.
SHARING_STRATEGIES = {
    "125M": {"immediate block-wise": 45.0, "repeat-all-over": 45.2},
    "350M": {"immediate block-wise": 50.2, "repeat-all-over": 50.7},
}

# Final models (Table 3), 1T tokens: average over the eight tasks, and per task for 125M and 350M.
TASKS = ("ARC-e", "ARC-c", "BoolQ", "PIQA", "SIQA", "HellaSwag", "OBQA", "WinoGrande")
ZERO_SHOT = {
    "MobileLLM-125M": 46.3,
    "MobileLLM-LS-125M": 47.0,
    "MobileLLM-350M": 51.3,
    "MobileLLM-LS-350M": 52.1,
    "MobileLLM-600M": 54.3,
    "MobileLLM-1B": 57.3,
    "MobileLLM-1.5B": 59.4,
    "OPT-125M": 42.6,
    "Pythia-160M": 42.5,
    "RWKV-169M": 43.6,
    "Pythia-410M": 46.6,
    "RWKV-430M": 47.0,
}
PER_TASK = {
    "MobileLLM-125M": dict(zip(TASKS, (43.9, 27.1, 60.2, 65.3, 42.4, 38.9, 39.5, 53.1), strict=True)),
    "MobileLLM-350M": dict(zip(TASKS, (53.8, 33.5, 62.4, 68.6, 44.7, 49.6, 40.0, 57.6), strict=True)),
}

# On-device latency (the latency study, iPhone 13, ExecuTorch, fp16), milliseconds: load, init, execute per token.
IPHONE13_MS = {
    "MobileLLM-125M": (39.2, 1361.7, 15.6),
    "MobileLLM-LS-125M": (43.6, 1388.2, 16.0),
    "60 layers, unshared": (68.6, 3347.7, 29.0),
}

# Pretraining: 1T tokens on 32 A100s, days per model (keyed by this package's config names).
TRAINING_DAYS = {
    "mobilellm-125m": 3,
    "mobilellm-350m": 6,
    "mobilellm-600m": 8,
    "mobilellm-1b": 12,
    "mobilellm-1.5b": 18,
}


def roadmap_steps() -> dict[str, float]:
    """Each roadmap step's change in points from the step before it; layer sharing is measured from
    the 1T-token model, as the paper trains it."""
    labels = list(ROADMAP_125M)
    steps = {b: round(ROADMAP_125M[b] - ROADMAP_125M[a], 1) for a, b in zip(labels, labels[1:], strict=False)}
    steps.pop("1T tokens")  # more tokens, not a design choice
    return steps


def step(table: dict[str, float], a: str, b: str) -> float:
    """The paper's change from ``a`` to ``b`` in points, e.g. ``step(ROADMAP_125M, "baseline", "+ SwiGLU")``."""
    for key in (a, b):
        if key not in table:
            raise ValueError(f"no entry {key!r}; entries: {list(table)}")
    return round(table[b] - table[a], 1)
