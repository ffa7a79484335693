"""Scoring a model: perplexity, and zero-shot multiple choice by log-likelihood, as lm-eval 0.4 scores it.

Multiple-choice scoring is lm-evaluation-harness 0.4's: each option is a (context, continuation)
pair, its score is the summed log-probability of the continuation's tokens given the context,
``acc`` takes the best score and ``acc_norm`` the best score per character of the option. The tasks
that make the items (the paper's eight benchmarks, the offline cloze) are in ``eval_tasks.py``;
with their prompts the numbers here equal what ``lm_eval --tasks arc_easy,…`` prints for the same
model (checked in the tests through the adapter in ``lm_eval_adapter.py``, which imports this module).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ._common import eval_mode

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_max_len(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "max_seq_len"):
        raise ValueError(f"{type(model).__name__} has no cfg.max_seq_len: pass max_len= explicitly")
    return int(cfg.max_seq_len)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from ._tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc)


# --- perplexity ------------------------------------------------------------------------------


def perplexity_windows(n_tokens: int, seq_len: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """The windows ``perplexity`` runs: (start, end, n_scored) — input ``tokens[start:end]``, last n scored.

    Targets are tokens 1 … n-1, each scored exactly once. The first window scores all its targets;
    each later one scores the next ``stride`` targets with the ``seq_len`` tokens before them as
    context (``stride == seq_len``: non-overlapping windows). The last window is always full
    length, so the tail of the array is not scored with less context than the rest.
    """
    stride = seq_len if stride is None else stride
    if seq_len < 1:
        raise ValueError(f"seq_len ({seq_len}) must be >= 1")
    if not 1 <= stride <= seq_len:
        raise ValueError(f"stride ({stride}) must be in [1, seq_len = {seq_len}]")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {n_tokens}")
    spans, a = [], 1
    while a < n_tokens:
        b = min(a + (seq_len if not spans else stride), n_tokens)  # targets [a, b)
        end = b - 1
        spans.append((max(0, end - seq_len), end, b - a))
        a = b
    return spans


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokens: np.ndarray | Sequence[int] | torch.Tensor,
    seq_len: int,
    batch_size: int = 16,
    stride: int | None = None,
    progress: bool = False,
) -> dict:
    """Token-weighted mean next-token NLL (nats) and perplexity over a token array.

    Every token but the first is predicted once (the first has no context; documents in our
    token files are separated by EOS, so later documents do). Default: non-overlapping windows of
    ``seq_len`` (equal to ``train.evaluate_loss`` on ``data.val_windows`` when they tile the
    array); ``stride < seq_len`` slides the window so each token sees up to ``seq_len`` context.
    """
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.cpu().numpy()
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be a 1-D array, got shape {arr.shape}")
    if seq_len > _model_max_len(model):
        raise ValueError(f"seq_len ({seq_len}) exceeds the model's max_seq_len ({_model_max_len(model)})")
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1")
    spans = perplexity_windows(len(arr), seq_len, stride)
    device = _model_device(model)
    total, count = 0.0, 0
    batches = range(0, len(spans), batch_size)
    with eval_mode(model):
        for i in _progress(batches, len(batches), "perplexity", progress):
            chunk = spans[i : i + batch_size]
            width = max(end - start for start, end, _ in chunk)
            inp = torch.zeros(len(chunk), width, dtype=torch.long)
            tgt = torch.full((len(chunk), width), -100, dtype=torch.long)  # -100: not scored
            for r, (start, end, n) in enumerate(chunk):
                w = torch.from_numpy(np.asarray(arr[start : end + 1], dtype=np.int64))
                inp[r, : end - start] = w[:-1]
                tgt[r, end - start - n : end - start] = w[-n:]
            logits = model(inp.to(device))
            total += F.cross_entropy(
                logits.float().flatten(0, 1), tgt.to(device).flatten(), ignore_index=-100, reduction="sum"
            ).item()
            count += int((tgt != -100).sum())
    nll = total / count
    return {
        "nll": nll,
        "perplexity": math.exp(nll),
        "tokens": count,
        "windows": len(spans),
        "seq_len": seq_len,
        "stride": stride or seq_len,
    }


# --- log-likelihood scoring ------------------------------------------------------------------


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-eval 0.4 makes them (``TemplateLM._encode_pair``).

    Trailing whitespace of the context moves onto the continuation, then the continuation's ids are
    the tail of ``encode(context + continuation)`` after ``len(encode(context))`` ids — so a piece
    that spans the boundary is scored as part of the continuation, as it would be generated. An
    empty context becomes the EOS id: our documents start after an EOS, and lm-eval prefixes EOT.
    """
    eos = tokenizer.eos_id
    if context == "":
        cont = list(tokenizer.encode(continuation))
        if not cont:
            return [eos], []
        return ([eos], cont) if cont[0] != eos else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = list(tokenizer.encode(context + continuation))
    ctx = list(tokenizer.encode(context))
    cont = whole[len(ctx) :]
    if not ctx:  # an all-whitespace context: condition on EOS, never on nothing
        ctx = [eos]
    return ctx, cont


