"""GGUF export: transformers reads the file back with our logits (F32: equal; F16: fp16 rounding only;
Q8_0 and Q4_0: exactly gguf's own rounding of our weights), layer sharing written out, and the tokenizer's
pieces intact."""

import json

import pytest
import torch

from mobilellm import MobileLLM

from .conftest import tiny_config

gguf = pytest.importorskip("gguf")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to load a GGUF file
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

from mobilellm.gguf_export import gguf_tensors, read_back, write_gguf  # noqa: E402


def cfg(**changes):
    return tiny_config(
        **{
            "vocab_size": 128,
            "dim": 64,
            "n_layers": 2,
            "ffn_hidden_dim": 96,
            "max_seq_len": 64,
            "init": "fan_in",
            **changes,
        }
    )


def rounded(model: MobileLLM, round_matrix) -> MobileLLM:
    """The model with every matrix passed through ``round_matrix``, as a file stores it (norms stay fp32)."""
    twin = MobileLLM(model.cfg).eval()
    twin.load_state_dict({k: (round_matrix(v) if v.dim() == 2 else v) for k, v in model.state_dict().items()})
    return twin


def fp16_rounded(model: MobileLLM) -> MobileLLM:
    return rounded(model, lambda w: w.half().float())


def block_rounded(model: MobileLLM, gguf_type: str) -> MobileLLM:
    """Each row quantized in blocks of 32 and back, with gguf's own reference code (as a reader dequantizes)."""
    qtype = gguf.GGMLQuantizationType[gguf_type.upper()]
    return rounded(
        model, lambda w: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype), qtype).copy())
    )


@pytest.mark.parametrize("sharing", ["none", "immediate", "reverse"])
@pytest.mark.parametrize("share_embedding", [True, False])
def test_f16_reads_back_with_the_same_logits(sharing, share_embedding, small_data, tmp_path):
    model = MobileLLM(cfg(layer_sharing=sharing, share_embedding=share_embedding)).eval()
    path = write_gguf(model, tmp_path / "m.gguf", small_data.tokenizer, "f16")
    hf = read_back(path)
    assert hf.config.num_hidden_layers == model.cfg.n_executed_layers
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        got, ref = hf(ids).logits, fp16_rounded(model)(ids)
        exact = model(ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)  # only the weights' fp16 rounding differs
    assert (got - exact).abs().max() < 0.01 * exact.abs().max()


def test_f32_reads_back_exactly(small_data, tmp_path):
    model = MobileLLM(cfg(layer_sharing="immediate")).eval()
    path = write_gguf(model, tmp_path / "m.gguf", small_data.tokenizer, "f32")
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(read_back(path)(ids).logits, model(ids), atol=1e-5, rtol=1e-5)


# Bytes per 32 weights against F16's 64: Q8_0 34 (int8 + an fp16 scale), Q4_0 18 (4-bit + the scale); the
# tokenizer and norms are the same in every file. Agreement with the unquantized model: random weights
# (near-ties in the argmax), and Q4_0 at width 64 is coarse.
@pytest.mark.parametrize("gguf_type, size_below, agree", [("q8_0", 0.65, 0.9), ("q4_0", 0.4, 0.5)])
def test_quantized_types_read_back_as_quantized(gguf_type, size_below, agree, small_data, tmp_path):
    torch.manual_seed(0)
    model = MobileLLM(cfg(layer_sharing="repeat_all")).eval()
    f16 = write_gguf(model, tmp_path / "f16.gguf", small_data.tokenizer, "f16")
    q = write_gguf(model, tmp_path / "q.gguf", small_data.tokenizer, gguf_type)
    ids = torch.randint(0, 128, (4, 32))
    with torch.no_grad():
        got, ref, exact = read_back(q)(ids).logits, block_rounded(model, gguf_type)(ids), model(ids)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=0)  # the file holds exactly gguf's quantized weights
    assert (got.argmax(-1) == exact.argmax(-1)).float().mean() >= agree
    assert q.stat().st_size < size_below * f16.stat().st_size
    kinds = {t.name: t.tensor_type for t in gguf.GGUFReader(q).tensors}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType[gguf_type.upper()]
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32


def test_tokenizer_is_in_the_file(small_data, tmp_path):
    tok = small_data.tokenizer
    path = write_gguf(MobileLLM(cfg()), tmp_path / "m.gguf", tok)
    reader = gguf.GGUFReader(path)
    field = reader.fields["tokenizer.ggml.tokens"]
    pieces = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
    assert pieces == [tok.sp.id_to_piece(i) for i in range(tok.vocab_size)]
    types = reader.fields["tokenizer.ggml.token_type"]
    assert int(types.parts[types.data[tok.sp.piece_to_id("\n")]][0]) == 4  # user-defined, as in SentencePiece
    eos = reader.fields["tokenizer.ggml.eos_token_id"]
    assert int(eos.parts[eos.data[0]][0]) == tok.eos_id


