"""Command line: ``python -m mobilellm {train,generate,export,eval,bench,configs,ablation,verify,figures,book} …``."""

from __future__ import annotations

import os

# The command line is a process's outermost entry, so it may set what torch reads when it starts:
# spinning OpenMP workers make training several times slower when another process shares the cores.
# (Before anything imports torch; importing the package itself changes nothing.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from ._quiet import quiet_libraries  # noqa: E402
from .formats import GGUF_TYPES, QUANT_MODES  # noqa: E402


def _add_train(sub) -> None:
    from .config import TrainConfig, list_configs
    from .corpora import CORPORA

    tc = TrainConfig()  # the defaults, stated once

    p = sub.add_parser(
        "train",
        help="train a preset on a corpus, with checkpoints and resume",
        description="Train a model. Ctrl-C saves a checkpoint; --resume continues it.",
    )
    p.add_argument(
        "--config",
        default=None,
        choices=list_configs(),
        metavar="NAME",
        help=f"model preset (default teach-micro): {', '.join(list_configs())}",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="start a new run (step 0, fresh optimizer) from a checkpoint's weights, its config and tokenizer",
    )
    p.add_argument(
        "--corpus",
        default="shakespeare",
        help=f"{' | '.join(CORPORA)} | PATH to a .txt/.jsonl file (default shakespeare)",
    )
    p.add_argument(
        "--data-files",
        default=None,
        help="local files in the hub schema for a hub corpus (offline), e.g. a TinyStories .txt",
    )
    p.add_argument("--max-chars", type=int, default=None, help="read at most this many characters of the corpus")
    p.add_argument(
        "--tokenizer", default=None, help="an existing SentencePiece .model (e.g. Llama's) instead of training one"
    )
    p.add_argument("--max-steps", type=int, default=tc.max_steps, help=f"optimizer steps (default {tc.max_steps})")
    p.add_argument("--out", required=True, help="folder for checkpoints and metrics.jsonl")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a checkpoint already in --out (without it, training there is refused)",
    )
    p.add_argument(
        "--batch-size", type=int, default=tc.batch_size, help=f"sequences per step, all processes ({tc.batch_size})"
    )
    p.add_argument("--grad-accum", type=int, default=tc.grad_accum, help=f"micro-steps per step ({tc.grad_accum})")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default: the model's max)")
    p.add_argument("--lr", type=float, default=tc.lr, help=f"peak learning rate (default {tc.lr:g}; paper 2e-3)")
    p.add_argument("--warmup-steps", type=int, default=tc.warmup_steps, help=f"linear warmup ({tc.warmup_steps})")
    p.add_argument(
        "--eval-every", type=int, default=tc.eval_every, help=f"validate, checkpoint every N ({tc.eval_every})"
    )
    p.add_argument("--seed", type=_seed, default=tc.seed, help=f"random seed (default {tc.seed})")
    p.add_argument("--device", default=tc.device, help=f"auto | cpu | cuda | mps (default {tc.device})")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the model (faster once compiled; compiling takes a while)"
    )
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard with FSDP2 instead of DDP")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where prepared tokens are cached (default: data/cache in a checkout, "
        "else ~/.cache/mobilellm; or $MOBILELLM_CACHE)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_generate(sub) -> None:
    p = sub.add_parser(
        "generate",
        help="sample text from a checkpoint, or from a KV-cached ExecuTorch .pte",
        description="Continue a prompt with a trained checkpoint (KV-cached, eager PyTorch), or "
        "with a program written by `export --format pte` (--pte, run by ExecuTorch's "
        "runtime, tokens streamed as they come).",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="folder written by `train --out`")
    src.add_argument("--pte", help="a KV-cached .pte written by `export --format pte` (needs --tokenizer)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="SentencePiece .model for --pte (default: NAME.tokenizer.model beside NAME.pte)",
    )
    p.add_argument("--prompt", default="", help="text to continue (default: start from BOS)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass")
    p.add_argument("--seed", type=_seed, default=0, help="sampling seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (--checkpoint only)")


