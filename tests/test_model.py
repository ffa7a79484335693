import math

import pytest
import torch
import torch.nn.functional as F

from mobilellm import MobileLLM
from mobilellm.model import Attention, FeedForward, RMSNorm, rope_tables, sample_next

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
    T, hd = 6, cfg.hd
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
    hooks = [b.register_forward_hook(lambda m, i, o, j=j: calls.append(j))
             for j, b in enumerate(shared.layers)]
    shared(torch.randint(0, 97, (1, 3)))
    for h in hooks:
        h.remove()
    assert tuple(calls) == shared.cfg.execution_order


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


def test_sharing_with_one_cache_slot_per_block_would_be_wrong():
    """The official bug: keying the cache by block overwrites pass 1 with pass 2. Ours does not."""
    cfg = tiny_config(layer_sharing="immediate", init="fan_in")
    model = MobileLLM(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 8))
    cache = model.new_cache(1)
    model(prompt, cache)
    slot_a, slot_b = cache.k[0][:, :, :8], cache.k[1][:, :, :8]  # block 0, first and second pass
    assert not torch.allclose(slot_a, slot_b)


def test_chunked_prefill_equals_full_forward():
    cfg = tiny_config(layer_sharing="immediate")
    model = MobileLLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    cache = model.new_cache(2, 20)
    parts = [model(x[:, :7], cache), model(x[:, 7:8], cache), model(x[:, 8:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), model(x), atol=1e-5, rtol=1e-5)


def test_eos_stops_and_pads():
    cfg = tiny_config(init="fan_in")
    model = MobileLLM(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, 4))
    first = model.generate(prompt, 1)[0, -1].item()
    out = model.generate(prompt, 10, eos_id=first)
    assert out.shape == (1, 5) and out[0, -1].item() == first


def test_sampling_respects_top_k_and_top_p():
    logits = torch.tensor([[5.0, 4.0, 0.0, -1.0]]).repeat(200, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=g).tolist()) <= {0, 1}
    # token 0 holds ~72% of the mass: top_p 0.5 keeps it alone
    assert set(sample_next(logits, 1.0, top_p=0.5, generator=g).tolist()) == {0}
    assert sample_next(logits[:1], 0.0).item() == 0
    # sampled generate is reproducible with a generator
    model = MobileLLM(tiny_config()).eval()
    p = torch.zeros(1, 1, dtype=torch.long)
    a = model.generate(p, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    b = model.generate(p, 8, temperature=1.0, top_k=5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


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


def test_sdpa_path_matches_explicit_softmax():
    cfg = tiny_config()
    model = MobileLLM(cfg).eval()
    x = torch.randint(0, cfg.vocab_size, (1, 9))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        ref = model(x)
    torch.testing.assert_close(model(x), ref)
    assert F.softmax(ref, -1).sum(-1).allclose(torch.ones(1, 9))
