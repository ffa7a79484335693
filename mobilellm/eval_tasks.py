"""The zero-shot tasks: lm-eval 0.4's prompts for the paper's eight benchmarks, their rows, and an offline cloze.

Each task is lm-eval's task YAML rewritten as a plain function from a hub row to an ``MCItem``
(``evaluate.py`` scores the items). Rows come from the hub or from local JSONL files in the hub's
schema; a malformed row is reported at its position. ``corpus_cloze`` makes a task from held-out
text, for models far too small for the commonsense benchmarks.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .evaluate import MCItem, score_multiple_choice

if TYPE_CHECKING:
    import torch

    from .tokenizer import Tokenizer


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
    return MCItem(f"Q: {doc['context']} {doc['question']}\nA:", [doc["answerA"], doc["answerB"], doc["answerC"]], gold)


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
    return MCItem(
        _hellaswag_clean(_need_str(doc["activity_label"], "activity_label") + ": " + ctx),
        [_hellaswag_clean(_need_str(e, "endings")) for e in endings],
        gold,
    )


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
    return MCItem(contexts, [sentence[idx + 1 :].strip()], {"1": 0, "2": 1}[doc["answer"]])


def _copa(doc: dict) -> MCItem:
    # super_glue/copa/utils.py: the premise loses its final period and gains "because"/"therefore";
    # the choices start lower-case with their own space, and the default delimiter adds another.
    connector = {"cause": "because", "effect": "therefore"}.get(doc["question"])
    if connector is None:
        raise _RowError(f"question {doc['question']!r} is not 'cause' or 'effect'")
    choices = [_need_str(doc[c], c) for c in ("choice1", "choice2")]
    if not all(choices):
        raise _RowError("a choice is empty")
    return MCItem(
        _need_str(doc["premise"], "premise").strip()[:-1] + f" {connector}",
        [" " + c[0].lower() + c[1:] for c in choices],
        doc["label"],
    )


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


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec(
            "arc_easy",
            "allenai/ai2_arc",
            "ARC-Easy",
            "test",
            ("question", "choices", "answerKey"),
            _arc,
            "arc_easy",
            "arc/arc_easy.yaml",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "arc_challenge",
            "allenai/ai2_arc",
            "ARC-Challenge",
            "test",
            ("question", "choices", "answerKey"),
            _arc,
            "arc_challenge",
            "arc/arc_challenge.yaml",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "boolq",
            "aps/super_glue",
            "boolq",
            "validation",
            ("passage", "question", "label"),
            _boolq,
            "boolq",
            "super_glue/boolq/default.yaml",
            ("acc",),
        ),
        TaskSpec(
            "piqa",
            "baber/piqa",
            None,
            "validation",
            ("goal", "sol1", "sol2", "label"),
            _piqa,
            "piqa",
            "piqa/piqa.yaml",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "siqa",
            "lighteval/siqa",
            None,
            "validation",
            ("context", "question", "answerA", "answerB", "answerC", "label"),
            _siqa,
            "social_iqa",
            "siqa/siqa.yaml",
            ("acc",),
        ),
        TaskSpec(
            "hellaswag",
            "Rowan/hellaswag",
            None,
            "validation",
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            _hellaswag,
            "hellaswag",
            "hellaswag/hellaswag.yaml",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "openbookqa",
            "allenai/openbookqa",
            "main",
            "test",
            ("question_stem", "choices", "answerKey"),
            _openbookqa,
            "openbookqa",
            "openbookqa/openbookqa.yaml",
            ("acc", "acc_norm"),
        ),
        TaskSpec(
            "winogrande",
            "allenai/winogrande",
            "winogrande_xl",
            "validation",
            ("sentence", "option1", "option2", "answer"),
            _winogrande,
            "winogrande",
            "winogrande/default.yaml",
            ("acc",),
        ),
        TaskSpec(
            "copa",
            "aps/super_glue",
            "copa",
            "validation",
            ("premise", "choice1", "choice2", "question", "label"),
            _copa,
            "copa",
            "super_glue/copa/default.yaml",
            ("acc",),
        ),
    ]
}

# The paper's Table 3 columns, in its order (COPA is extra: we have local rows for it).
PAPER_TASKS = ("arc_easy", "arc_challenge", "boolq", "piqa", "siqa", "hellaswag", "openbookqa", "winogrande")


def get_task(name: str) -> TaskSpec:
    """The task called ``name``, or a ValueError listing the valid names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]


