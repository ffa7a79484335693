"""Data: corpora (embedded, hub, local), a SentencePiece tokenizer, packed tokens, and batches.

The pipeline is text -> train/validation split -> tokenizer trained on the training split ->
``uint16`` token files (memmaps) cached under ``data/cache/`` (see ``default_cache_dir``), keyed by
fingerprints of the corpus and the tokenizer -> random contiguous windows for training, a fixed set
for validation.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ._files import write_atomic
from .corpora import Corpus, load_corpus
from .tokenizer import Tokenizer


def default_cache_dir() -> Path:
    """Where ``prepare`` caches tokens when given no folder: ``~/.cache/mobilellm`` (the course passes its
    checkout's ``data/cache``)."""
    return Path.home() / ".cache" / "mobilellm"


# --- prepared tokens -------------------------------------------------------------------------


@dataclass
class TokenData:
    """Token ids of both splits (memmaps) and the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    fingerprint: str  # corpus + tokenizer
    directory: Path
    corpus: str

    def summary(self) -> dict:
        """Sizes, for printing and provenance."""
        return {
            "corpus": self.corpus,
            "vocab_size": self.tokenizer.vocab_size,
            "train_tokens": int(len(self.train)),
            "val_tokens": int(len(self.val)),
            "fingerprint": self.fingerprint[:12],
        }


def _encode_docs(tok: Tokenizer, docs: list[str]) -> np.ndarray:
    """Each document's lines encoded (in batch), documents separated by EOS."""
    dtype = np.uint16 if tok.vocab_size <= 1 << 16 else np.uint32
    parts = []
    for doc in docs:
        lines = doc.split("\n")
        chunks = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
        ids = [i for chunk in tok.encode(chunks) for i in chunk]
        parts.append(np.asarray(ids + [tok.eos_id], dtype=dtype))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def prepare(
    corpus: str | Corpus = "shakespeare",
    vocab_size: int = 512,
    cache_dir: str | os.PathLike | None = None,
    tokenizer: str | os.PathLike | Tokenizer | None = None,
    **corpus_kwargs,
) -> TokenData:
    """Tokens for ``corpus``, built once and cached: corpus -> tokenizer -> uint16 memmaps.

    ``tokenizer`` is an existing SentencePiece ``.model`` (e.g. Llama's, or a loaded Tokenizer); otherwise one of
    ``vocab_size`` pieces is trained on the training split.
    """
    c = corpus if isinstance(corpus, Corpus) else load_corpus(corpus, **corpus_kwargs)
    root = Path(cache_dir or default_cache_dir()) / f"{c.name}-{c.fingerprint[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    if isinstance(tokenizer, Tokenizer):
        tok = tokenizer
    elif tokenizer is not None:
        tok = Tokenizer(tokenizer)
    else:
        tok_file = root / f"sp{vocab_size}.model"
        if tok_file.is_file():
            tok = Tokenizer(tok_file)
        else:
            tok = Tokenizer.train(c.train, vocab_size)
            write_atomic(tok_file, lambda t: t.write_bytes(tok.model_proto))
    fp = hashlib.sha256((c.fingerprint + tok.fingerprint).encode()).hexdigest()
    out = root / f"tokens-{fp[:12]}"
    meta_file = out / "meta.json"
    if not meta_file.is_file():
        out.mkdir(parents=True, exist_ok=True)
        tok.save(out / "tokenizer.model")
        meta = {
            "corpus": c.name,
            "source": c.source,
            "corpus_fingerprint": c.fingerprint,
            "tokenizer_fingerprint": tok.fingerprint,
            "vocab_size": tok.vocab_size,
        }
        for split, docs in (("train", c.train), ("val", c.val)):
            ids = _encode_docs(tok, docs)
            write_atomic(out / f"{split}.bin", lambda t, ids=ids: t.write_bytes(ids.tobytes()))
            meta[f"{split}_tokens"], meta["dtype"] = int(len(ids)), ids.dtype.name
            meta[f"{split}_chars"] = sum(map(len, docs))
        write_atomic(meta_file, lambda t: t.write_text(json.dumps(meta, indent=1)))
    meta = json.loads(meta_file.read_text())
    for split in ("train", "val"):  # a truncated or foreign file must not pass for the whole split
        path, expected = out / f"{split}.bin", meta[f"{split}_tokens"] * np.dtype(meta["dtype"]).itemsize
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            raise ValueError(
                f"the token cache {path} holds {size if size is not None else 'no'} bytes where {meta_file.name} "
                f"says {expected:,}: delete the folder {out} and it is rebuilt"
            )
    arrays = {s: np.memmap(out / f"{s}.bin", dtype=meta["dtype"], mode="r") for s in ("train", "val")}
    return TokenData(arrays["train"], arrays["val"], Tokenizer(out / "tokenizer.model"), fp, out, c.name)


def every_kth_document(tokens: np.ndarray, eos_id: int, k: int) -> np.ndarray:
    """The documents (each ending in ``eos_id``) at positions 0, k, 2k, … of a token stream: a
    smaller training set of whole documents, spread over the corpus (every third play, say)."""
    if k < 1:
        raise ValueError(f"k ({k!r}) must be a positive integer")
    ends = np.flatnonzero(np.asarray(tokens) == eos_id) + 1
    starts = np.concatenate([[0], ends[:-1]])
    keep = [np.asarray(tokens[s:e]) for s, e in list(zip(starts, ends, strict=True))[::k]]
    return np.concatenate(keep) if keep else np.asarray(tokens[:0])


# --- batches ---------------------------------------------------------------------------------


def _check_len(tokens: np.ndarray, seq_len: int, split: str) -> None:
    if len(tokens) < seq_len + 1:
        raise ValueError(
            f"the {split} split has {len(tokens)} tokens, fewer than one window of "
            f"seq_len + 1 = {seq_len + 1}: use a shorter seq_len or a larger corpus"
        )


def get_batch(
    tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random contiguous windows: inputs (B, T) and next-token targets (B, T)."""
    _check_len(tokens, seq_len, "training")
    starts = torch.randint(len(tokens) - seq_len, (batch_size,), generator=generator).tolist()
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]


def val_windows(tokens: np.ndarray, seq_len: int, max_windows: int | None = None) -> torch.Tensor:
    """A fixed set of evenly spaced validation windows (N, seq_len + 1)."""
    _check_len(tokens, seq_len, "validation")
    n = (len(tokens) - 1) // seq_len
    idx = np.arange(n) if max_windows is None or n <= max_windows else np.linspace(0, n - 1, max_windows).astype(int)
    rows = np.stack([tokens[i * seq_len : i * seq_len + seq_len + 1] for i in idx]).astype(np.int64)
    return torch.from_numpy(rows)