EXPORT_FORMATS = ("hf", "pte", "gguf")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint in another format (Hugging Face Llama folder, ExecuTorch .pte, GGUF)",
        description="Convert a trained or released checkpoint. --format hf writes a folder "
        "that transformers loads as LlamaForCausalLM (layer-shared blocks are "
        "written out as separate layers) and load_pretrained restores exactly. "
        "--format pte writes an ExecuTorch program (XNNPACK) with a static KV cache "
        "(one slot per executed layer; prefill a chunk, then decode token by token) "
        "in fp32, int8 (W8A8) or 8da4w (int8 activations, int4 grouped weights), "
        "and checks it against the eager model; --int8/--seq-len instead write the "
        "older fixed-window program without a cache. --format gguf writes a GGUF "
        "file (F16 or Q8_0) with the tokenizer, for llama.cpp.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a folder written by `train --out`, by save_pretrained, or a released MobileLLM "
        "(facebook/MobileLLM-125M layout); a hub repo id downloads it, when online",
    )
    p.add_argument(
        "--format",
        default="hf",
        choices=EXPORT_FORMATS,
        help="hf: Hugging Face LlamaForCausalLM folder (default); pte: ExecuTorch program file; "
        "gguf: GGUF file for llama.cpp",
    )
    p.add_argument("--out", required=True, help="folder to write (hf) or file to write (pte, gguf)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what --out already holds (a .pte and its tokenizer, a .gguf, an exported folder); "
        "without it an existing file is refused",
    )
    p.add_argument(
        "--quant",
        default=None,
        choices=QUANT_MODES,
        help="pte: fp32 (default), int8 (W8A8) or 8da4w (int4 weights in groups of --group-size)",
    )
    p.add_argument(
        "--group-size",
        type=int,
        default=32,
        help="pte 8da4w: weights per int4 scale, a multiple of 32 (default 32); 0: one scale per row. "
        "XNNPACK needs the model's widths in multiples of 32 too",
    )
    p.add_argument(
        "--max-len",
        type=int,
        default=None,
        help="pte: the KV cache window in tokens, prompt and output together (default: the model's max)",
    )
    p.add_argument(
        "--gguf-type",
        default="f16",
        choices=GGUF_TYPES,
        help="gguf: tensor type of the matrices (default f16; q8_0 and q4_0 quantize in blocks of 32)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="pte, fixed-window program: int8 weights and dynamic per-token int8 activations",
    )
    p.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="pte, fixed-window program (no KV cache): its input length (default min(64, the model's max))",
    )


def _export_cached_pte(args: argparse.Namespace, out: Path) -> int:
    from .accounting import param_count
    from .executorch_program import export_program
    from .executorch_runtime import self_check, tokenizer_beside
    from .export import load_pretrained

    model, tok = load_pretrained(args.checkpoint, device="cpu")
    quant = args.quant or "fp32"
    export_program(
        model,
        out,
        quant,
        max_len=args.max_len,
        group_size=args.group_size,
        bos_id=tok.bos_id if tok is not None else None,
        tokenizer_fingerprint=tok.fingerprint if tok is not None else None,
    )
    if tok is not None:  # under the program's own name, where `generate --pte` finds it
        tok.save(tokenizer_beside(out))
    check = self_check(model, out)
    print(
        json.dumps(
            {
                "format": "pte",
                "out": str(out),
                "bytes": out.stat().st_size,
                "quant": quant,
                "group_size": args.group_size if quant == "8da4w" else None,
                "max_len": check.pop("max_len"),
                "kv_cache_slots": model.cfg.n_executed_layers,
                "stored_blocks": model.cfg.n_layers,
                "vocab_size": model.cfg.vocab_size,
                "params": param_count(model.cfg)["total"],
                "tokenizer": tok is not None,
                "self_check": check,
            }
        )
    )
    return 0


def _course_cache_dir() -> Path | None:
    """The course's token cache when running from a checkout (or ``$MOBILELLM_CACHE``), else the library's."""
    from .course import paths

    return paths.cache_dir() if paths.is_checkout() or os.environ.get("MOBILELLM_CACHE") else None


