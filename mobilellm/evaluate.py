"""Evaluation: perplexity, zero-shot multiple-choice scoring, the paper's eight tasks, and lm-eval.

Multiple-choice scoring is lm-evaluation-harness 0.4's: each option is a (context, continuation)
pair, its score is the summed log-probability of the continuation's tokens given the context,
``acc`` takes the best score and ``acc_norm`` the best score per character of the option. The
prompts are lm-eval's task YAMLs rewritten as plain functions, one per task, so the numbers here
equal what ``lm_eval --tasks arc_easy,…`` prints for the same model (checked in the tests through
the adapter in ``lm_eval_adapter.py``).
"""

from __future__ import annotations

import glob
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .data import Tokenizer


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_max_len(model: torch.nn.Module) -> int:
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(cfg, "max_seq_len"):
        raise ValueError(f"{type(model).__name__} has no cfg.max_seq_len: pass max_len= explicitly")
    return int(cfg.max_seq_len)


class _EvalMode:
    """Put a model in eval mode for a block and restore its previous mode afterwards."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc) -> None:
        self.model.train(self.was_training)


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
def perplexity(model: torch.nn.Module, tokens: np.ndarray | Sequence[int] | torch.Tensor, seq_len: int,
               batch_size: int = 16, stride: int | None = None, progress: bool = False) -> dict:
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
    with _EvalMode(model):
        for i in _progress(batches, len(batches), "perplexity", progress):
            chunk = spans[i:i + batch_size]
            width = max(end - start for start, end, _ in chunk)
            inp = torch.zeros(len(chunk), width, dtype=torch.long)
            tgt = torch.full((len(chunk), width), -100, dtype=torch.long)  # -100: not scored
            for r, (start, end, n) in enumerate(chunk):
                w = torch.from_numpy(np.asarray(arr[start:end + 1], dtype=np.int64))
                inp[r, :end - start] = w[:-1]
                tgt[r, end - start - n:end - start] = w[-n:]
            logits = model(inp.to(device))
            total += F.cross_entropy(logits.float().flatten(0, 1), tgt.to(device).flatten(),
                                     ignore_index=-100, reduction="sum").item()
            count += int((tgt != -100).sum())
    nll = total / count
    return {"nll": nll, "perplexity": math.exp(nll), "tokens": count, "windows": len(spans),
            "seq_len": seq_len, "stride": stride or seq_len}


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
    cont = whole[len(ctx):]
    if not ctx:  # an all-whitespace context: condition on EOS, never on nothing
        ctx = [eos]
    return ctx, cont


@torch.no_grad()
def score_requests(model: torch.nn.Module, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                   batch_size: int = 32, progress: bool = False, max_len: int | None = None,
                   desc: str = "scoring") -> list[tuple[float, bool]]:
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
        inp = full[-(L + 1):][:-1]
        n = min(len(cont), len(inp))
        prepared.append((inp, n, full[len(full) - n:]))
    results: list[tuple[float, bool] | None] = [None] * len(prepared)
    todo = [i for i, p in enumerate(prepared) if p[1] > 0]
    for i, p in enumerate(prepared):
        if p[1] == 0:
            results[i] = (0.0, True)  # nothing to score, as lm-eval (an empty sum)
    # Longest first: padding within a batch stays small, and an out-of-memory error shows at once.
    todo.sort(key=lambda i: -len(prepared[i][0]))
    device = _model_device(model)
    batches = range(0, len(todo), batch_size)
    with _EvalMode(model):
        for b in _progress(batches, len(batches), desc, progress):
            idx = todo[b:b + batch_size]
            width = len(prepared[idx[0]][0])
            inp = torch.zeros(len(idx), width, dtype=torch.long)
            for r, i in enumerate(idx):
                ids = prepared[i][0]
                inp[r, :len(ids)] = torch.tensor(ids, dtype=torch.long)
            logits = model(inp.to(device))
            for r, i in enumerate(idx):
                ids, n, targets = prepared[i]
                # Right padding is harmless under a causal mask: real positions never see it.
                logp = logits[r, len(ids) - n:len(ids)].float().log_softmax(-1)
                tgt = torch.tensor(targets, dtype=torch.long, device=logp.device)
                ll = logp.gather(-1, tgt[:, None]).sum().item()
                greedy = bool((logp.argmax(-1) == tgt).all())
                results[i] = (ll, greedy)
    return results  # type: ignore[return-value]


def loglikelihoods(model: torch.nn.Module, tokenizer: Tokenizer, pairs: Sequence[tuple[str, str]],
                   batch_size: int = 32, progress: bool = False, desc: str = "scoring") -> list[tuple[float, bool]]:
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


def score_multiple_choice(model: torch.nn.Module, tokenizer: Tokenizer, items: Sequence[MCItem],
                          batch_size: int = 32, progress: bool = False, desc: str = "scoring",
                          details: bool = False) -> dict:
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
        pred, pred_norm, pred_bytes = (int(np.argmax(ll_arr)), int(np.argmax(ll_arr / chars)),
                                       int(np.argmax(ll_arr / nbytes)))
        acc.append(float(pred == item.gold))
        acc_norm.append(float(pred_norm == item.gold))
        acc_bytes.append(float(pred_bytes == item.gold))
        if details:
            rows.append({"loglikelihoods": ll, "pred": pred, "pred_norm": pred_norm, "gold": item.gold})
    out = {"n": len(items), "acc": float(np.mean(acc)), "acc_norm": float(np.mean(acc_norm)),
           "acc_bytes": float(np.mean(acc_bytes)), "acc_stderr": _stderr(acc),
           "acc_norm_stderr": _stderr(acc_norm),
           "chance": float(np.mean([1.0 / item.n_options for item in items]))}
    if details:
        out["items"] = rows
    return out


# --- the tasks: lm-eval 0.4's prompts as functions of a hub row -------------------------------

class _RowError(Exception):
    """A row that does not fit its task's schema (turned into a ValueError with its position)."""