def test_shared_blocks_are_written_out_in_execution_order():
    model = MobileLLM(cfg(layer_sharing="reverse"))  # A B B A
    t = gguf_tensors(model)
    assert sum(k.endswith("attn_v.weight") for k in t) == 4
    assert (t["blk.0.attn_v.weight"] == t["blk.3.attn_v.weight"]).all()
    assert (t["blk.1.attn_v.weight"] == t["blk.2.attn_v.weight"]).all()
    assert "output.weight" not in t  # tied: llama.cpp reuses token_embd


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="gguf_type 'q4' is not one of f32, f16, q8_0, q4_0"):
        write_gguf(MobileLLM(cfg()), tmp_path / "m.gguf", gguf_type="q4")
    for gguf_type in ("q8_0", "q4_0"):
        with pytest.raises(ValueError, match=rf"{gguf_type.upper()} quantizes rows in blocks of 32 .* rows of \[48\]"):
            write_gguf(MobileLLM(cfg(ffn_hidden_dim=48)), tmp_path / "m.gguf", gguf_type=gguf_type)
    with pytest.raises(ValueError, match="only 'swiglu'"):
        write_gguf(MobileLLM(cfg(ffn_type="relu")), tmp_path / "m.gguf")


def test_cli_offers_every_gguf_type():
    """The command line lists its --gguf-type choices itself (no numpy import to build the parser)."""
    import argparse

    from mobilellm.__main__ import _add_export
    from mobilellm.gguf_export import GGUF_TYPES

    sub = argparse.ArgumentParser().add_subparsers()
    _add_export(sub)
    export = sub.choices["export"]
    assert tuple(next(a for a in export._actions if a.dest == "gguf_type").choices) == GGUF_TYPES


def test_cli_export_gguf(small_data, tmp_path, capsys):
    from mobilellm.__main__ import main
    from mobilellm.export import save_pretrained

    ckpt = save_pretrained(MobileLLM(cfg()), tmp_path / "ckpt", small_data.tokenizer)
    out = tmp_path / "m.gguf"
    assert (
        main(["export", "--checkpoint", str(ckpt), "--format", "gguf", "--gguf-type", "q8_0", "--out", str(out)]) == 0
    )
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == {
        "format": "gguf",
        "out": str(out),
        "bytes": out.stat().st_size,
        "type": "q8_0",
        "llama_layers": 2,
        "tokenizer": True,
    }


def test_llama_cpp_decodes_it_as_we_do(small_data, tmp_path):
    """Where llama-cpp-python is installed (it builds llama.cpp from source: make llama-cpp): llama.cpp
    itself runs the files, layer sharing written out, through ``LlamaCppDecoder``. F32: our logits at every
    chunk (its KV cache is fp16); F16 greedily decodes the (fp16-rounded) eager model's tokens; Q8_0
    predicts the same next token on that text at most positions."""
    pytest.importorskip("llama_cpp")
    from mobilellm.gguf_export import LlamaCppDecoder

    torch.manual_seed(5)
    model = MobileLLM(cfg(layer_sharing="immediate")).eval()
    prompt = torch.randint(0, 128, (6,)).tolist()
    with torch.no_grad():
        want = fp16_rounded(model).generate(torch.tensor([prompt]), 20)[0, 6:].tolist()
        exact = model(torch.tensor([prompt + want]))[0]
    text = prompt + want

    def decoder(gguf_type):
        # one thread: llama.cpp's workers spin while they wait, which on a busy small machine costs 100x
        return LlamaCppDecoder(
            write_gguf(model, tmp_path / f"{gguf_type}.gguf", small_data.tokenizer, gguf_type), n_ctx=64, n_threads=1
        )

    dec = decoder("f32")
    tol = 1e-2 * exact.abs().max()
    for start, end in [(0, 6), (6, 9), (9, 10), (10, 11), (3, 11)]:  # chunks, steps, and a rewind to 3
        assert (dec.step(text[start:end], start) - exact[end - 1]).abs().max() < tol
    assert dec.pos == 11
    with pytest.raises(ValueError, match="position 12"):
        dec.step([1], 12)  # skips position 11
    with pytest.raises(ValueError, match="at least one token"):
        dec.step([])
    dec.close()

    dec = decoder("f16")
    logits, got = dec.step(prompt, 0), []
    for _ in range(20):
        got.append(int(logits.argmax()))
        logits = dec.step([got[-1]])
    assert got == want
    dec = decoder("q8_0")  # teacher-forced on the same text: llama.cpp's next token at every position vs ours
    theirs = torch.stack([dec.step([t], i).argmax() for i, t in enumerate(text)])
    assert (theirs == exact.argmax(-1)).float().mean() >= 0.8  # random weights: near-ties in the argmax
    with pytest.raises(FileNotFoundError, match="export --format gguf"):
        LlamaCppDecoder(tmp_path / "missing.gguf", n_ctx=64)
