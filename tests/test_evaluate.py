import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mobilellm import MobileLLM
from mobilellm.eval_tasks import TASKS, evaluate_task, get_task, task_items
from mobilellm.evaluate import MCItem, encode_pair, perplexity, score_multiple_choice, score_requests

from .conftest import EVAL_DATA, tiny_config

lm_eval = pytest.importorskip("lm_eval")
LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny matmuls gain nothing from threads, and spinning OpenMP workers crawl when another process
    # shares the cores (conftest imports torch before mobilellm can set OMP_WAIT_POLICY=PASSIVE).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MobileLLM(tiny_config(vocab_size=128, init="fan_in")).eval()


# --- a model whose log-probabilities are known by hand ------------------------------------------


class CharTokenizer:
    """One id per character; id 0 is EOS."""

    vocab = "\x00 abcd"
    eos_id = 0

    def encode(self, text):
        return [self.vocab.index(c) for c in text]


def _probs():
    p = np.full((6, 6), 1 / 6)
    p[2] = [0.1, 0.5, 0.1, 0.1, 0.1, 0.1]  # after "a": " " is likely
    p[1] = [0.0625, 0.0625, 0.0625, 0.5, 0.25, 0.0625]  # after " ": "b" 0.5, "c" 0.25
    p[4] = [0.04, 0.04, 0.04, 0.04, 0.8, 0.04]  # after "c": "c" again, 0.8
    return p


class BigramStub(torch.nn.Module):
    """Logits at a position are log P(next | this token): log_softmax gives the table back exactly."""

    def __init__(self, max_seq_len=16):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(np.log(_probs()), dtype=torch.float64))
        self.cfg = SimpleNamespace(max_seq_len=max_seq_len)

    def forward(self, ids):
        return self.table[ids]


def test_scores_equal_hand_computed_log_probs():
    tok, stub = CharTokenizer(), BigramStub()
    pairs = [encode_pair(tok, "a", " b"), encode_pair(tok, "a", " cccc"), encode_pair(tok, "", "ab")]
    assert pairs[0] == ([2], [1, 3]) and pairs[2] == ([0], [2, 3])
    (ll_b, greedy_b), (ll_c, greedy_c), (ll_e, _) = score_requests(stub, pairs, batch_size=2)
    assert ll_b == pytest.approx(math.log(0.5) + math.log(0.5))
    assert ll_c == pytest.approx(math.log(0.5) + math.log(0.25) + 3 * math.log(0.8))
    assert ll_e == pytest.approx(math.log(1 / 6) + math.log(0.1))  # EOS stands in for the empty context
    assert greedy_b and not greedy_c  # after " " the argmax is "b", not "c"


def test_truncation_keeps_the_last_tokens():
    tok, stub = CharTokenizer(), BigramStub(max_seq_len=3)
    # context + continuation = a a a a " b": the window is the last 3 inputs, both targets fit
    [(ll, _)] = score_requests(stub, [encode_pair(tok, "aaaa", " b")])
    assert ll == pytest.approx(2 * math.log(0.5))
    # a continuation longer than the window: only its last 3 tokens can be scored
    [(ll, _)] = score_requests(stub, [encode_pair(tok, "a", " cccc")])
    assert ll == pytest.approx(3 * math.log(0.8))


def test_acc_and_acc_norm_differ_when_length_decides():
    # " b" has the higher total (log .25) but " cccc" the higher per character (-2.75 / 4)
    item = MCItem("a", ["b", "cccc"], gold=1)
    r = score_multiple_choice(BigramStub(), CharTokenizer(), [item], details=True)
    assert (r["acc"], r["acc_norm"], r["chance"]) == (0.0, 1.0, 0.5)
    assert r["items"][0]["pred"] == 0 and r["items"][0]["pred_norm"] == 1


def test_encode_pair_is_lm_evals(small_data):
    from lm_eval.api.model import TemplateLM

    tok = small_data.tokenizer
    fake = SimpleNamespace(tok_encode=lambda s, **_: tok.encode(s), backend="causal")
    for ctx, cont in [
        ("Question: who is he?\nAnswer:", " the king"),
        ("To be, or not ", "to be"),
        ("The man went therefore", "  the toilet filled."),
        ("ends with newline\n", "Next line"),
        ("no space", "joined"),
    ]:
        assert encode_pair(tok, ctx, cont) == TemplateLM._encode_pair(fake, ctx, cont)
    ctx, cont = encode_pair(tok, "He said ", "hello")
    assert tok.decode(cont).startswith(" ")  # the trailing space moved onto the continuation


