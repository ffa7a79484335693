import math

import pytest
import torch
import torch.nn.functional as F

from mobilellm import MobileLLM
from mobilellm.model import Attention, FeedForward, KVCache, RMSNorm, apply_rope, rope_tables, sample_next

from .conftest import tiny_config

SHARING = ["none", "immediate", "repeat_all", "reverse"]


def test_forward_shape():
    cfg = tiny_config()
    logits = MobileLLM(cfg)(torch.randint(0, cfg.vocab_size, (2, 7)))
    assert logits.shape == (2, 7, cfg.vocab_size)


def test_rmsnorm_matches_formula():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 8))
    x = torch.randn(3, 8)
    expected = x / torch.sqrt((x**2).mean(-1, keepdim=True) + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)


def test_swiglu_matches_hand_written():
    cfg = tiny_config()
    ffn = FeedForward(cfg)
    x = torch.randn(2, 5, cfg.dim)
    W1, W3, W2 = ffn.gate_proj.weight, ffn.up_proj.weight, ffn.down_proj.weight
    a = x @ W1.T
    expected = ((a * torch.sigmoid(a)) * (x @ W3.T)) @ W2.T
    torch.testing.assert_close(ffn(x), expected)


@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_plain_ffn_matches_hand_written(act):
    ffn = FeedForward(tiny_config(ffn_type=act))
    assert not hasattr(ffn, "gate_proj")
    x = torch.randn(4, 32)
    h = x @ ffn.up_proj.weight.T
    h = torch.clamp(h, min=0) if act == "relu" else 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(ffn(x), h @ ffn.down_proj.weight.T)


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_attention_matches_per_head_loop(n_kv_heads):
    """GQA written the slow way: query head h reads KV head h // (n_heads / n_kv_heads)."""
    cfg = tiny_config(n_kv_heads=n_kv_heads)
    attn = Attention(cfg)
    T, hd = 6, cfg.head_dim
    x = torch.randn(1, T, cfg.dim)
    cos, sin = rope_tables(hd, T, cfg.rope_theta)

    def rope(v):  # rotate pairs (i, i + hd/2) by angle pos * theta^(-2i/hd)
        out = v.clone()
        for pos in range(T):
            for i in range(hd // 2):
                ang = pos * cfg.rope_theta ** (-2 * i / hd)
                a, b = v[pos, i], v[pos, i + hd // 2]
                out[pos, i] = a * math.cos(ang) - b * math.sin(ang)
                out[pos, i + hd // 2] = b * math.cos(ang) + a * math.sin(ang)
        return out

    q = (x[0] @ attn.q_proj.weight.T).view(T, cfg.n_heads, hd)
    k = (x[0] @ attn.k_proj.weight.T).view(T, n_kv_heads, hd)
    v = (x[0] @ attn.v_proj.weight.T).view(T, n_kv_heads, hd)
    heads = []
    for h in range(cfg.n_heads):
        g = h // (cfg.n_heads // n_kv_heads)
        scores = rope(q[:, h]) @ rope(k[:, g]).T / math.sqrt(hd)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, g])
    expected = torch.cat(heads, dim=-1) @ attn.o_proj.weight.T
    torch.testing.assert_close(attn(x, cos, sin)[0], expected, atol=1e-5, rtol=1e-4)


def test_tied_embeddings_share_storage_and_count_once():
    tied, untied = MobileLLM(tiny_config()), MobileLLM(tiny_config(share_embedding=False))
    assert tied.lm_head.weight.data_ptr() == tied.embed_tokens.weight.data_ptr()
    assert untied.lm_head.weight.data_ptr() != untied.embed_tokens.weight.data_ptr()
    n = tied.embed_tokens.weight.numel()
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(untied) - count(tied) == n
    # A gradient step on the tied model moves one tensor seen from both ends.
    tied(torch.randint(0, 97, (1, 4))).sum().backward()
    assert tied.lm_head.weight.grad is tied.embed_tokens.weight.grad


@pytest.mark.parametrize("sharing", SHARING)
def test_layer_sharing_keeps_params_and_doubles_depth(sharing):
    base, shared = MobileLLM(tiny_config()), MobileLLM(tiny_config(layer_sharing=sharing))
    assert sum(p.numel() for p in shared.parameters()) == sum(p.numel() for p in base.parameters())
    calls = []
    hooks = [b.register_forward_hook(lambda m, i, o, j=j: calls.append(j)) for j, b in enumerate(shared.layers)]
    shared(torch.randint(0, 97, (1, 3)))
    for h in hooks:
        h.remove()
    assert tuple(calls) == shared.cfg.execution_order
    assert len(calls) == (1 if sharing == "none" else 2) * len(shared.layers)
    assert sorted(set(calls)) == list(range(len(shared.layers)))  # every stored block runs


def greedy_by_full_forward(model, prompt, n):
    seq = prompt
    for _ in range(n):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.mark.parametrize("sharing", SHARING)
@pytest.mark.parametrize("prompt_len,batch", [(1, 1), (5, 3), (17, 2)])
def test_cached_generate_equals_full_forward(sharing, prompt_len, batch):
    cfg = tiny_config(layer_sharing=sharing, init="fan_in")
    model = MobileLLM(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (batch, prompt_len))
    out = model.generate(prompt, max_new_tokens=12)
    assert out.shape == (batch, prompt_len + 12)
    assert torch.equal(out, greedy_by_full_forward(model, prompt, 12))


class PerBlockCache(KVCache):
    """The official code's cache: one slot per *stored* block, so a block run twice writes one slot twice."""

    def __init__(self, model: MobileLLM, batch_size: int, max_len: int) -> None:
        super().__init__(model.cfg, batch_size, max_len)
        self.order = model.cfg.execution_order

    def update(self, slot, k, v):
        return super().update(self.order[slot], k, v)


def greedy_with_cache(model, prompt, n, cache):
    """Prefill once, then one cached step per token: what generate does, with the cache given."""
    logits = model(prompt, cache)[:, -1]
    out = [prompt]
    for _ in range(n):
        nxt = logits.argmax(-1, keepdim=True)
        out.append(nxt)
        logits = model(nxt, cache)[:, -1]
    return torch.cat(out, dim=1)


@torch.no_grad()
def test_sharing_with_one_cache_slot_per_block_gives_wrong_tokens():
    """The official bug: keying the cache by block overwrites pass 1 with pass 2. Ours does not."""
    cfg = tiny_config(layer_sharing="immediate", init="fan_in")
    model = MobileLLM(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (2, 8))
    n = 12
    reference = greedy_by_full_forward(model, prompt, n)
    per_block = greedy_with_cache(model, prompt, n, PerBlockCache(model, 2, 8 + n + 1))
    per_layer = greedy_with_cache(model, prompt, n, model.new_cache(2, 8 + n + 1))
    assert torch.equal(per_layer, reference)
    # The prefill is right (each pass reads the keys it just wrote); every step after it is not.
    assert torch.equal(per_block[:, :9], reference[:, :9])
    assert not torch.equal(per_block, reference)


def test_chunked_prefill_equals_full_forward():
    cfg = tiny_config(layer_sharing="immediate")
    model = MobileLLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    cache = model.new_cache(2, 20)
    parts = [model(x[:, :7], cache), model(x[:, 7:8], cache), model(x[:, 8:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), model(x), atol=1e-5, rtol=1e-5)


def first_index(row, token):
    hits = (row == token).nonzero()
    return int(hits[0]) if len(hits) else len(row)


@torch.no_grad()
def test_eos_stops_and_pads():
    """Row 0 hits EOS first and is padded with it; decoding stops when row 1 hits it too."""
    cfg = tiny_config(init="fan_in")
    model = MobileLLM(cfg).eval()
    T, n = 4, 12
    prompts = torch.randint(0, cfg.vocab_size, (16, T))
    free = model.generate(prompts, n)[:, T:]  # rows decode independently: no EOS, no padding
    # Two rows and an EOS id that the first emits at least two steps before the second, both before
    # the end, and that free decoding would not repeat in between (so the padding shows).
    i, j, eos, a, b = next(
        (i, j, t, a, b)
        for i in range(16)
        for j in range(16)
        if i != j
        for t in free[i].unique().tolist()
        for a, b in [(first_index(free[i], t), first_index(free[j], t))]
        if a + 2 <= b < n - 1 and (free[i, a + 1 : b + 1] != t).any()
    )
    prompt, free = prompts[[i, j]], free[[i, j]]
    out = model.generate(prompt, n, eos_id=eos)
    assert out.shape == (2, T + b + 1)  # stopped early, at row 1's EOS
    assert torch.equal(out[:, :T], prompt)
    assert torch.equal(out[0, T : T + a + 1], free[0, : a + 1])
    assert (out[0, T + a :] == eos).all()  # padded after its EOS, not decoded on
    assert torch.equal(out[1, T:], free[1, : b + 1])


def test_sampling_respects_top_k_and_top_p():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    # token 1 holds ~27% of the mass: 200 draws limited to the top 2 see both, and nothing else
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) == {0, 1}
    # token 0 holds ~72% of the mass: top_p 0.5 keeps it alone, top_p 0.9 adds token 1 (to ~99%)
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample_next(logits, 1.0, top_p=0.9, generator=g).tolist()) == {0, 1}
    # a high temperature flattens the distribution: all four tokens come up
    assert set(sample_next(logits, 10.0, generator=g).tolist()) == {0, 1, 2, 3}
    assert sample_next(logits[:1], 0.0).item() == 0
    # sampled generate is reproducible with a generator, and another seed draws another text
    model = MobileLLM(tiny_config()).eval()
    p = torch.zeros(1, 1, dtype=torch.long)
    a, b, c = (
        model.generate(p, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)
    )
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_inputs_raise_clear_errors():
    cfg = tiny_config()
    model = MobileLLM(cfg)
    with pytest.raises(ValueError, match=r"token id 97 is outside the vocabulary \[0, 97\)"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="longer than the limit 64"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(batch, seq_len\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        model(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"prompt \(60\) \+ max_new_tokens \(10\) exceeds max_seq_len"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        model.generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=1, top_p=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), 1)


def test_fan_in_init_is_scaled_to_width():
    model = MobileLLM(tiny_config(init="fan_in", dim=64, n_heads=4))
    q = model.layers[0].self_attn.q_proj.weight
    assert abs(q.std().item() - 64**-0.5) < 0.02
    o = model.layers[0].self_attn.o_proj.weight
    assert o.std().item() < q.std().item() / 2  # residual outputs scaled down with depth
    normal = MobileLLM(tiny_config())
    assert abs(normal.layers[0].mlp.up_proj.weight.std().item() - 0.02) < 0.003
    assert torch.all(normal.norm.weight == 1)


def explicit_attention(attn, x, cos, sin):
    """softmax(Q K^T / sqrt(d) + causal mask) V over the whole sequence, GQA by repeating KV heads."""
    B, T, _ = x.shape
    q = apply_rope(attn.q_proj(x).view(B, T, attn.n_heads, attn.head_dim).transpose(1, 2), cos, sin)
    k = apply_rope(attn.k_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2), cos, sin)
    v = attn.v_proj(x).view(B, T, attn.n_kv_heads, attn.head_dim).transpose(1, 2)
    rep = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    mask = torch.full((T, T), float("-inf")).triu(1)  # position i sees positions <= i
    weights = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim) + mask, dim=-1)
    return attn.o_proj((weights @ v).transpose(1, 2).reshape(B, T, -1))


@torch.no_grad()
def test_sdpa_paths_match_explicit_softmax():
    """All three SDPA calls: causal prefill, a chunk after a prefix (explicit mask), one cached token."""
    cfg = tiny_config()
    attn = Attention(cfg)
    x = torch.randn(2, 12, cfg.dim)
    cos, sin = rope_tables(cfg.head_dim, 12, cfg.rope_theta)
    expected = explicit_attention(attn, x, cos, sin)
    torch.testing.assert_close(attn(x, cos, sin), expected, atol=1e-5, rtol=1e-4)
    cache = KVCache(cfg, 2, 12)
    parts = []
    for lo, hi in [(0, 5), (5, 9), (9, 10), (10, 12)]:  # prefill, chunk, one token, chunk
        parts.append(attn(x[:, lo:hi], cos[lo:hi], sin[lo:hi], cache, 0))
        cache.pos = hi
    torch.testing.assert_close(torch.cat(parts, dim=1), expected, atol=1e-5, rtol=1e-4)