def _writable(path: str | os.PathLike, flag: str, folder: bool) -> Path:
    """``path`` checked as a place to write (a folder, or a file when not ``folder``) before any slow work."""
    p = Path(path)
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {p} is a file: give a folder")
    if not folder and p.is_dir():
        raise ValueError(f"{flag} {p} is a folder: give a file name, e.g. {p / 'out.json'}")
    base = p if folder and p.is_dir() else p.parent
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"{flag} {p} is under {base}, which is a file: give a path in a folder")
    try:  # a real write: permission bits lie to root, and a read-only file system ignores them
        with tempfile.TemporaryFile(dir=base):
            pass
    except OSError as e:
        raise ValueError(
            f"{flag} {p}: cannot write in {base} ({e.strerror or e}); choose a folder you can write to"
        ) from None
    return p


def _refuse_existing(args: argparse.Namespace, *paths: Path) -> None:
    """An export never replaces a file without being asked (--overwrite)."""
    there = [str(p) for p in paths if p.exists()]
    if there and not args.overwrite:
        raise ValueError(
            f"{' and '.join(there)} already exist{'s' if len(there) == 1 else ''}: pass --overwrite to "
            "replace, or choose another --out"
        )


def _export_pte(args: argparse.Namespace, out: Path) -> int:
    import importlib.util

    import torch

    from .accounting import param_count
    from .executorch_window import compare_executorch, export_executorch
    from .export import load_pretrained

    if importlib.util.find_spec("executorch") is None:
        raise ValueError("--format pte needs executorch: pip install 'executorch>=1.0'")
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; --format pte writes one file, e.g. {out / 'model.pte'}")
    _writable(out, "--out", folder=False)
    from .executorch_runtime import tokenizer_beside

    _refuse_existing(args, out, tokenizer_beside(out))
    legacy = args.int8 or args.seq_len is not None
    if legacy and (args.quant is not None or args.max_len is not None):
        raise ValueError(
            "--int8/--seq-len write the fixed-window program; --quant/--max-len the KV-cached one: use one pair"
        )
    if not legacy:
        return _export_cached_pte(args, out)
    if args.seq_len is not None and args.seq_len < 1:
        raise ValueError(f"--seq-len ({args.seq_len}) must be >= 1")
    model, _ = load_pretrained(args.checkpoint, device="cpu")
    seq_len = args.seq_len or min(64, model.cfg.max_seq_len)
    quantize = "int8" if args.int8 else None
    export_executorch(model, out, quantize=quantize, seq_len=seq_len)
    ids = torch.randint(0, model.cfg.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
    check = compare_executorch(model, out, ids)
    print(
        json.dumps(
            {
                "format": "pte",
                "out": str(out),
                "bytes": out.stat().st_size,
                "quantize": quantize,
                "seq_len": seq_len,
                "vocab_size": model.cfg.vocab_size,
                "params": param_count(model.cfg)["total"],
                "self_check": {k: float(f"{v:.4g}") for k, v in check.items()},
            }
        )
    )
    return 0


def _export_gguf(args: argparse.Namespace, out: Path) -> int:
    from .export import load_pretrained
    from .gguf_export import write_gguf

    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; --format gguf writes one file, e.g. {out / 'model.gguf'}")
    _writable(out, "--out", folder=False)
    _refuse_existing(args, out)
    model, tok = load_pretrained(args.checkpoint, device="cpu")
    write_gguf(model, out, tok, args.gguf_type)
    print(
        json.dumps(
            {
                "format": "gguf",
                "out": str(out),
                "bytes": out.stat().st_size,
                "type": args.gguf_type,
                "llama_layers": model.cfg.n_executed_layers,
                "tokenizer": tok is not None,
            }
        )
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Load a checkpoint in any layout we read and write it in ``--format``."""
    import importlib.util

    from .accounting import param_count
    from .export import load_pretrained, save_pretrained

    out = Path(args.out)
    if out.exists() and Path(args.checkpoint).exists() and out.resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"--out {args.out} is the checkpoint folder itself: choose another folder")
    if args.format == "pte":
        return _export_pte(args, out)
    if args.int8 or args.seq_len is not None or args.quant is not None or args.max_len is not None:
        raise ValueError("--int8, --seq-len, --quant and --max-len apply to --format pte only")
    if args.format == "gguf":
        return _export_gguf(args, out)
    if importlib.util.find_spec("transformers") is None:
        raise ValueError("--format hf needs transformers: pip install 'transformers>=4.48'")
    _writable(out, "--out", folder=True)
    _refuse_existing(args, *(out / name for name in ("config.json", "model.safetensors") if out.is_dir()))
    model, tok = load_pretrained(args.checkpoint)
    save_pretrained(model, out, tok)
    cfg = model.cfg
    print(
        json.dumps(
            {
                "format": args.format,
                "out": str(out),
                "params": param_count(model.cfg)["total"],
                "stored_blocks": cfg.n_layers,
                "llama_layers": cfg.n_executed_layers,
                "layer_sharing": cfg.layer_sharing,
                "tied_embeddings": cfg.share_embedding,
                "tokenizer": tok is not None,
            }
        )
    )
    return 0


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="zero-shot accuracy on the paper's commonsense tasks (a Table 3 row)",
        description="Score a model on multiple-choice tasks the way lm-eval 0.4 does (acc, acc_norm).",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a folder written by `train --out` or save_pretrained, a released MobileLLM folder, or a "
        "hub repo id such as facebook/MobileLLM-125M (needs network)",
    )
    p.add_argument(
        "--tasks",
        default="paper",
        help="comma-separated tasks, or 'paper' for the paper's eight (default): arc_easy, arc_challenge, "
        "boolq, piqa, siqa, hellaswag, openbookqa, winogrande (also: copa)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="read TASK.jsonl files (hub schema) from this folder instead of the hub (offline)",
    )
    p.add_argument("--limit", type=int, default=None, help="score only the first N rows of each task")
    p.add_argument("--batch-size", type=int, default=32, help="requests per forward pass (default 32)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_eval(args: argparse.Namespace) -> int:
    """Evaluate a checkpoint on tasks and print a table like the paper's Table 3."""
    from .devices import auto_device
    from .eval_tasks import PAPER_TASKS, TASKS, evaluate_task, results_table
    from .export import load_pretrained

    tasks = list(PAPER_TASKS) if args.tasks == "paper" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise ValueError(f"--tasks {args.tasks!r} names no task: give e.g. 'paper' or 'arc_easy,piqa'")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; valid: {', '.join(TASKS)}")
    twice = sorted({t for t in tasks if tasks.count(t) > 1})
    if twice:
        raise ValueError(f"--tasks names {', '.join(twice)} twice: each task counts once in the average, name it once")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit ({args.limit}) must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size ({args.batch_size}) must be >= 1")
    if args.json:
        _writable(args.json, "--json", folder=False)
    files = {}
    if args.data_dir:
        for t in tasks:
            f = Path(args.data_dir) / f"{t}.jsonl"
            if not f.is_file():
                raise FileNotFoundError(f"{f} does not exist: --data-dir needs one TASK.jsonl per task")
            files[t] = f
    device = auto_device(args.device)
    model, tok = load_pretrained(args.checkpoint, device=device)
    if tok is None:
        raise FileNotFoundError(f"{args.checkpoint} has no tokenizer.model: cannot turn text into tokens")
    results = [
        evaluate_task(model, tok, t, files.get(t), args.limit, args.batch_size, progress=not args.no_progress)
        for t in tasks
    ]
    print(results_table(results))
    if args.json:
        from ._files import write_atomic

        text = json.dumps({"checkpoint": args.checkpoint, "results": results}, indent=1, default=str)
        write_atomic(args.json, lambda t: t.write_text(text))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Prepare the data, train, print the result."""
    from .checkpoint import checkpoint_dir
    from .config import get_config
    from .data import prepare
    from .devices import auto_device
    from .tokenizer import Tokenizer
    from .train import TrainConfig, train

    cfg = get_config(args.config or "teach-micro")
    # Everything checkable is checked before the (slow) data preparation.
    tc = TrainConfig(
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        eval_every=args.eval_every,
        seed=args.seed,
        device=args.device,
        compile=args.compile,
        fsdp=args.fsdp,
        progress=not args.no_progress,
    )
    if tc.seq_len is not None and tc.seq_len > cfg.max_seq_len:
        raise ValueError(f"--seq-len ({tc.seq_len}) exceeds {args.config}'s max_seq_len ({cfg.max_seq_len})")
    auto_device(args.device)
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pick one")
    if args.resume and args.init_from is not None:
        raise ValueError("--init-from starts a new run and --resume continues one: pick one")
    out = _writable(args.out, "--out", folder=True)
    if not args.resume and not args.overwrite and out.is_dir() and checkpoint_dir(out) is not None:
        raise ValueError(
            f"{out} already holds a checkpoint: pass --resume to continue it, another --out to "
            "start a new run, or --overwrite to replace it"
        )
    if args.resume and (not out.is_dir() or checkpoint_dir(out) is None):
        raise FileNotFoundError(f"nothing to resume in {out}: train without --resume first")
    if args.tokenizer is not None and not Path(args.tokenizer).is_file():
        raise FileNotFoundError(f"--tokenizer {args.tokenizer} does not exist")
    model, tokenizer = None, args.tokenizer
    if args.init_from is not None:
        model, cfg, tokenizer = _init_from(args)
    elif tokenizer is not None and (pieces := Tokenizer(tokenizer).vocab_size) != cfg.vocab_size:
        raise ValueError(
            f"--tokenizer {tokenizer} has {pieces} pieces but --config "
            f"{args.config} has vocab_size {cfg.vocab_size}: pass a tokenizer of {cfg.vocab_size} pieces, "
            "or leave out --tokenizer to train one"
        )
    corpus_kwargs = {}
    if args.data_files is not None:
        corpus_kwargs["data_files"] = args.data_files
    if args.max_chars is not None:
        corpus_kwargs["max_chars"] = args.max_chars
    data = prepare(args.corpus, cfg.vocab_size, _cache_dir(args.cache_dir), tokenizer, **corpus_kwargs)
    print(f"data: {json.dumps(data.summary())}", file=sys.stderr)
    _, result = train(cfg, tc, data, out=args.out, resume=args.resume, model=model, overwrite=args.overwrite)

    def finite(x: float, digits: int) -> float | None:  # the summary stays strict JSON
        return round(x, digits) if math.isfinite(x) else None

    summary = {
        "config": args.config or ("teach-micro" if args.init_from is None else None),
        "init_from": args.init_from,
        "params": result.params,
        "steps": result.steps,
        "tokens": result.tokens,
        "final_val_loss": finite(result.final_val_loss, 4),
        "tokens_per_s": finite(result.tokens_per_s, None),
        "wall_time_s": round(result.wall_time, 1),
        "interrupted": result.interrupted,
        "out": str(Path(args.out)),
    }
    print(json.dumps(summary))
    return 130 if result.interrupted else 0


def _init_from(args: argparse.Namespace):
    """``--init-from``: the checkpoint's model, its config and its tokenizer, for a new run."""
    from .checkpoint import load_checkpoint_and_tokenizer
    from .config import get_config

    src = Path(args.init_from)
    model, _, tok = load_checkpoint_and_tokenizer(src, "cpu")
    if tok is None:
        raise FileNotFoundError(
            f"--init-from {src} has no tokenizer.model: its weights need the tokenizer they were trained with"
        )
    if args.config is not None and get_config(args.config) != model.cfg:
        raise ValueError(
            f"--init-from {src} holds another model than --config {args.config}: leave out --config "
            "(the checkpoint's own config is used)"
        )
    if args.tokenizer is not None:
        raise ValueError("--init-from brings its own tokenizer: leave out --tokenizer")
    return model, model.cfg, tok


def _cache_dir(flag: str | None) -> Path | None:
    """``--cache-dir`` checked (a folder, or a path where one can be made), else the default."""
    if flag is None:
        return _course_cache_dir()
    p = Path(flag)
    if p.exists() and not p.is_dir():
        raise ValueError(f"--cache-dir {p} is a file: give a folder for the token cache")
    return p


def _generate_pte(args: argparse.Namespace) -> int:
    from .executorch_program import tokenizer_id
    from .executorch_runtime import PteDecoder, stream_text, tokenizer_beside
    from .tokenizer import Tokenizer

    tok_path = Path(args.tokenizer) if args.tokenizer else tokenizer_beside(args.pte)
    if not args.tokenizer and not tok_path.is_file() and Path(args.pte).with_name("tokenizer.model").is_file():
        tok_path = Path(args.pte).with_name("tokenizer.model")  # a program exported before the tokenizer had its name
    if not tok_path.is_file():
        raise FileNotFoundError(f"tokenizer {tok_path} does not exist: pass --tokenizer FILE.model")
    tok = Tokenizer(tok_path)
    dec = PteDecoder(args.pte)
    if tok.vocab_size != dec.vocab_size:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens, the program {dec.vocab_size}: "
            "pass the tokenizer the model was trained with"
        )
    recorded = dec.meta.get("get_tokenizer_id")
    if recorded is not None and recorded != tokenizer_id(tok.fingerprint):
        raise ValueError(
            f"{tok_path} is not the tokenizer {args.pte} was exported with (the program records another "
            f"fingerprint): pass --tokenizer with the {tokenizer_beside(args.pte).name} written beside it"
        )
    ids = [tok.eos_id] + tok.encode(args.prompt)  # training packs documents after EOS
    room = dec.max_len - len(ids)
    if room <= 0:
        raise ValueError(
            f"the prompt is {len(ids)} tokens, the program's cache window is {dec.max_len}: "
            "shorten the prompt or export with a larger --max-len"
        )
    _say_if_cut(args.max_new_tokens, room, f"the program's cache window of {dec.max_len}")
    print(args.prompt, end="", flush=True)
    try:
        n = min(args.max_new_tokens, room)
        for piece in stream_text(dec, tok, ids, n, args.temperature, args.top_k, args.top_p, args.seed):
            print(piece, end="", flush=True)
    finally:
        print(flush=True)  # an error goes on a line of its own, not after the streamed text
    return 0


def _say_if_cut(asked: int, room: int, limit: str) -> None:
    """One line on stderr when the context window leaves room for fewer tokens than were asked for."""
    if asked > room:
        print(f"note: {room} new tokens, not {asked}: the prompt and the output fill {limit} tokens", file=sys.stderr)


def cmd_generate(args: argparse.Namespace) -> int:
    """Load a checkpoint (or a .pte) and print a continuation of the prompt."""
    import torch

    if args.pte:
        return _generate_pte(args)
    if args.tokenizer:
        raise ValueError("--tokenizer applies to --pte only (a checkpoint folder has its own tokenizer.model)")

    from .devices import auto_device
    from .export import load_pretrained

    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise ValueError(f"--temperature ({args.temperature}) must be a finite number >= 0 (0 = greedy)")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k ({args.top_k}) must be >= 1")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p ({args.top_p}) must be in (0, 1]")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens ({args.max_new_tokens}) must be >= 1")
    device = auto_device(args.device)
    model, tok = load_pretrained(args.checkpoint, device)
    if tok is None:
        raise FileNotFoundError(f"{args.checkpoint} has no tokenizer.model: cannot turn text into tokens")
    # Training packs documents separated by EOS, so EOS is how a document starts.
    ids = [tok.eos_id] + tok.encode(args.prompt)
    prompt = torch.tensor([ids], device=device)
    room = model.cfg.max_seq_len - prompt.shape[1]
    if room <= 0:
        raise ValueError(f"the prompt is {prompt.shape[1]} tokens, the model's limit is {model.cfg.max_seq_len}")
    _say_if_cut(args.max_new_tokens, room, f"the model's limit of {model.cfg.max_seq_len}")
    out = model.eval().generate(
        prompt,
        min(args.max_new_tokens, room),
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        eos_id=tok.eos_id,
        generator=torch.Generator(device).manual_seed(args.seed),
    )
    print(args.prompt + tok.decode(out[0, len(ids) :].tolist()))
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    """Print the presets with their parameter counts."""
    from .accounting import param_count
    from .config import get_config, list_configs

    for name in list_configs():
        c = get_config(name)
        print(
            f"{name:20s} {c.n_layers:3d} x {c.dim:5d}  heads {c.n_heads:2d}/{c.n_kv_heads}  "
            f"ffn {c.ffn_hidden_dim:5d}  sharing {c.layer_sharing:9s} params {param_count(c)['total']:>13,}"
        )
    return 0