def test_batching_and_truncation_match_one_at_a_time(model, small_data):
    tok = small_data.tokenizer
    pairs = [
        encode_pair(tok, c, x)
        for c, x in [
            ("Good morrow", " my lord"),
            ("O Romeo", ", Romeo! wherefore art thou Romeo?"),
            ("Now is the winter of our discontent " * 4, "made glorious summer"),
            ("A", " horse"),
        ]
    ]
    assert len(pairs[2][0]) + len(pairs[2][1]) > 65  # exercises left truncation
    batched = score_requests(model, pairs, batch_size=3)
    for (ctx, cont), (ll, _) in zip(pairs, batched, strict=True):
        full = (ctx + cont)[-65:]
        logp = model(torch.tensor([full[:-1]])).log_softmax(-1)[0]
        n = min(len(cont), len(full) - 1)
        ref = sum(logp[len(full) - 1 - n + j, t].item() for j, t in enumerate(full[len(full) - n :]))
        assert ll == pytest.approx(ref, abs=1e-4)


# --- perplexity ------------------------------------------------------------------------------------


def test_perplexity_equals_evaluate_loss_on_tiling_windows(model, small_data):
    from mobilellm.data import val_windows
    from mobilellm.train import evaluate_loss

    tokens = small_data.val[: 32 * 12 + 1]
    r = perplexity(model, tokens, seq_len=32, batch_size=5)
    assert r["tokens"] == 32 * 12 and r["windows"] == 12
    assert r["nll"] == pytest.approx(evaluate_loss(model, val_windows(tokens, 32)), abs=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["nll"]))


