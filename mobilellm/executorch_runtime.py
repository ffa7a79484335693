"""Running an on-device program: ``PteDecoder`` decodes a ``.pte`` through ExecuTorch's Python runtime
(prefill a chunk, then token by token, with the cache held inside the program); ``program_census``
reads what one call of a program runs; ``compare_programs`` scores programs against each other.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ._common import one_line
from ._quiet import native_stderr_silenced
from .executorch_program import _META_INT, _load_custom_ops, _need_executorch
from .model import check_sampling, sample_next


def tokenizer_beside(program: str | os.PathLike) -> Path:
    """Where a program's tokenizer is written: ``NAME.tokenizer.model`` beside ``NAME.pte``, so that two
    programs in one folder (or a program in a checkpoint's folder) never share or replace one."""
    p = Path(program)
    return p.with_name(p.stem + ".tokenizer.model")


def program_census(path: str | os.PathLike, method: str = "forward") -> dict:
    """What one call of a program's ``method`` executes, read from the file: its instructions, the calls
    into a backend (XNNPACK's compiled subgraphs) and the kernels the runtime runs itself, by operator.

    Two programs of the same weights that lower to the same delegated subgraphs differ only in these
    kernel calls (and what they move), so this is where to look when one decodes slower than the other.
    """
    from executorch.exir._serialize._program import deserialize_pte_binary  # (the runtime reads no census)

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    plans = {p.name: p for p in program.execution_plan}
    if method not in plans:
        raise ValueError(f"{path} has no method {method!r} (it has {sorted(plans)})")
    plan = plans[method]
    kernels: dict[str, int] = {}
    delegate_calls = instructions = 0
    for chain in plan.chains:
        for ins in chain.instructions:
            instructions += 1
            kind = type(ins.instr_args).__name__
            if kind == "KernelCall":
                name = plan.operators[ins.instr_args.op_index].name
                kernels[name] = kernels.get(name, 0) + 1
            delegate_calls += kind == "DelegateCall"
    return {
        "instructions": instructions,
        "delegate_calls": delegate_calls,
        "kernel_calls": sum(kernels.values()),
        "kernels": dict(sorted(kernels.items())),
    }


class PteDecoder:
    """A loaded KV-cached program: ``step(ids, pos)`` runs a chunk; ``generate`` streams tokens."""

    def __init__(self, path: str | os.PathLike) -> None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist: write it with `python -m mobilellm export --format pte`")
        with open(p, "rb") as f:  # the runtime aborts the process on some garbage: look first
            head = f.read(8)
        if len(head) < 8 or head[4:6] != b"ET":
            raise ValueError(
                f"{p} is not an ExecuTorch program (its header lacks the 'ET' file identifier): "
                "write one with `python -m mobilellm export --format pte`"
            )
        _need_executorch()
        _load_custom_ops()
        from executorch.runtime import Runtime

        try:
            with native_stderr_silenced():
                self._program = Runtime.get().load_program(p)
        except Exception as e:  # the runtime raises RuntimeError or ValueError for garbage
            raise ValueError(f"{p} is not an ExecuTorch program ({one_line(e)})") from None
        names = set(self._program.method_names)
        if not {"forward", "get_max_seq_len", "get_vocab_size"} <= names:
            raise ValueError(
                f"{p} is not a KV-cached program from export_program (methods {sorted(names)}): "
                "re-export it with `python -m mobilellm export --format pte`"
            )
        self.path = p
        self.meta = {n: int(self._program.load_method(n).execute([])[0]) for n in _META_INT if n in names}
        self.max_len, self.vocab_size = self.meta["get_max_seq_len"], self.meta["get_vocab_size"]
        with native_stderr_silenced():
            self._forward = self._program.load_method("forward")
        # ours and export_llama's take the chunk's first position, shape (1,); optimum-executorch's
        # every position of the chunk, shape (T,) (its bound: the window minus one)
        self._positions = self._forward.metadata.input_tensor_meta(1).sizes()[0] > 1
        self.pos = 0  # positions filled in the program's caches

    def step(self, ids: torch.Tensor | Sequence[int], pos: int | None = None) -> torch.Tensor:
        """Logits (vocab,) after feeding ``ids`` (a chunk) at ``pos`` (default: after the last chunk; less rewinds)."""
        ids = ids if isinstance(ids, torch.Tensor) else torch.as_tensor(list(ids), dtype=torch.long)
        if ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be int64 (or int32), got {ids.dtype}")
        ids = ids.reshape(1, -1).long()
        pos = self.pos if pos is None else pos
        T = ids.shape[1]
        if T == 0:
            raise ValueError("empty chunk: give at least one token id")
        if pos > self.pos:
            raise ValueError(
                f"position {pos} skips positions {self.pos}..{pos - 1}, which hold no keys yet: "
                f"continue at {self.pos} or start again at 0"
            )
        if pos < 0 or pos + T > self.max_len:
            raise ValueError(
                f"positions {pos}..{pos + T - 1} do not fit the program's cache window of "
                f"{self.max_len} tokens: shorten the prompt or export with a larger --max-len"
            )
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {self.vocab_size})")
        positions = torch.arange(pos, pos + T) if self._positions else torch.tensor([pos], dtype=torch.long)
        with native_stderr_silenced():  # XNNPACK probes the CPU (and says so on fd 2) on first execution
            logits = self._forward.execute((ids, positions))[0]
        self.pos = pos + T
        return logits.reshape(-1, logits.shape[-1])[-1].clone()  # the last token's (optimum's: every token's)

    def generate(
        self,
        prompt: Sequence[int] | torch.Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        seed: int = 0,
        chunk: int | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one by one: prefill the prompt (in chunks of ``chunk``), then decode.

        Greedy at temperature 0; stops after ``eos_id`` (which is yielded) or ``max_new_tokens``.
        """
        prompt = prompt if isinstance(prompt, torch.Tensor) else torch.as_tensor(list(prompt), dtype=torch.long)
        if prompt.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"prompt token ids must be int64 (or int32), got {prompt.dtype}")
        prompt = prompt.reshape(-1).long()
        n = prompt.numel()
        if n == 0:
            raise ValueError("the prompt is empty: give at least one token (e.g. the BOS id)")
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        if n + max_new_tokens > self.max_len:
            raise ValueError(
                f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) exceeds the program's "
                f"cache window of {self.max_len}: shorten the prompt or ask for fewer tokens"
            )
        chunk = chunk or self.max_len - 1
        for start in range(0, n, chunk):
            logits = self.step(prompt[start : start + chunk], start)
        gen = torch.Generator().manual_seed(seed)
        for i in range(max_new_tokens):
            nxt = int(sample_next(logits[None], temperature, top_k, top_p, gen)[0])
            yield nxt
            if nxt == eos_id or i + 1 == max_new_tokens:
                return
            logits = self.step([nxt])

    def next_token_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (T, vocab): position t's prediction after ids[0..t], one decode step each."""
        return torch.stack([self.step(ids[t : t + 1], t) for t in range(ids.numel())])


def stream_text(
    dec: PteDecoder,
    tokenizer,
    ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> Iterator[str]:
    """The continuation of ``ids`` as text, piece by piece as the program decodes it (up to EOS). The whole
    tail is decoded each time: SentencePiece's spaces depend on the neighbouring pieces."""
    new: list[int] = []
    shown = ""
    for t in dec.generate(ids, max_new_tokens, temperature, top_k, top_p, eos_id=tokenizer.eos_id, seed=seed):
        new.append(t)
        text = tokenizer.decode(new)
        yield text[len(shown) :]
        shown = text


def self_check(model, path: str | os.PathLike, n: int = 32) -> dict:
    """A written program against the eager model it came from: a random row of up to ``n`` tokens decoded
    token by token in the program, scored in one forward pass eagerly; the largest logit difference and
    how often the two pick the same next token (and the program's window, ``max_len``)."""
    dec = PteDecoder(path)
    ids = torch.randint(0, model.cfg.vocab_size, (min(n, dec.max_len),), generator=torch.Generator().manual_seed(0))
    got = dec.next_token_logits(ids)
    with torch.no_grad():
        ref = model.eval()(ids[None])[0].float()
    agree = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return {
        "max_abs_diff": float(f"{(got - ref).abs().max().item():.4g}"),
        "argmax_agreement": float(f"{agree:.4g}"),
        "max_len": dec.max_len,
    }


def compare_programs(paths: dict[str, str | os.PathLike], windows: torch.Tensor, reference: str = "fp32") -> dict:
    """Per program: perplexity and top-1 next-token accuracy on ``windows`` (N, T), agreement with ``reference``.

    Each row runs through the decode path a phone runs (one token per call), not a prefill.
    """
    if reference not in paths:
        raise ValueError(f"reference {reference!r} is not among the programs {sorted(paths)}")
    if windows.dim() != 2 or windows.shape[1] < 2:
        raise ValueError(f"windows must have shape (N, T >= 2), got {tuple(windows.shape)}")
    logits = {}
    for name, path in paths.items():
        dec = PteDecoder(path)
        logits[name] = torch.stack([dec.next_token_logits(row[:-1]) for row in windows])
    targets = windows[:, 1:]
    out = {}
    for name, lg in logits.items():
        nll = torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), targets.reshape(-1))
        agree = (lg.argmax(-1) == logits[reference].argmax(-1)).float().mean()
        accuracy = (lg.argmax(-1) == targets).float().mean()  # top-1 next-token accuracy on the text
        out[name] = {
            "ppl": math.exp(nll.item()),
            "agreement": agree.item(),
            "accuracy": accuracy.item(),
            "bytes": Path(paths[name]).stat().st_size,
        }
    for name in out:
        out[name]["size_ratio"] = out[name]["bytes"] / out[reference]["bytes"]
    return out