def _seed(text: str) -> int:
    """A seed torch accepts: an integer in [0, 2**63)."""
    try:
        seed = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer: give a seed such as 0 or 1234") from None
    if not 0 <= seed < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is out of range: a seed is an integer in [0, 2**63)")
    return seed


def _seed_list(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → (0, 1, 2), for ``ablation --seeds``."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give seeds as integers, e.g. --seeds 0 or 0,1,2") from None
    if not seeds or min(seeds) < 0 or max(seeds) >= 2**63:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: seeds are integers in [0, 2**63), e.g. --seeds 0,1,2")
    return seeds


def _add_bench(sub) -> None:
    from .config import list_configs
    from .course.bench import SUITES

    p = sub.add_parser(
        "bench",
        help="speed: training, decoding, int8 and layer sharing, each beside a peer",
        description="Benchmark on the CPU in fp32. Every figure is a median of repeated runs after "
        "warm-up; every comparison (Hugging Face Llama with the same weights, int8, "
        "sharing) is measured in the same run and reported as a ratio. Prints tables "
        "and writes a JSON report with the machine's details.",
    )
    p.add_argument(
        "--suite",
        nargs="+",
        default=["all"],
        choices=[*SUITES, "all"],
        metavar="SUITE",
        help=f"{' | '.join(SUITES)} | all (default all; several may be given)",
    )
    p.add_argument(
        "--config",
        default=None,
        choices=list_configs(),
        metavar="NAME",
        help="run every chosen suite on this preset only (default: teach-micro and mobilellm-125m "
        "for train/decode, mobilellm-125m for int8/sharing; teach-micro with --quick)",
    )
    p.add_argument("--json", default="bench.json", help="where to write the report (default bench.json)")
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed runs per figure, after warm-up (default 10, 3 with --quick; at most 5 at full size)",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: small shapes, teaching preset, 3 repeats, no torch.compile"
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements (15-60 s each)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument(
        "--pte-blocks",
        type=int,
        default=None,
        metavar="N",
        help="pte suite: the preset's width at N stored blocks (lowering grows a little faster than the "
        "executed layers: a 125M-wide 8da4w program takes about 6 minutes at 30 layers and 19 at 60 on "
        "2 cores; a shallow stack may fit in cache where the full one does not)",
    )
    p.add_argument(
        "--pte-quants",
        nargs="+",
        default=None,
        choices=QUANT_MODES,
        metavar="Q",
        help=f"pte suite: the program formats, in this order (default {' '.join(QUANT_MODES)})",
    )
    p.add_argument(
        "--no-pte-peers",
        action="store_true",
        help="pte suite: our programs and the control only, not the peers' exports (ExecuTorch's Llama "
        "export, optimum-executorch, llama.cpp), which each lower the unshared weights again",
    )
    p.add_argument(
        "--pte-programs",
        default=None,
        metavar="DIR",
        help="pte suite: keep the lowered programs in DIR and reuse those already there (same weights, "
        "code and versions): an interrupted run keeps what it lowered, and formats can be lowered "
        "in parallel processes, then each timed alone on a quiet machine",
    )


