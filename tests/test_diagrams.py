import io
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from mobilellm.course import diagrams  # noqa: E402
from mobilellm.course.diagrams import DIAGRAMS, deep_and_thin, gqa  # noqa: E402

# The labels a reader needs to read each diagram; each must appear in some text of the figure.
LABELS = {
    "block": ["x", "RMSNorm", "attention", "feed-forward", "+", "residual", "n_layers"],
    "swiglu": ["SiLU", "W1", "W2", "W3", "gate", "up", "down", "ReLU", "Linear"],
    "deep_and_thin": ["2 × 56", "8 × 32", "shallow and wide", "deep and thin"],
    "embedding_sharing": ["untied", "tied:", "token ids", "logits", "same weights, transposed", "V × d", "d × V"],
    "gqa": ["Q1", "Q4", "KV1", "KV2", "KV4", "KV cache ÷ 2", "grouped-query", "multi-head"],
    "layer_sharing": ["A", "B", "C", "stored blocks: 3, executed: 6", "repeat-all-over", "reverse"],
    "decode_step": ["weights A", "in cache", "memory", "KV 6", "6 cache slots", "stored blocks"],
    "on_device": ["checkpoint\n(safetensors)", ".pte", "ExecuTorch\nruntime", ".gguf", "llama.cpp"],
}


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_title() for ax in fig.axes]


def render(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.savefig(buffer, format="png", dpi=60)
    return buffer.getvalue()


def test_the_eight_diagrams_are_registered():
    assert list(DIAGRAMS) == [
        "block",
        "swiglu",
        "deep_and_thin",
        "embedding_sharing",
        "gqa",
        "layer_sharing",
        "decode_step",
        "on_device",
    ]
    assert set(DIAGRAMS) == set(LABELS)


@pytest.mark.parametrize("name", list(LABELS))
def test_diagram_renders_with_its_labels(name):
    open_before = plt.get_fignums()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = DIAGRAMS[name]()
    assert isinstance(fig, Figure)
    assert plt.get_fignums() == open_before, "diagrams must not register figures with pyplot"
    png = render(fig)
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    found = texts(fig)
    # one-character labels ("x", "+", "A") must be a whole text, not a letter inside a longer one
    missing = [label for label in LABELS[name] if not any(label == t or len(label) > 1 and label in t for t in found)]
    assert not missing, f"{name} lost its labels {missing}; it has {found}"
    assert all(t.get_fontsize() >= 9 for ax in fig.axes for t in ax.texts)


def test_layer_sharing_draws_the_three_orders():
    letters = "".join(t for t in texts(DIAGRAMS["layer_sharing"]()) if t in {"A", "B", "C"})
    assert letters == "AABBCC" + "ABCABC" + "ABCCBA"


def test_deep_and_thin_shapes_are_configurable():
    fig = deep_and_thin(shallow=(3, 48), deep=(5, 40))
    found = texts(fig)
    assert "3 × 48" in found and "5 × 40" in found and "2 × 56" not in found
    assert len(fig.axes[0].patches) == 3 + 5  # one box per block, nothing else
    render(fig)


def test_gqa_counts_follow_the_head_numbers():
    found = texts(gqa(n_heads=8, n_kv_heads=2))
    heads = [t for t in found if t.startswith(("Q", "KV")) and "cache" not in t]
    queries, kv_mha = [f"Q{i}" for i in range(1, 9)], [f"KV{i}" for i in range(1, 9)]
    assert sorted(heads) == sorted(queries * 2 + kv_mha + ["KV1", "KV2"])  # both panels: 8 Q; 8 KV vs 2 KV
    assert any("KV cache ÷ 4" in t for t in found)
    assert not any("÷" in t for t in texts(gqa(n_heads=4, n_kv_heads=4)))
    with pytest.raises(ValueError, match="divide"):
        gqa(n_heads=4, n_kv_heads=3)


def test_show_returns_a_png_and_names_the_diagrams_it_knows(tmp_path, monkeypatch):
    from mobilellm.course import plots

    monkeypatch.setattr(plots, "output_dirs", lambda settings=None: (tmp_path, tmp_path))
    image = diagrams.show("gqa", n_heads=6, n_kv_heads=3)
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "diagram_gqa.png").is_file()
    with pytest.raises(ValueError, match="valid: block, swiglu"):
        diagrams.show("nope")