def _gold_index(labels: list, key: Any, what: str) -> int:
    if key not in labels:
        raise _RowError(f"{what} {key!r} is not one of the option labels {labels}")
    return labels.index(key)


def _need_str(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise _RowError(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def _labelled_choices(doc: dict) -> tuple[list[str], list[str]]:
    ch = doc["choices"]
    if not isinstance(ch, dict) or not isinstance(ch.get("text"), list) or not isinstance(ch.get("label"), list):
        raise _RowError("field 'choices' must be {'text': [str, ...], 'label': [str, ...]}")
    if len(ch["text"]) != len(ch["label"]):
        raise _RowError(f"'choices' has {len(ch['text'])} texts but {len(ch['label'])} labels")
    return [str(t) for t in ch["text"]], list(ch["label"])


def _arc(doc: dict) -> MCItem:
    # arc/arc_easy.yaml: "Question: {{question}}\nAnswer:", choices.text, choices.label.index(answerKey)
    texts, labels = _labelled_choices(doc)
    return MCItem(f"Question: {doc['question']}\nAnswer:", texts, _gold_index(labels, doc["answerKey"], "answerKey"))


def _boolq(doc: dict) -> MCItem:
    # super_glue/boolq/default.yaml
    return MCItem(f"{doc['passage']}\nQuestion: {doc['question']}?\nAnswer:", ["no", "yes"], doc["label"])


def _piqa(doc: dict) -> MCItem:
    # piqa/piqa.yaml
    return MCItem(f"Question: {doc['goal']}\nAnswer:", [doc["sol1"], doc["sol2"]], doc["label"])


def _siqa(doc: dict) -> MCItem:
    # siqa/siqa.yaml: label is "1"/"2"/"3" on the hub; the template computes (label|int) - 1
    try:
        gold = int(doc["label"]) - 1
    except (TypeError, ValueError):
        raise _RowError(f"label {doc['label']!r} is not 1, 2 or 3") from None
    return MCItem(f"Q: {doc['context']} {doc['question']}\nA:", [doc["answerA"], doc["answerB"], doc["answerC"]],
                  gold)


def _hellaswag_clean(text: str) -> str:
    # hellaswag/utils.py preprocess: " [title]" and other bracketed WikiHow artifacts
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def _hellaswag(doc: dict) -> MCItem:
    # hellaswag/utils.py process_docs; str.capitalize also lower-cases the rest of ctx_b, as there
    ctx = _need_str(doc["ctx_a"], "ctx_a") + " " + _need_str(doc["ctx_b"], "ctx_b").capitalize()
    endings = doc["endings"]
    if not isinstance(endings, list):
        raise _RowError("field 'endings' must be a list of strings")
    try:
        gold = int(doc["label"])
    except (TypeError, ValueError):
        raise _RowError(f"label {doc['label']!r} is not an option index (the test split has no labels)") from None
    return MCItem(_hellaswag_clean(_need_str(doc["activity_label"], "activity_label") + ": " + ctx),
                  [_hellaswag_clean(_need_str(e, "endings")) for e in endings], gold)


def _openbookqa(doc: dict) -> MCItem:
    # openbookqa/openbookqa.yaml: the bare question stem; answerKey.lstrip()
    texts, labels = _labelled_choices(doc)
    key = _need_str(doc["answerKey"], "answerKey").lstrip()
    return MCItem(doc["question_stem"], texts, _gold_index(labels, key, "answerKey"))


def _winogrande(doc: dict) -> MCItem:
    # winogrande/preprocess_winogrande.py: each option fills the blank; the rest is scored
    sentence = _need_str(doc["sentence"], "sentence")
    if "_" not in sentence:
        raise _RowError("field 'sentence' has no '_' blank")
    if doc["answer"] not in ("1", "2"):
        raise _RowError(f"answer {doc['answer']!r} is not '1' or '2' (the test split has no answers)")
    idx = sentence.index("_")
    contexts = [sentence[:idx] + _need_str(doc[o], o) for o in ("option1", "option2")]
    return MCItem(contexts, [sentence[idx + 1:].strip()], {"1": 0, "2": 1}[doc["answer"]])


def _copa(doc: dict) -> MCItem:
    # super_glue/copa/utils.py: the premise loses its final period and gains "because"/"therefore";
    # the choices start lower-case with their own space, and the default delimiter adds another.
    connector = {"cause": "because", "effect": "therefore"}.get(doc["question"])
    if connector is None:
        raise _RowError(f"question {doc['question']!r} is not 'cause' or 'effect'")
    choices = [_need_str(doc[c], c) for c in ("choice1", "choice2")]
    if not all(choices):
        raise _RowError("a choice is empty")
    return MCItem(_need_str(doc["premise"], "premise").strip()[:-1] + f" {connector}",
                  [" " + c[0].lower() + c[1:] for c in choices], doc["label"])


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's rows live (hub id, config, split), its fields, its prompt, and lm-eval's name."""

    name: str
    hub_id: str
    config: str | None
    split: str
    fields: tuple[str, ...]
    to_item: Callable[[dict], MCItem] = field(repr=False)
    lm_eval_task: str
    lm_eval_yaml: str  # relative to lm_eval/tasks
    metrics: tuple[str, ...]  # what lm-eval reports for it


TASKS: dict[str, TaskSpec] = {t.name: t for t in [
    TaskSpec("arc_easy", "allenai/ai2_arc", "ARC-Easy", "test", ("question", "choices", "answerKey"), _arc,
             "arc_easy", "arc/arc_easy.yaml", ("acc", "acc_norm")),
    TaskSpec("arc_challenge", "allenai/ai2_arc", "ARC-Challenge", "test", ("question", "choices", "answerKey"), _arc,
             "arc_challenge", "arc/arc_challenge.yaml", ("acc", "acc_norm")),
    TaskSpec("boolq", "aps/super_glue", "boolq", "validation", ("passage", "question", "label"), _boolq,
             "boolq", "super_glue/boolq/default.yaml", ("acc",)),
    TaskSpec("piqa", "baber/piqa", None, "validation", ("goal", "sol1", "sol2", "label"), _piqa,
             "piqa", "piqa/piqa.yaml", ("acc", "acc_norm")),
    TaskSpec("siqa", "lighteval/siqa", None, "validation",
             ("context", "question", "answerA", "answerB", "answerC", "label"), _siqa,
             "social_iqa", "siqa/siqa.yaml", ("acc",)),
    TaskSpec("hellaswag", "Rowan/hellaswag", None, "validation",
             ("activity_label", "ctx_a", "ctx_b", "endings", "label"), _hellaswag,
             "hellaswag", "hellaswag/hellaswag.yaml", ("acc", "acc_norm")),
    TaskSpec("openbookqa", "allenai/openbookqa", "main", "test", ("question_stem", "choices", "answerKey"),
             _openbookqa, "openbookqa", "openbookqa/openbookqa.yaml", ("acc", "acc_norm")),
    TaskSpec("winogrande", "allenai/winogrande", "winogrande_xl", "validation",
             ("sentence", "option1", "option2", "answer"), _winogrande,
             "winogrande", "winogrande/default.yaml", ("acc",)),
    TaskSpec("copa", "aps/super_glue", "copa", "validation", ("premise", "choice1", "choice2", "question", "label"),
             _copa, "copa", "super_glue/copa/default.yaml", ("acc",)),
]}

# The paper's Table 3 columns, in its order (COPA is extra: we have local rows for it).
PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "piqa", "siqa", "hellaswag", "openbookqa", "winogrande")


def get_task(name: str) -> TaskSpec:
    """The task called ``name``, or a ValueError listing the valid names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]


def load_rows(task: str, data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
              limit: int | None = None) -> tuple[list[dict], str]:
    """A task's rows (the first ``limit``) from the hub, or from local JSONL in its hub schema; and their source."""
    spec = get_task(task)
    if limit is not None and limit < 1:
        raise ValueError(f"limit ({limit}) must be >= 1 (or None for every row)")
    if data_files is not None:
        from .data import json_rows

        given = [str(data_files)] if isinstance(data_files, (str, os.PathLike)) else [str(f) for f in data_files]
        files = []
        for f in given:
            matched = sorted(glob.glob(f)) if any(ch in f for ch in "*?[") else [f]
            if not matched or not all(Path(m).is_file() for m in matched):
                raise FileNotFoundError(f"{task}: data file {f} does not exist")
            files += matched
        source = ", ".join(given)
        # Read by content, line by line: a file edited in place (mtime kept) is never served from a
        # stale cache, and a bad row is reported at its own line.
        rows = [row for f in files for _, row in json_rows(f)]
        if not rows:
            raise ValueError(f"{source} has no rows: it should hold {task} rows in the hub schema of "
                             f"{spec.hub_id}")
        return rows[:limit] if limit is not None else rows, source
    from .data import load_hub_dataset

    source = f"{spec.hub_id} ({spec.config or 'default'}, {spec.split})"
    ds = load_hub_dataset(spec.hub_id, spec.config, spec.split, False, f"task {task} ({spec.hub_id})",
                          f"pass --data-dir DIR holding {task}.jsonl in its hub schema (data_files= in Python)")
    if len(ds) == 0:
        raise ValueError(f"{source} has no rows")
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return list(ds), source


def _line_numbers(files: Sequence[str | os.PathLike]) -> list[int] | None:
    """Line number of each row of a single JSONL file (blank lines hold no row), to point at a bad one."""
    if len(files) != 1 or not Path(files[0]).is_file():
        return None
    with open(files[0], encoding="utf-8", errors="replace") as fh:
        return [n for n, line in enumerate(fh, 1) if line.strip()]


def task_items(task: str, rows: Sequence[dict], source: str = "rows",
               lines: Sequence[int] | None = None) -> list[MCItem]:
    """Each row turned into an MCItem with lm-eval's prompt; a malformed row raises ValueError naming where it is."""
    spec = get_task(task)
    items = []
    for i, doc in enumerate(rows):
        where = f"{source}: row {i}" + (f" (line {lines[i]})" if lines is not None and i < len(lines) else "")
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        missing = [f for f in spec.fields if doc.get(f) is None]
        if missing:
            raise ValueError(f"{where}: missing field(s) {', '.join(map(repr, missing))} of the {task} schema "
                             f"({', '.join(spec.fields)})")
        try:
            item = spec.to_item(doc)
        except _RowError as e:
            raise ValueError(f"{where}: {e}") from None
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"{where}: does not fit the {task} schema ({type(e).__name__}: {e})") from None
        if not all(isinstance(c, str) for c in item.choices) or not (
                isinstance(item.context, str) or all(isinstance(c, str) for c in item.context)):
            raise ValueError(f"{where}: the options must be strings")
        if isinstance(item.gold, bool) or not isinstance(item.gold, (int, np.integer)):
            raise ValueError(f"{where}: gold label {item.gold!r} must be an integer option index "
                             f"(0 … {item.n_options - 1}), not {type(item.gold).__name__}")
        if not 0 <= item.gold < item.n_options:
            raise ValueError(f"{where}: gold label {item.gold!r} is out of range for {item.n_options} options")
        items.append(item)
    return items