def _add_configs(sub) -> None:
    sub.add_parser("configs", help="list the model presets")


def _add_ablation(sub) -> None:
    from .course.ablations import ABLATIONS

    p = sub.add_parser("ablation", help="run one of the curriculum's ablations (cached in data/results)")
    p.add_argument("name", choices=list(ABLATIONS), help="which ablation")
    p.add_argument("--fresh", action="store_true", help="retrain even what data/results already has")
    p.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        metavar="S[,S…]",
        help="run these seeds instead of the ablation's own (e.g. 0 first, the rest later)",
    )
    p.add_argument(
        "--scale",
        type=int,
        default=1,
        metavar="W",
        help="every variant W times wider, tokens grown to match (for a GPU; default 1)",
    )
    p.add_argument("--corpus", default=None, help="train on this corpus instead (e.g. tinystories, a local file)")
    p.add_argument("--device", default=None, help="cpu (the course's default), cuda, mps or auto")
    p.add_argument("--quick", action="store_true", help="a few steps per run, one seed, output to a temp folder")


def _add_verify(sub) -> None:
    from .course.ablations import ABLATIONS

    p = sub.add_parser(
        "verify",
        help="retrain cached runs of an ablation from their stored recipe and seed, and compare the losses",
        description="Re-derive cached results: each run is trained again into a temporary folder (the cache is "
        "not touched) and its validation loss printed beside the stored one. Exit status 1 if any differs by "
        "more than the tolerance.",
    )
    p.add_argument("name", choices=list(ABLATIONS), help="which ablation")
    p.add_argument("--variant", action="append", default=None, metavar="LABEL", help="only this variant (repeatable)")
    p.add_argument("--seeds", type=_seed_list, default=None, metavar="S[,S…]", help="only these seeds")


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="run every notebook in order and regenerate figures and the README map")
    p.add_argument("--only", nargs="*", default=None, help="notebook name prefixes to run (e.g. 02 03)")
    p.add_argument("--readme-only", action="store_true", help="only regenerate the README's notebook map")
    p.add_argument("--fresh", action="store_true", help="retrain and re-measure even what data/results has")
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="only the first N seeds of each ablation (a faster from-scratch run)",
    )
    p.add_argument("--quick", action="store_true", help="a few steps per run, one seed, output to a temp folder")


