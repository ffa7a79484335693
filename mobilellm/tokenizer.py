"""The tokenizer: a SentencePiece model trained on a corpus's training documents."""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from ._files import write_atomic

# --- the tokenizer ---------------------------------------------------------------------------


class Tokenizer:
    """A SentencePiece model: ``encode``/``decode`` with BOS/EOS ids (ours, or Llama's)."""

    def __init__(self, model_file: str | os.PathLike | None = None, *, model_proto: bytes | None = None):
        import sentencepiece as spm

        if model_proto is None:
            if model_file is None or not Path(model_file).is_file():
                raise FileNotFoundError(f"tokenizer model {model_file} does not exist")
            model_proto = Path(model_file).read_bytes()
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        except RuntimeError as e:
            raise ValueError(f"{model_file or 'model_proto'} is not a SentencePiece model ({e})") from None
        self.model_proto = model_proto

    @classmethod
    def beside_weights(cls, path: str | os.PathLike, fingerprint: str | None) -> Tokenizer | None:
        """The tokenizer at ``path`` (None if there is none), refused when it is not the one whose
        ``fingerprint`` the weights beside it recorded (None: nothing recorded, nothing to compare)."""
        path = Path(path)
        if not path.is_file():
            return None
        tok = cls(path)
        if fingerprint and fingerprint != tok.fingerprint:
            raise ValueError(
                f"{path} is not the tokenizer these weights were trained with (its fingerprint is "
                f"{tok.fingerprint[:12]}, the weights' config records {fingerprint[:12]}): restore the "
                f"{path.name} written with them"
            )
        return tok

    @property
    def vocab_size(self) -> int:
        """Number of ids."""
        return self.sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id."""
        return self.sp.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-sequence id."""
        return self.sp.eos_id()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the model file."""
        return hashlib.sha256(self.model_proto).hexdigest()

    def encode(self, text: str | list[str], bos: bool = False, eos: bool = False):
        """Text (or a list of texts) to ids."""
        return self.sp.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids) -> str:
        """Ids (a list or a 1-D tensor) to text."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.sp.decode(ids)

    def pieces(self, text: str) -> list[str]:
        """The pieces ``text`` splits into (for looking at the tokenizer)."""
        return self.sp.encode(text, out_type=str)

    def save(self, path: str | os.PathLike) -> None:
        """Write the ``.model`` file."""
        write_atomic(path, lambda t: t.write_bytes(self.model_proto))  # readers never see half a file

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, byte_fallback: bool | None = None) -> Tokenizer:
        """BPE on ``texts`` (split into lines). Byte fallback by default only from 2k pieces up.

        Byte fallback costs 256 ids: half of a 512 vocabulary, never used on Shakespeare. Without
        it every character of the training text gets a piece (character_coverage 1.0).
        Normalisation is off, so decode(encode(text)) == text, newlines included.
        """
        import sentencepiece as spm

        if byte_fallback is None:
            byte_fallback = vocab_size >= 2048
        lines = [line for t in texts for line in t.split("\n") if line]
        if not lines:
            raise ValueError("cannot train a tokenizer on an empty corpus")
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                vocab_size=vocab_size,
                model_type="bpe",
                character_coverage=1.0,
                byte_fallback=byte_fallback,
                unk_id=0,
                bos_id=1,
                eos_id=2,
                pad_id=-1,
                user_defined_symbols=["\n"],
                normalization_rule_name="identity",
                remove_extra_whitespaces=False,
                add_dummy_prefix=False,
                max_sentence_length=1 << 16,
                num_threads=2,
                minloglevel=2,
                train_extremely_large_corpus=False,
            )
        except RuntimeError as e:
            m = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", str(e))
            if m:  # more distinct characters than pieces: the opposite fix of a too-small corpus
                raise ValueError(
                    f"the corpus has {m.group(2)} distinct characters, more than a vocabulary of "
                    f"{vocab_size} pieces can hold: use a larger vocab_size (byte fallback from 2048 "
                    "on), or check that the file is the text you meant"
                ) from None
            if "Vocabulary size" in str(e) or "vocab_size" in str(e):
                raise ValueError(
                    f"the corpus is too small for a vocabulary of {vocab_size} pieces "
                    f"({e}); use a smaller vocab_size or more text"
                ) from None
            raise
        return cls(model_proto=model.getvalue())
