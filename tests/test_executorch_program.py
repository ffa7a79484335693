"""The KV-cached ExecuTorch program: exact against the eager model under every layer sharing, its
arguments checked, and ExecuTorch's own Llama export of the same weights as a peer. (The quantized
programs: test_executorch_quantized.py.)"""

import contextlib
import io

import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.config import LAYER_SHARING

from .conftest import export_config

pytest.importorskip("executorch")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from mobilellm.executorch_program import (  # noqa: E402
    CachedDecoder,
    _load_custom_ops,
    check_group_size,
    export_program,
    tokenizer_id,
)
from mobilellm.executorch_runtime import PteDecoder, program_census  # noqa: E402

WINDOW = 48  # the programs' cache window in these tests


cfg = export_config  # the model of the shared `trained` fixture (conftest)


def greedy_eager(model: MobileLLM, prompt: torch.Tensor, n: int) -> list[int]:
    with torch.no_grad():
        return model.generate(prompt[None], n)[0, prompt.numel() :].tolist()


# --- the wrapper in eager PyTorch (no lowering: fast) ---------------------------------------------


@pytest.mark.parametrize("sharing", LAYER_SHARING)
def test_cached_decoder_matches_the_model_in_eager(sharing):
    _load_custom_ops()
    model = MobileLLM(cfg(layer_sharing=sharing)).eval()
    dec = CachedDecoder(model, WINDOW)
    assert len([b for b in dec.buffers() if b.shape[1] == WINDOW]) == 2 * model.cfg.n_executed_layers
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        ref = model(ids)[0]
        # a 7-token chunk, then 5, then one token at a time: every path through the cache
        got = [dec(ids[:, :7], torch.tensor([0]))[0], dec(ids[:, 7:12], torch.tensor([7]))[0]]
        got += [dec(ids[:, t : t + 1], torch.tensor([t]))[0] for t in range(12, 20)]
    torch.testing.assert_close(torch.stack(got), ref[[6, 11, *range(12, 20)]], atol=1e-5, rtol=0)


def test_group_size_must_tile_the_linears():
    model = MobileLLM(cfg())
    check_group_size(model, 32)
    check_group_size(model, 0)  # one scale per row
    with pytest.raises(ValueError, match="divides .*ffn_hidden_dim.*a multiple of 32 dividing 32"):
        check_group_size(model, 64)
    with pytest.raises(ValueError, match="must be 0 .* or a multiple of 32"):
        export_program(model, "unused.pte", "8da4w", group_size=16)
    with pytest.raises(ValueError, match=r"multiples of 32 .*'dim': 48.*use --quant int8"):
        check_group_size(MobileLLM(cfg(dim=48, ffn_hidden_dim=128)), 0)


@pytest.mark.parametrize("export", ["export_program", "export_llama_peer"])
def test_export_argument_errors(export, tmp_path):
    import mobilellm.course.bench.peers as peers
    import mobilellm.executorch_program as ep

    ep = peers if export == "export_llama_peer" else ep
    model = MobileLLM(cfg())
    with pytest.raises(ValueError, match="quant 'int4' is not one of fp32, int8, 8da4w"):
        getattr(ep, export)(model, tmp_path / "x.pte", "int4")
    with pytest.raises(ValueError, match=r"max_len \(65\) must be in \[2, max_seq_len = 64\]"):
        getattr(ep, export)(model, tmp_path / "x.pte", max_len=65)
    with pytest.raises(ValueError, match="multiples of 32"):
        getattr(ep, export)(MobileLLM(cfg(dim=48, ffn_hidden_dim=128)), tmp_path / "x.pte", "8da4w")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PteDecoder(tmp_path / "missing.pte")
    (tmp_path / "junk.pte").write_bytes(b"not a program")
    with pytest.raises(ValueError, match="is not an ExecuTorch program"):
        PteDecoder(tmp_path / "junk.pte")
    # random bytes abort the runtime (exit 134) unless the header is looked at first
    (tmp_path / "random.pte").write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(ValueError, match="header lacks the 'ET' file identifier"):
        PteDecoder(tmp_path / "random.pte")


# --- lowered programs ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sharing", LAYER_SHARING)
def test_fp32_program_greedy_equals_eager(sharing, tmp_path):
    torch.manual_seed(1)
    model = MobileLLM(cfg(layer_sharing=sharing)).eval()
    path = export_program(model, tmp_path / "m.pte", "fp32", max_len=WINDOW, tokenizer_fingerprint="9f" * 32)
    dec = PteDecoder(path)
    assert dec.meta["get_n_layers"] == model.cfg.n_executed_layers and dec.meta["get_stored_blocks"] == 2
    assert dec.meta["get_tokenizer_id"] == tokenizer_id("9f" * 32) == int("9f" * 7 + "9", 16)
    # one cache slot per executed layer: a K and a V update and one attention each, whatever the sharing
    census = program_census(path)
    n = model.cfg.n_executed_layers
    assert census["kernels"]["llama::update_cache"] == 2 * n and census["kernels"]["llama::custom_sdpa"] == n
    assert census["delegate_calls"] >= n and census["instructions"] >= census["kernel_calls"] + census["delegate_calls"]
    with pytest.raises(ValueError, match="no method 'decode'"):
        program_census(path, "decode")
    for n in (1, 5, 17):
        prompt = torch.randint(0, 128, (n,))
        want = greedy_eager(model, prompt, WINDOW - n)
        assert list(dec.generate(prompt, WINDOW - n)) == want, (sharing, n)
    # a prompt prefilled in chunks of 4 decodes the same
    prompt = torch.randint(0, 128, (17,))
    assert list(dec.generate(prompt, 10, chunk=4)) == greedy_eager(model, prompt, 10)