def _add_book(sub) -> None:
    p = sub.add_parser(
        "book",
        help="build the course as a static website from the committed notebooks",
        description="Write one HTML page per notebook (its committed outputs; nothing is "
        "re-executed), a landing and a reference page from README.md, into --out.",
    )
    p.add_argument(
        "--out", default="build/book", help="folder to write; an earlier book there is replaced (default build/book)"
    )
    p.add_argument(
        "--source-url",
        default=None,
        help="link source files at this URL + their path (e.g. https://github.com/OWNER/REPO/blob/main); "
        "default: relative links into this checkout",
    )


def _course_command(name: str):
    """The course's commands (ablation, verify, figures, bench, book) live with the course."""
    from .course import commands

    return getattr(commands, f"cmd_{name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point; user errors print one line and exit 2, never a traceback."""
    # `python -m mobilellm …` runs this file; the `mobilellm` console script runs main() from elsewhere
    prog = "python -m mobilellm" if Path(sys.argv[0]).name == "__main__.py" else "mobilellm"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_generate(sub)
    _add_export(sub)
    _add_eval(sub)
    _add_bench(sub)
    _add_configs(sub)
    _add_ablation(sub)
    _add_verify(sub)
    _add_figures(sub)
    _add_book(sub)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded in reports as the command that made them
    handler = {
        "train": cmd_train,
        "generate": cmd_generate,
        "export": cmd_export,
        "eval": cmd_eval,
        "configs": cmd_configs,
    }.get(args.command) or _course_command(args.command)
    try:
        with quiet_libraries():  # torchao's optional-kernel and torch's pytree warnings at import
            return handler(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a folder gone mid-run: every writer is atomic, so nothing is half-written
        print(
            f"error: {e.strerror or e}"
            + (f": {e.filename}" if e.filename else "")
            + " (files written atomically are left as they were)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves and exits 130 itself)
        print("interrupted: nothing was saved", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