def test_sliding_window_scores_each_token_once_with_full_context(model, small_data):
    tokens = np.asarray(small_data.val[:101], dtype=np.int64)
    L, stride = 16, 4
    r = perplexity(model, tokens, seq_len=L, stride=stride, batch_size=7)
    assert r["tokens"] == 100
    # reference: each target with its own window start; targets sharing a start share one forward pass
    starts = {}
    for p in range(1, 101):
        start = 0
        if p > L:  # later targets come in chunks of `stride`; a chunk's last target sees L tokens
            start = min(L + ((p - L - 1) // stride + 1) * stride, 100) - L
        starts.setdefault(start, []).append(p)
    total = 0.0
    for start, targets in starts.items():
        logp = model(torch.tensor(tokens[None, start : max(targets)]))[0].log_softmax(-1)
        total -= sum(logp[p - 1 - start, tokens[p]].item() for p in targets)
    assert r["nll"] == pytest.approx(total / 100, abs=1e-5)
    plain = perplexity(model, tokens, seq_len=L)
    assert plain["tokens"] == 100 and plain["nll"] != pytest.approx(r["nll"], abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seq_len=16, stride=0), "stride"),
        (dict(seq_len=16, stride=17), "stride"),
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=65), "max_seq_len"),
    ],
)
def test_perplexity_rejects_bad_windows(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        perplexity(model, np.arange(50, dtype=np.uint16), **kwargs)


def test_perplexity_needs_two_tokens(model):
    with pytest.raises(ValueError, match="at least 2"):
        perplexity(model, np.zeros(1, dtype=np.uint16), seq_len=8)


# --- the tasks: prompts equal lm-eval's --------------------------------------------------------------

SAMPLE_ROWS = {
    "arc_easy": {
        "id": "Mercury_7175875",
        "question": "An astronomer observes that a planet rotates faster "
        "after a meteorite impact. Which is the most likely effect of this increase in rotation?",
        "choices": {
            "text": [
                "Planetary density will decrease.",
                "Planetary years will become longer.",
                "Planetary days will become shorter.",
                "Planetary gravity will become stronger.",
            ],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": "C",
    },
    "arc_challenge": {
        "id": "NYSEDREGENTS_2015_8_29",
        "question": "Which unit is used to record temperature?",
        "choices": {"text": ["degrees Celsius", "grams", "liters"], "label": ["1", "2", "3"]},
        "answerKey": "1",
    },
    "boolq": {
        "question": "do iran and afghanistan speak the same language",
        "passage": "Persian language -- Persian is a pluricentric language.",
        "idx": 0,
        "label": 1,
    },
    "piqa": {
        "goal": "When boiling butter, when it's ready, you can",
        "sol1": "Pour it onto a plate ",
        "sol2": "Pour it into a jar",
        "label": 1,
    },
    "siqa": {
        "context": "Tracy didn't go home that evening and resisted Riley's attacks.",
        "question": "What does Tracy need to do before this?",
        "answerA": "make a new plan",
        "answerB": "Go home and see Riley",
        "answerC": "Find somewhere to go",
        "label": "3",
    },
    "hellaswag": {
        "ind": 4,
        "activity_label": "Health",
        "ctx_a": "[header] How to cure a cold [title] Drink fluids. [step] Water is best.",
        "ctx_b": "YOU should also",
        "ctx": "unused",
        "endings": [
            "drink tea. [substeps] Green tea works.",
            "run  a marathon.",
            "sleep [title] well.",
            " avoid juice.",
        ],
        "source_id": "wikihow~1",
        "split": "val",
        "split_type": "indomain",
        "label": "2",
    },
    "openbookqa": {
        "id": "7-980",
        "question_stem": "The sun is responsible for",
        "choices": {
            "text": [
                "puppies learning new tricks",
                "children growing up and getting old",
                "flowers wilting in a vase",
                "plants sprouting, blooming and wilting",
            ],
            "label": ["A", "B", "C", "D"],
        },
        "answerKey": " D",
    },
    "winogrande": {
        "sentence": "Sarah was a much better surgeon than Maria so _ always got the harder cases.",
        "option1": "Sarah",
        "option2": "Maria",
        "answer": "1",
    },
    "copa": {
        "premise": "My body cast a shadow over the grass.",
        "choice1": "The sun was rising.",
        "choice2": "The grass was cut.",
        "question": "cause",
        "idx": 0,
        "label": 0,
    },
}


def _lm_eval_yaml(directory: Path, name: str, data_file: Path, split: str = "eval") -> str:
    """A local lm-eval task: lm-eval's own YAML for `name`, reading `data_file` instead of the hub."""
    spec = TASKS[name]
    task = f"mobilellm_test_{name}"
    cfg = {
        "include": str(LM_EVAL_TASKS / spec.lm_eval_yaml),
        "task": task,
        "tag": [],
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {split: str(data_file)}},
        "training_split": None,
        "validation_split": None,
        "test_split": split,
        "fewshot_split": None,
    }
    (directory / f"{task}.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    return task


@pytest.fixture(scope="module")
def lm_eval_sample_tasks(tmp_path_factory):
    from lm_eval.tasks import TaskManager

    d = tmp_path_factory.mktemp("lm_eval_tasks")
    names = {}
    for name, row in SAMPLE_ROWS.items():
        f = d / f"{name}.jsonl"
        f.write_text(json.dumps(row) + "\n")
        names[name] = _lm_eval_yaml(d, name, f)
    loaded = TaskManager(include_path=str(d), include_defaults=False).load(list(names.values()))["tasks"]
    return {name: loaded[t] for name, t in names.items()}


def test_every_task_has_a_sample_row():
    assert set(SAMPLE_ROWS) == set(TASKS)


@pytest.mark.parametrize("name", list(SAMPLE_ROWS))
def test_prompts_equal_lm_evals(name, lm_eval_sample_tasks):
    task = lm_eval_sample_tasks[name]
    task.build_all_requests(limit=1)
    theirs = [inst.args for inst in sorted(task.instances, key=lambda i: i.idx)]
    [item] = task_items(name, [SAMPLE_ROWS[name]])
    assert item.requests() == theirs
    doc = task.eval_docs[0]
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):  # COPA's target is the answer's text: lm-eval takes its index
        gold = task.doc_to_choice(doc).index(gold)
    assert item.gold == gold
    if not task.multiple_input:  # acc_norm divides by these strings' lengths
        assert item.choices == task.doc_to_choice(doc)


# --- whole tasks on the committed real rows (data/eval), and agreement with lm-eval through the adapter ------------

SHARED_TASKS = {"arc_easy": 0.25, "piqa": 0.5, "copa": 0.5}  # task: chance on the first rows


def test_evaluate_task_on_committed_rows(model, small_data):
    tok = small_data.tokenizer
    for name, chance in SHARED_TASKS.items():
        path = EVAL_DATA / f"{name}.jsonl"
        r = evaluate_task(model, tok, name, data_files=path, limit=8, progress=False)
        assert r["task"] == name and r["n"] == 8 and r["chance"] == pytest.approx(chance)
        # the same figures from the first 8 rows of the file, scored request by request
        items = task_items(name, [json.loads(line) for line in path.read_text().splitlines()[:8]])
        right = []
        for item in items:
            lls = [ll for ll, _ in score_requests(model, [encode_pair(tok, c, x) for c, x in item.requests()])]
            right.append(float(np.argmax(lls) == item.gold))
        assert r["acc"] == pytest.approx(np.mean(right))
        assert r["acc_stderr"] == pytest.approx(np.std(right, ddof=1) / math.sqrt(8))
        assert 0 <= r["acc_norm"] <= 1


@pytest.mark.slow
def test_lm_eval_through_the_adapter_agrees(model, small_data, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from mobilellm.lm_eval_adapter import register_lm_eval

    adapter = register_lm_eval()(model, small_data.tokenizer, batch_size=16)
    limit = 24
    splits = {"arc_easy": "test", "piqa": "validation", "copa": "validation"}
    names = {n: _lm_eval_yaml(tmp_path, n, EVAL_DATA / f"{n}.jsonl", splits[n]) for n in SHARED_TASKS}
    out = simple_evaluate(
        model=adapter,
        tasks=list(names.values()),
        limit=limit,
        bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        log_samples=True,
    )
    for name, task in names.items():
        ours = evaluate_task(
            model, small_data.tokenizer, name, data_files=EVAL_DATA / f"{name}.jsonl", limit=limit, progress=False
        )
        theirs = out["results"][task]
        assert ours["acc"] == theirs["acc,none"], name
        if "acc_norm" in TASKS[name].metrics:
            assert ours["acc_norm"] == theirs["acc_norm,none"], name
        # and item by item, the log-likelihoods themselves
        rows = task_items(name, [s["doc"] for s in sorted(out["samples"][task], key=lambda s: s["doc_id"])])
        mine = score_multiple_choice(model, small_data.tokenizer, rows, details=True)["items"]
        for s, m in zip(sorted(out["samples"][task], key=lambda s: s["doc_id"]), mine, strict=True):
            np.testing.assert_allclose([r[0] for r in s["filtered_resps"]], m["loglikelihoods"], atol=1e-4)


# --- the adapter's other requests ------------------------------------------------------------------


def _instance(kind, args):
    from lm_eval.api.instance import Instance

    return Instance(request_type=kind, doc={}, arguments=args, idx=0)


def test_loglikelihood_rolling_is_perplexity_after_eos(model, small_data):
    from mobilellm.lm_eval_adapter import register_lm_eval

    tok = small_data.tokenizer
    text = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate. " * 3
    ids = tok.encode(text)
    assert len(ids) > 64  # more than one window
    adapter = register_lm_eval()(model, tok, batch_size=4)
    [ll] = adapter.loglikelihood_rolling([_instance("loglikelihood_rolling", (text,))], disable_tqdm=True)
    r = perplexity(model, np.array([tok.eos_id] + ids), seq_len=64)
    assert ll == pytest.approx(-r["nll"] * r["tokens"], abs=1e-3)


def test_generate_until_is_greedy_and_stops(model, small_data):
    from mobilellm.lm_eval_adapter import register_lm_eval

    tok = small_data.tokenizer
    adapter = register_lm_eval()(model, tok)
    prompt = "KING HENRY:\nOnce more unto the breach"
    ids = torch.tensor([tok.encode(prompt)])
    new = model.generate(ids, 20, eos_id=tok.eos_id)[0, ids.shape[1] :].tolist()
    new = new[: new.index(tok.eos_id)] if tok.eos_id in new else new
    full = tok.decode(new)
    [got] = adapter.generate_until(
        [_instance("generate_until", (prompt, {"until": [], "max_gen_toks": 20}))], disable_tqdm=True
    )
    assert got == full
    stop = full[len(full) // 2 : len(full) // 2 + 2] if len(full) >= 4 else "\x00"
    [got] = adapter.generate_until(
        [_instance("generate_until", (prompt, {"until": [stop], "max_gen_toks": 20}))], disable_tqdm=True
    )
    assert got == full.split(stop)[0]


def test_adapter_is_registered_and_loads_checkpoints(model, small_data, tmp_path):
    from lm_eval.api.registry import get_model

    from mobilellm.checkpoint import save_checkpoint
    from mobilellm.lm_eval_adapter import register_lm_eval

    cls = register_lm_eval()
    assert get_model("mobilellm") is cls
    assert get_model("dummy") is not None  # lm-eval's own models are still found
    save_checkpoint(tmp_path, model, None, None, 0, 0, None, small_data.tokenizer)
    loaded = cls.create_from_arg_string(f"pretrained={tmp_path}", {"batch_size": "8", "device": "cpu"})
    req = [_instance("loglikelihood", ("To be, or not to be", ", that is the question"))]
    assert loaded.loglikelihood(req, disable_tqdm=True) == cls(model, small_data.tokenizer).loglikelihood(
        req, disable_tqdm=True
    )


# --- errors a user can cause ------------------------------------------------------------------------


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_unknown_task_lists_the_valid_ones(model, small_data):
    with pytest.raises(ValueError, match="arc_easy.*winogrande"):
        get_task("arc_e")
    with pytest.raises(ValueError, match="unknown task 'mmlu'"):
        evaluate_task(model, small_data.tokenizer, "mmlu", progress=False)


@pytest.mark.parametrize(
    "task, rows, match",
    [
        (
            "piqa",
            [SAMPLE_ROWS["piqa"], {k: v for k, v in SAMPLE_ROWS["piqa"].items() if k != "label"}],
            r"bad\.jsonl: row 1 \(line 2\): missing field\(s\) 'label'",
        ),
        (
            "piqa",
            [SAMPLE_ROWS["piqa"], dict(SAMPLE_ROWS["piqa"], label=2)],
            r"row 1 \(line 2\): gold label 2 is out of range",
        ),
        ("arc_easy", [dict(SAMPLE_ROWS["arc_easy"], answerKey="E")], r"row 0 \(line 1\): answerKey 'E'"),
        ("winogrande", [dict(SAMPLE_ROWS["winogrande"], answer="")], "answer '' is not"),
        ("copa", [dict(SAMPLE_ROWS["copa"], question="why")], "question 'why'"),
        ("piqa", [SAMPLE_ROWS["piqa"], "{not json"], r"bad\.jsonl: line 2 is not valid JSON"),
        ("piqa", [], "has no rows"),
    ],
)
def test_malformed_files_name_the_row(model, small_data, tmp_path, task, rows, match):
    f = _write(tmp_path / "bad.jsonl", rows) if rows else tmp_path / "bad.jsonl"
    if not rows:
        f.write_text("")
    with pytest.raises(ValueError, match=match):
        evaluate_task(model, small_data.tokenizer, task, data_files=f, progress=False)


def test_missing_file_and_bad_limit(model, small_data, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate_task(model, small_data.tokenizer, "piqa", data_files=tmp_path / "nope.jsonl", progress=False)
    f = _write(tmp_path / "ok.jsonl", [SAMPLE_ROWS["piqa"]])
    with pytest.raises(ValueError, match="limit"):
        evaluate_task(model, small_data.tokenizer, "piqa", data_files=f, limit=0, progress=False)


def test_task_rows_edited_in_place_are_read_again(tmp_path):
    """Flipped labels with the file's size and mtime kept give the new rows, not a cached copy."""
    from mobilellm.eval_tasks import load_rows

    row = {
        "premise": "The man turned on the faucet.",
        "choice1": "The toilet filled.",
        "choice2": "Water flowed.",
        "question": "effect",
        "idx": 0,
    }
    f = tmp_path / "copa.jsonl"
    f.write_text(json.dumps({**row, "label": 1}) + "\n")
    st = f.stat()
    assert load_rows("copa", f)[0][0]["label"] == 1
    f.write_text(json.dumps({**row, "label": 0}) + "\n")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert load_rows("copa", f)[0][0]["label"] == 0