@torch.no_grad()
def score_requests(
    model: torch.nn.Module,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int = 32,
    progress: bool = False,
    max_len: int | None = None,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """(context ids, continuation ids) -> (sum of the continuation's log-probs, is it the greedy output).

    Left-truncated to the model's window as lm-eval does: the input is the last ``max_len + 1``
    tokens of context + continuation minus the final one. Requests run longest first, right-padded,
    in batches of ``batch_size``; results come back in the order given.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1")
    L = max_len or _model_max_len(model)
    prepared = []  # (input ids, number of scored positions, targets)
    for i, (ctx, cont) in enumerate(requests):
        ctx, cont = list(ctx), list(cont)
        if not ctx:
            raise ValueError(f"request {i} has an empty context: give at least one token (e.g. EOS)")
        full = ctx + cont
        inp = full[-(L + 1) :][:-1]
        n = min(len(cont), len(inp))
        prepared.append((inp, n, full[len(full) - n :]))
    results: list[tuple[float, bool] | None] = [None] * len(prepared)
    todo = [i for i, p in enumerate(prepared) if p[1] > 0]
    for i, p in enumerate(prepared):
        if p[1] == 0:
            results[i] = (0.0, True)  # nothing to score, as lm-eval (an empty sum)
    # Longest first: padding within a batch stays small, and an out-of-memory error shows at once.
    todo.sort(key=lambda i: -len(prepared[i][0]))
    device = _model_device(model)
    batches = range(0, len(todo), batch_size)
    with eval_mode(model):
        for b in _progress(batches, len(batches), desc, progress):
            idx = todo[b : b + batch_size]
            width = len(prepared[idx[0]][0])
            inp = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                ids = prepared[i][0]
                inp[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logits = model(inp.to(device))
            for r, i in enumerate(idx):
                ids, n, targets = prepared[i]
                # Right padding is harmless under a causal mask: real positions never see it.
                logp = logits[r, len(ids) - n : len(ids)].float().log_softmax(-1)
                tgt = torch.tensor(targets, dtype=torch.long, device=logp.device)
                ll = logp.gather(-1, tgt[:, None]).sum().item()
                greedy = bool((logp.argmax(-1) == tgt).all())
                results[i] = (ll, greedy)
    return results  # type: ignore[return-value]


def loglikelihoods(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "scoring",
) -> list[tuple[float, bool]]:
    """lm-eval's ``loglikelihood`` on (context, continuation) strings: (log-prob, is greedy) each."""
    requests = [encode_pair(tokenizer, c, x) for c, x in pairs]
    return score_requests(model, requests, batch_size=batch_size, progress=progress, desc=desc)


@dataclass
class MCItem:
    """One multiple-choice question: option i scores ``delimiter + choices[i]`` after its context.

    ``context`` is one string shared by the options, or one per option (WinoGrande's "partial
    scoring": each option fills the blank in the context and the shared rest of the sentence is
    the continuation). ``choices`` are lm-eval's choice strings; ``acc_norm`` divides by their
    length in characters, ``acc_bytes`` by their UTF-8 length.
    """

    context: str | list[str]
    choices: list[str]
    gold: int
    delimiter: str = " "
    norm_texts: list[str] | None = field(default=None, repr=False)  # what acc_norm divides by, if not choices

    @property
    def n_options(self) -> int:
        """Number of options."""
        return len(self.context) if isinstance(self.context, list) else len(self.choices)

    def requests(self) -> list[tuple[str, str]]:
        """One (context, continuation) pair per option, as lm-eval's ``construct_requests``."""
        if isinstance(self.context, list):
            (choice,) = self.choices
            return [(c, self.delimiter + choice) for c in self.context]
        return [(self.context, self.delimiter + c) for c in self.choices]


def _stderr(xs: Sequence[float]) -> float | None:
    # lm-eval's mean_stderr: sample standard deviation (n - 1) over sqrt(n)
    if len(xs) < 2:
        return None
    return float(np.std(xs, ddof=1) / math.sqrt(len(xs)))


def score_multiple_choice(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    items: Sequence[MCItem],
    batch_size: int = 32,
    progress: bool = False,
    desc: str = "scoring",
    details: bool = False,
) -> dict:
    """acc, acc_norm (per character, lm-eval's), acc_bytes and stderrs over items; chance = mean 1/options.

    With ``details`` the result also holds each item's log-likelihoods and predictions.
    """
    if not items:
        raise ValueError("no items to score")
    pairs, owner = [], []
    for k, item in enumerate(items):
        reqs = item.requests()
        pairs += reqs
        owner += [k] * len(reqs)
    scores = loglikelihoods(model, tokenizer, pairs, batch_size=batch_size, progress=progress, desc=desc)
    lls: list[list[float]] = [[] for _ in items]
    for k, (ll, _) in zip(owner, scores, strict=True):
        lls[k].append(ll)
    acc, acc_norm, acc_bytes, rows = [], [], [], []
    for item, ll in zip(items, lls, strict=True):
        texts = item.norm_texts or item.choices
        if isinstance(item.context, list):
            texts = texts * len(ll)  # one shared continuation: its length cannot change the argmax
        ll_arr = np.asarray(ll)
        # lm-eval divides by the choice string's length in characters (len(str)), not bytes or tokens.
        chars = np.asarray([float(len(t)) for t in texts])
        nbytes = np.asarray([float(len(t.encode("utf-8"))) for t in texts])
        pred, pred_norm, pred_bytes = (
            int(np.argmax(ll_arr)),
            int(np.argmax(ll_arr / chars)),
            int(np.argmax(ll_arr / nbytes)),
        )
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        acc_bytes.append(float(pred_bytes == item.gold))
        if details:
            rows.append({"loglikelihoods": ll, "pred": pred, "pred_norm": pred_norm, "gold": item.gold})
    out = {
        "n": len(items),
        "acc": float(np.mean(acc)),
        "acc_norm": float(np.mean(acc_norm)),
        "acc_bytes": float(np.mean(acc_bytes)),
        "acc_stderr": _stderr(acc),
        "acc_norm_stderr": _stderr(acc_norm),
        "chance": float(np.mean([1.0 / item.n_options for item in items])),
    }
    if details:
        out["items"] = rows
    return out