def evaluate_task(model: torch.nn.Module, tokenizer: Tokenizer, task: str,
                  data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
                  limit: int | None = None, batch_size: int = 32, progress: bool = True) -> dict:
    """Zero-shot accuracy on one task: {task, n, acc, acc_norm, acc_bytes, stderrs, chance, source}.

    Rows come from the hub (``TASKS[task]``: hub id, config, split) or from local JSONL files of
    the same schema (``data_files``). ``limit`` takes the first N rows.
    """
    spec = get_task(task)
    if batch_size < 1:
        raise ValueError(f"batch_size ({batch_size}) must be >= 1")
    rows, source = load_rows(task, data_files, limit)
    lines = None
    if data_files is not None:
        lines = _line_numbers([str(data_files)] if isinstance(data_files, (str, os.PathLike)) else list(data_files))
    items = task_items(task, rows, source, lines)
    result = score_multiple_choice(model, tokenizer, items, batch_size=batch_size, progress=progress, desc=task)
    return {"task": task, **result, "metrics": spec.metrics, "source": source}


def corpus_cloze(texts: Sequence[str], n: int = 200, n_choices: int = 4, context_lines: int = 4,
                 seed: int = 0) -> list[MCItem]:
    """An offline multiple-choice task from held-out text: which line comes next?

    Context: ``context_lines`` consecutive lines; options: the true next line and ``n_choices - 1``
    lines drawn at random from elsewhere in the same texts. Chance is 1 / n_choices. It needs no
    download and suits models far too small for commonsense benchmarks.
    """
    import random

    lines = [line for t in texts for line in t.split("\n")]
    # a "line" worth guessing: verse or prose of a few words, not a speaker tag or a blank
    good = [i for i in range(context_lines, len(lines))
            if len(lines[i].split()) >= 4 and not lines[i].endswith(":") and all(lines[i - context_lines:i])]
    if len(good) < n + n_choices:
        raise ValueError(f"only {len(good)} usable lines for a cloze of {n} items: give more text or a smaller n")
    rng = random.Random(seed)
    pool = [lines[i] for i in good]
    items = []
    for i in rng.sample(good, n):
        distractors: list[str] = []
        while len(distractors) < n_choices - 1:
            cand = rng.choice(pool)
            if cand != lines[i] and cand not in distractors:
                distractors.append(cand)
        gold = rng.randrange(n_choices)
        choices = distractors[:gold] + [lines[i]] + distractors[gold:]
        items.append(MCItem("\n".join(lines[i - context_lines:i]) + "\n", choices, gold, delimiter=""))
    return items


def register_lm_eval() -> type:
    """Register the ``mobilellm`` model with lm-evaluation-harness (an optional extra); returns the class."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ImportError("lm-eval is not installed: pip install 'lm-eval>=0.4' (or the package's [eval] extra)")
    from .lm_eval_adapter import MobileLLMEval

    return MobileLLMEval