def load_rows(
    task: str, data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None, limit: int | None = None
) -> tuple[list[dict], str]:
    """A task's rows (the first ``limit``) from the hub, or from local JSONL in its hub schema; and their source."""
    spec = get_task(task)
    if limit is not None and limit < 1:
        raise ValueError(f"limit ({limit}) must be >= 1 (or None for every row)")
    if data_files is not None:
        from .corpora import json_rows

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
            raise ValueError(f"{source} has no rows: it should hold {task} rows in the hub schema of {spec.hub_id}")
        return rows[:limit] if limit is not None else rows, source
    from .corpora import load_hub_dataset

    source = f"{spec.hub_id} ({spec.config or 'default'}, {spec.split})"
    ds = load_hub_dataset(
        spec.hub_id,
        spec.config,
        spec.split,
        False,
        f"task {task} ({spec.hub_id})",
        f"pass --data-dir DIR holding {task}.jsonl in its hub schema (data_files= in Python)",
    )
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


def task_items(
    task: str, rows: Sequence[dict], source: str = "rows", lines: Sequence[int] | None = None
) -> list[MCItem]:
    """Each row turned into an MCItem with lm-eval's prompt; a malformed row raises ValueError naming where it is."""
    spec = get_task(task)
    items = []
    for i, doc in enumerate(rows):
        where = f"{source}: row {i}" + (f" (line {lines[i]})" if lines is not None and i < len(lines) else "")
        if not isinstance(doc, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        missing = [f for f in spec.fields if doc.get(f) is None]
        if missing:
            raise ValueError(
                f"{where}: missing field(s) {', '.join(map(repr, missing))} of the {task} schema "
                f"({', '.join(spec.fields)})"
            )
        try:
            item = spec.to_item(doc)
        except _RowError as e:
            raise ValueError(f"{where}: {e}") from None
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise ValueError(f"{where}: does not fit the {task} schema ({type(e).__name__}: {e})") from None
        if not all(isinstance(c, str) for c in item.choices) or not (
            isinstance(item.context, str) or all(isinstance(c, str) for c in item.context)
        ):
            raise ValueError(f"{where}: the options must be strings")
        if isinstance(item.gold, bool) or not isinstance(item.gold, (int, np.integer)):
            raise ValueError(
                f"{where}: gold label {item.gold!r} must be an integer option index "
                f"(0 … {item.n_options - 1}), not {type(item.gold).__name__}"
            )
        if not 0 <= item.gold < item.n_options:
            raise ValueError(f"{where}: gold label {item.gold!r} is out of range for {item.n_options} options")
        items.append(item)
    return items


def evaluate_task(
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    task: str,
    data_files: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    limit: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict:
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


def corpus_cloze(
    texts: Sequence[str], n: int = 200, n_choices: int = 4, context_lines: int = 4, seed: int = 0
) -> list[MCItem]:
    """An offline multiple-choice task from held-out text: which line comes next?

    Context: ``context_lines`` consecutive lines; options: the true next line and ``n_choices - 1``
    lines drawn at random from elsewhere in the same texts. Chance is 1 / n_choices. It needs no
    download and suits models far too small for commonsense benchmarks.
    """
    import random

    lines = [line for t in texts for line in t.split("\n")]
    # a "line" worth guessing: verse or prose of a few words, not a speaker tag or a blank
    good = [
        i
        for i in range(context_lines, len(lines))
        if len(lines[i].split()) >= 4 and not lines[i].endswith(":") and all(lines[i - context_lines : i])
    ]
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
        items.append(MCItem("\n".join(lines[i - context_lines : i]) + "\n", choices, gold, delimiter=""))
    return items


def results_table(results: Sequence[dict]) -> str:
    """``evaluate_task`` results as the command line prints them: one column per task and their average;
    rows acc, acc_norm (acc where lm-eval reports no acc_norm, as its tables are read), chance, rows."""
    tasks = [r["task"] for r in results]
    width = max(10, *(len(t) for t in tasks))

    def row(name: str, vals: Sequence[float]) -> str:
        cells = " ".join(f"{100 * v:>{width}.1f}" for v in vals)
        return f"{name:10s} {cells} {100 * sum(vals) / len(vals):>{width}.1f}"

    lines = [f"{'metric':10s} " + " ".join(f"{t:>{width}s}" for t in tasks) + f" {'average':>{width}s}"]
    for metric in ("acc", "acc_norm"):
        lines.append(row(metric, [r[metric] if metric in r["metrics"] else r["acc"] for r in results]))
    lines.append(row("chance", [r["chance"] for r in results]))
    lines.append(f"{'rows':10s} " + " ".join(f"{r['n']:>{width}d}" for r in results))
    return "\n".join(lines)