# --- the peer: ExecuTorch's own Llama export of the same weights -------------------------------------


@pytest.mark.parametrize("sharing", ["none", "repeat_all"])
def test_llama_checkpoint_is_the_same_model_in_executorchs_llama(sharing):
    """Our weights in Meta's layout, loaded into ExecuTorch's eager Llama: the same logits (no lowering)."""
    from executorch.examples.models.llama.llama_transformer import construct_transformer
    from executorch.examples.models.llama.model_args import ModelArgs

    from mobilellm.course.bench.peers import llama_checkpoint

    torch.manual_seed(2)
    model = MobileLLM(cfg(layer_sharing=sharing)).eval()
    sd, params = llama_checkpoint(model)
    assert params["n_layers"] == model.cfg.n_executed_layers == (2 if sharing == "none" else 4)
    assert params["use_hf_rope"]
    if sharing == "repeat_all":  # A B A B: the repeats are copies of the blocks' weights
        assert torch.equal(sd["layers.2.attention.wq.weight"], sd["layers.0.attention.wq.weight"])
        assert not torch.equal(sd["layers.1.attention.wq.weight"], sd["layers.0.attention.wq.weight"])
    llama = construct_transformer(ModelArgs(**params, max_seq_len=64, max_context_len=64)).eval()
    missing, unexpected = llama.load_state_dict(sd, strict=False)
    assert not unexpected and not [k for k in missing if "rope" not in k and "freqs" not in k], missing
    ids = torch.randint(0, 128, (1, 20))
    with torch.no_grad():
        ours, theirs = model(ids)[0, -1], llama(ids)
    theirs = theirs[0] if isinstance(theirs, tuple) else theirs
    torch.testing.assert_close(theirs.reshape(-1, 128)[-1], ours, atol=1e-4, rtol=0)


def test_llama_checkpoint_needs_swiglu():
    from mobilellm.course.bench.peers import llama_checkpoint

    with pytest.raises(ValueError, match="SwiGLU"):
        llama_checkpoint(MobileLLM(cfg(ffn_type="relu")))


@pytest.mark.slow
def test_llama_peer_program_decodes_as_ours(tmp_path):
    """ExecuTorch's export_llama of a layer-shared model (repeats expanded) greedily decodes as the eager model."""
    from mobilellm.course.bench.peers import export_llama_peer

    torch.manual_seed(3)
    model = MobileLLM(cfg(layer_sharing="immediate")).eval()
    path = export_llama_peer(model, tmp_path / "peer.pte", "fp32", max_len=WINDOW)
    dec = PteDecoder(path)
    assert dec.meta["get_n_layers"] == 4 and dec.max_len == WINDOW
    assert program_census(path)["kernels"]["llama::custom_sdpa"] == 4  # its cache and attention ops, as ours
    prompt = torch.randint(0, 128, (5,))
    assert list(dec.generate(prompt, 20)) == greedy_eager(model, prompt, 20)


def test_pad_ffn_keeps_the_function_and_makes_8da4w_possible():
    from mobilellm.executorch_program import pad_ffn

    torch.manual_seed(4)
    model = MobileLLM(cfg(dim=32, ffn_hidden_dim=88, layer_sharing="immediate")).eval()
    with pytest.raises(ValueError, match="multiples of 32"):
        check_group_size(model, 32)
    padded = pad_ffn(model)
    assert padded.cfg.ffn_hidden_dim == 96 and padded.cfg.layer_sharing == "immediate"
    check_group_size(padded, 32)
    assert padded.lm_head.weight is padded.embed_tokens.weight  # the tie survives
    ids = torch.randint(0, 128, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(padded(ids), model(ids), atol=1e-5, rtol=0)
    assert model.cfg.ffn_hidden_dim == 88  # the original is untouched
    assert pad_ffn(padded).cfg.ffn_hidden_dim == 96  # already a multiple: unchanged
    with pytest.raises(ValueError, match="SwiGLU"):
        pad_ffn(MobileLLM(cfg(ffn_type="relu")))


@pytest.mark.slow
def test_optimum_peer_program_decodes_as_ours(tmp_path):
    """optimum-executorch's export of a layer-shared model (Hugging Face format, repeats expanded), in its own
    environment (`make optimum-venv`), greedily decodes as the eager model through the same PteDecoder."""
    from mobilellm.course.bench.peers import export_optimum_peer, optimum_python

    if optimum_python() is None:
        pytest.skip("no optimum-executorch environment (.venv-optimum): `make optimum-venv` makes one")
    torch.manual_seed(3)
    model = MobileLLM(cfg(layer_sharing="immediate")).eval()
    dec = PteDecoder(export_optimum_peer(model, tmp_path / "optimum.pte", "fp32", max_len=WINDOW))
    assert dec.meta["get_n_layers"] == 4 and dec.max_len == WINDOW and dec._positions
    prompt = torch.randint(0, 128, (5,))
    assert list(dec.generate(prompt, 20)) == greedy_eager(model, prompt, 20)
    assert list(dec.generate(prompt, 10, chunk=2)) == greedy_eager(model, prompt, 10)  # prefill in chunks
    with pytest.raises(FileNotFoundError, match="make optimum-venv"):
        export_optimum_peer(model, tmp_path / "x.pte", python=tmp_path / "no-python")
