"""Benchmarks: training and decoding speed, int8, and layer sharing, each beside a peer in the same run.

``python -m mobilellm bench`` runs four suites and writes one JSON report:

- ``train``: tokens/s and achieved GFLOP/s of a full AdamW step, ours (eager and compiled) vs
  ``transformers.LlamaForCausalLM`` holding the same weights, against the machine's fp32 matmul rate;
- ``decode``: batch-1 prefill latency and cached decode tokens/s, ``MobileLLM.generate`` vs Hugging
  Face ``generate`` on the same weights, against the memory-bandwidth bound (weights read per token);
- ``int8``: fp32 vs torchao int8 (W8A8, weight-only) vs ExecuTorch ``.pte``: latency and size;
- ``sharing``: per-token decode latency of a layer-shared model vs its unshared twin (the same
  stored blocks) vs a model twice as deep — the paper's iPhone table (+2.6% vs +86%);
- ``pte``: the same table in the mobile runtime: KV-cached ExecuTorch programs (fp32, int8, 8da4w)
  of the unshared, immediate, repeat-all and twice-as-deep models, random weights, with the bytes
  of one block in each format beside this CPU's cache sizes, and the memory each program holds (not in
  ``all``: 12 lowerings and the peers', hours at the 125M's full depth on 2 cores; run it as ``--suite
  pte``, with ``--pte-programs`` to keep what it lowered).

Every figure is the median of repeated runs after warm-up. Whatever is compared is measured in
the same run, interleaved round by round with the order rotated, so a change in the machine's load
hits every side alike; comparisons are reported as ratios. Absolute times vary on shared machines:
quote the ratios. Everything runs on the CPU in float32, the reference path.
"""

from __future__ import annotations

import datetime
import functools
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import one_line
from ._files import write_atomic
from ._quiet import native_stderr_silenced, quiet_libraries
from .accounting import flops_per_token, kv_cache_bytes_per_token, param_count, weight_bytes
from .config import ModelConfig, get_config
from .experiments import provenance
from .model import MobileLLM
from .paper import IPHONE13_MS
from .quantize import torchao_quantize
from .settings import Settings
from .timing import decode_timer, measure, median, wall

SUITES = ("train", "decode", "int8", "sharing", "pte")
ALL_SUITES = ("train", "decode", "int8", "sharing")  # what "all" runs: pte lowers 12 programs
SCHEMA_VERSION = 1
PTE_QUANTS = ("fp32", "int8", "8da4w")  # the pte suite's program formats
PTE_BENCH_JSON = "bench_pte_125m_2blocks.json"  # the committed pte report in data/results (notebook 11, README)
# The 125M's full depth, one committed report per format (each lowering run is most of an hour here)
PTE_FULL_BENCH_JSON = "bench_pte_125m_30blocks_{quant}.json"
# Above this many parameters a model is "big": smaller batches and fewer repeats.
BIG_PARAMS = 20_000_000
DEFAULT_CONFIGS = {"train": ("teach-micro", "mobilellm-125m"), "decode": ("teach-micro", "mobilellm-125m"),
                   "int8": ("mobilellm-125m",), "sharing": ("mobilellm-125m",), "pte": ("mobilellm-125m",)}
QUICK_CONFIGS = {s: ("teach-micro",) for s in SUITES}
# The paper's on-device latency (iPhone 13, ExecuTorch, fp16): execute ms per token at 125M, keyed as
# the sharing and pte suites' variants (the numbers themselves live in paper.py).
PAPER_SHARING_MS = {"unshared": IPHONE13_MS["MobileLLM-125M"][2], "immediate": IPHONE13_MS["MobileLLM-LS-125M"][2],
                    "deeper": IPHONE13_MS["60 layers, unshared"][2]}
PAPER_SHARING = (f"iPhone 13, ExecuTorch fp16, 125M: {PAPER_SHARING_MS['unshared']} ms, LS "
                 f"{PAPER_SHARING_MS['immediate']} ms, 60 layers {PAPER_SHARING_MS['deeper']} ms")
DEVICE = torch.device("cpu")


@dataclass(frozen=True)
class BenchSettings:
    """How hard to measure: repeats, warm-up, problem sizes (``quick`` shrinks them), compile on/off."""

    repeats: int = 10
    warmup: int = 2
    quick: bool = False
    compile: bool = True
    executorch: bool = True  # lower to .pte (slow: seconds to minutes a model) where the export helpers exist
    progress: bool = True
    pte_blocks: int | None = None  # the pte suite: the preset's width at this many stored blocks (None: as is)
    pte_quants: tuple[str, ...] = PTE_QUANTS  # the pte suite's formats, lowered and timed in this order
    pte_programs: str | None = None  # the pte suite: keep lowered programs in this folder, reuse them from it
    pte_peers: bool = True  # the pte suite: time the peers' exports too (each lowers the unshared weights again)

    def __post_init__(self) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats ({self.repeats!r}) must be a positive integer")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup ({self.warmup!r}) must be a non-negative integer")

    @classmethod
    def make(cls, quick: bool = False, repeats: int | None = None, compile: bool | None = None,
             progress: bool = True) -> BenchSettings:
        """Defaults for a full run, or a smoke run (``quick``: 3 repeats, 1 warm-up, no compile, no .pte)."""
        return cls(repeats=repeats if repeats is not None else (3 if quick else 10), warmup=1 if quick else 2,
                   quick=quick, compile=(not quick) if compile is None else compile, executorch=not quick,
                   progress=progress)

    def repeats_for(self, cfg: ModelConfig) -> int:
        """Fewer repeats for big models, whose runs are long and steady."""
        return min(self.repeats, 5) if is_big(cfg) else self.repeats


def is_big(cfg: ModelConfig) -> bool:
    """Whether a config is full-size (gets smaller batches and fewer repeats)."""
    return param_count(cfg)["total"] > BIG_PARAMS


def resolve(config: str | ModelConfig) -> tuple[str, ModelConfig]:
    """(name, config) from a preset name or a ModelConfig."""
    if isinstance(config, ModelConfig):
        return "custom", config
    return config, get_config(config)


# --- comparing ------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either side is missing or b is not positive."""
    if a is None or b is None or not b > 0 or not math.isfinite(a):
        return None
    return a / b


def versus(rows: list[dict], ref: dict, key: str, out: str, speedup: bool = False) -> None:
    """Set ``row[out]`` in every row: its ``key`` over ``ref``'s (``speedup``: ``ref``'s over its)."""
    for row in rows:
        mine, theirs = row.get(key), ref.get(key)
        row[out] = ratio(theirs, mine) if speedup else ratio(mine, theirs)


def row_of(rows: list[dict], name: str) -> dict | None:
    """The row called ``name`` (a suite result's ``variants``), or None when it was not measured."""
    return next((v for v in rows if v["name"] == name), None)


# --- the machine -----------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """Where and with what the numbers were measured (including the load, to judge how quiet it was)."""
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "cpus_available": affinity, "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "python": platform.python_version(),
        "torch": torch.__version__, "transformers": _version("transformers"), "torchao": _version("torchao"),
        "executorch": _version("executorch"), "git_commit": provenance(Settings())["commit"] or None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(DEVICE),
    }


def matmul_gflops(s: BenchSettings) -> dict:
    """The fp32 matmul rate of a large square product: the ceiling for training's GFLOP/s."""
    n = 512 if s.quick else 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = measure({"matmul": wall(lambda: a @ b)}, s.repeats, s.warmup, "matmul", s.progress)["matmul"]
    return {"n": n, "gflops": 2 * n ** 3 / median(t) / 1e9, "ms": median(t) * 1e3}


def memory_bandwidth(s: BenchSettings) -> dict:
    """Memory bandwidth (GB/s) by a large copy (read + write counted) and a large matrix-vector product.

    Cached decoding is a chain of matrix-vector products that stream every weight from memory once
    per token, so the GEMV figure is the one its pattern matches; the bound uses the larger of the two.
    """
    mb = 32 if s.quick else 256
    n = mb * 2 ** 20 // 4
    src, dst = torch.randn(n), torch.empty(n)
    side = int(math.sqrt(n))
    w, x = src[: side * side].view(side, side), torch.randn(side)
    t = measure({"copy": wall(lambda: dst.copy_(src)), "gemv": wall(lambda: w @ x)}, s.repeats, s.warmup,
                "bandwidth", s.progress)
    copy_gbs = 2 * n * 4 / median(t["copy"]) / 1e9
    gemv_gbs = side * side * 4 / median(t["gemv"]) / 1e9
    return {"mb": mb, "copy_gbs": copy_gbs, "gemv_gbs": gemv_gbs, "gbs": max(copy_gbs, gemv_gbs)}


# --- building models -------------------------------------------------------------------------


def build(cfg: ModelConfig, seed: int = 0) -> MobileLLM:
    """A freshly initialised model (fp32, CPU, eval mode), seeded so that every run holds the same weights."""
    torch.manual_seed(seed)
    return MobileLLM(cfg).to(DEVICE).eval()


def twin(model: MobileLLM, cfg: ModelConfig) -> MobileLLM:
    """A model with ``cfg``'s execution order over ``model``'s very modules (no copy, no extra memory)."""
    if cfg.replace(layer_sharing="none", layer_repeats=2) != model.cfg.replace(layer_sharing="none",
                                                                               layer_repeats=2):
        raise ValueError("a twin may differ from its model only in layer sharing")
    with torch.device("meta"):  # an empty shell: its parameters are replaced by the model's below
        shell = MobileLLM(cfg)
    shell.embed_tokens, shell.layers, shell.norm, shell.lm_head = (model.embed_tokens, model.layers, model.norm,
                                                                   model.lm_head)
    shell.rope_cos, shell.rope_sin = model.rope_cos, model.rope_sin
    return shell.eval()


def _hf_peer(model: MobileLLM):
    """The Llama twin of ``model``, or the reason there is none."""
    if importlib.util.find_spec("transformers") is None:
        return None, "transformers is not installed: pip install 'transformers>=4.48'"
    from .export import to_transformers

    try:
        return to_transformers(model), None
    except ValueError as e:  # e.g. a ReLU model has no Llama equivalent
        return None, str(e)


def _tokens(cfg: ModelConfig, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# --- train -----------------------------------------------------------------------------------


def _train_shape(cfg: ModelConfig, s: BenchSettings) -> tuple[int, int]:
    if is_big(cfg):
        batch, seq = (1, 64) if s.quick else (2, 256)
    else:
        batch, seq = (8, 64) if s.quick else (32, 128)
    return batch, min(seq, cfg.max_seq_len)


def _train_step(forward: Callable[[torch.Tensor], torch.Tensor], params: list[torch.nn.Parameter],
                optimizer: torch.optim.Optimizer, inputs: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        logits = forward(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # as train.py does: part of a real step
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def bench_train(config: str | ModelConfig, s: BenchSettings, matmul: dict | None = None) -> dict:
    """Training throughput of one config: ours eager (and compiled) vs Hugging Face Llama, same weights and step."""
    from .train import TrainConfig, make_optimizer

    name, cfg = resolve(config)
    batch, seq = _train_shape(cfg, s)
    repeats = s.repeats_for(cfg)
    fpt = flops_per_token(cfg, seq, training=True)
    data = _tokens(cfg, (batch, seq + 1))
    inputs, targets = data[:, :-1], data[:, 1:]
    tc = TrainConfig(lr=1e-3)
    model = build(cfg).train()
    params = list(model.parameters())
    opt = make_optimizer(model, tc)
    timers = {"ours": wall(_train_step(model, params, opt, inputs, targets))}
    skipped: dict[str, str] = {}
    hf, why = _hf_peer(model)
    if hf is None:
        skipped["hf"] = why
    else:
        hf.train()
        hf_params = list(hf.parameters())
        hf_opt = make_optimizer(hf, tc)  # same grouping: Llama's names also say "embed_tokens"
        timers["hf"] = wall(_train_step(lambda x: hf(input_ids=x, use_cache=False).logits, hf_params, hf_opt,
                                        inputs, targets))
    compile_s = None
    if s.compile:
        compiled = torch.compile(model)
        step = _train_step(compiled, params, opt, inputs, targets)
        try:
            compile_s = wall(step)()  # the first call compiles forward and backward
            timers["ours_compiled"] = wall(step)
        except Exception as e:  # a compiler failure is a result to report, not a reason to stop
            skipped["ours_compiled"] = f"torch.compile failed: {one_line(e)}"
    else:
        skipped["ours_compiled"] = "compile off (--quick or --no-compile)"
    times = measure(timers, repeats, s.warmup, f"train {name}", s.progress)

    rows = []
    for key in (k for k in ("ours", "ours_compiled", "hf") if k in times):
        tps = batch * seq / median(times[key])
        rows.append({"name": key, "step_ms": median(times[key]) * 1e3, "tokens_per_s": tps, "gflops": fpt * tps / 1e9,
                     "fraction_of_matmul": ratio(fpt * tps / 1e9, matmul and matmul["gflops"])})
    if "hf" in times:
        row_of(rows, "hf")["attn_implementation"] = hf.config._attn_implementation
    tps = {r["name"]: r["tokens_per_s"] for r in rows}
    return {"config": name, "params": param_count(cfg)["total"], "batch": batch, "seq_len": seq,
            "tokens_per_step": batch * seq, "flops_per_token": fpt, "repeats": repeats, "variants": rows,
            "compile_s": compile_s, "ratio_vs_hf": ratio(tps["ours"], tps.get("hf")),
            "ratio_compiled_vs_eager": ratio(tps.get("ours_compiled"), tps["ours"]),
            "ratio_compiled_vs_hf": ratio(tps.get("ours_compiled"), tps.get("hf")), "skipped": skipped}


# --- decode ----------------------------------------------------------------------------------


def _decode_shape(cfg: ModelConfig, s: BenchSettings) -> tuple[int, int]:
    prompt, new = (16, 8) if s.quick else (64, 64)
    prompt = min(prompt, cfg.max_seq_len // 2)
    return prompt, min(new, cfg.max_seq_len - prompt)


def bench_decode(config: str | ModelConfig, s: BenchSettings, bandwidth: dict | None = None) -> dict:
    """Batch-1 prefill latency and cached decode rate: ``generate`` vs Hugging Face ``generate``, same weights."""
    name, cfg = resolve(config)
    plen, new = _decode_shape(cfg, s)
    if new < 2:
        raise ValueError(f"config {name!r} has max_seq_len {cfg.max_seq_len}: too short to benchmark decoding")
    repeats = s.repeats_for(cfg)
    model = build(cfg)
    prompt = _tokens(cfg, (1, plen))
    mask = torch.ones_like(prompt)

    @torch.no_grad()
    def ours_prefill() -> None:
        model(prompt, model.new_cache(1, plen + new))

    timers = {"ours_prefill": wall(ours_prefill),
              "ours_gen1": wall(lambda: model.generate(prompt, 1)),
              "ours_genN": wall(lambda: model.generate(prompt, new))}
    skipped: dict[str, str] = {}
    hf, why = _hf_peer(model)
    same_tokens = None
    if hf is None:
        skipped["hf"] = why
    else:
        def hf_gen(n: int) -> torch.Tensor:
            # min_new_tokens: the random weights must not stop early on the EOS id.
            return hf.generate(prompt, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               use_cache=True, pad_token_id=0)

        @torch.no_grad()
        def hf_prefill() -> None:
            hf(input_ids=prompt, attention_mask=mask, use_cache=True)

        timers.update({"hf_prefill": wall(hf_prefill), "hf_gen1": wall(lambda: hf_gen(1)),
                       "hf_genN": wall(lambda: hf_gen(new))})
        same_tokens = bool(torch.equal(model.generate(prompt, new), hf_gen(new)))
    times = measure(timers, repeats, s.warmup, f"decode {name}", s.progress)

    rows = []
    for key in (k for k in ("ours", "hf") if f"{k}_genN" in times):
        # generate(n) - generate(1) is n - 1 cached steps: prefill and set-up cancel out, round by round.
        diffs = [b - a for a, b in zip(times[f"{key}_gen1"], times[f"{key}_genN"], strict=True)]
        step = median(diffs) / (new - 1)
        step = step if step > 0 else float("nan")
        rows.append({"name": key, "prefill_ms": median(times[f"{key}_prefill"]) * 1e3,
                     "decode_ms_per_token": step * 1e3, "decode_tokens_per_s": 1 / step,
                     "generate_ms": median(times[f"{key}_genN"]) * 1e3})
    ours, peer = rows[0], row_of(rows, "hf") or {}
    per_token = weight_bytes(cfg, "fp32")
    ceiling = bandwidth["gbs"] * 1e9 / per_token if bandwidth else None
    result = {
        "config": name, "params": param_count(cfg)["total"], "prompt_len": plen, "new_tokens": new,
        "repeats": repeats, "variants": rows, "same_tokens": same_tokens,
        "prefill_speedup_vs_hf": ratio(peer.get("prefill_ms"), ours["prefill_ms"]),
        "decode_ratio_vs_hf": ratio(ours["decode_tokens_per_s"], peer.get("decode_tokens_per_s")),
        # Every stored weight is read once per token (the tied table once, as the output head);
        # the KV cache read is small beside it at these lengths, and reported for the record.
        "weight_bytes_per_token": per_token,
        "kv_bytes_at_end": kv_cache_bytes_per_token(cfg, "fp32") * (plen + new),
        "ceiling_tokens_per_s": ceiling,
        "fraction_of_ceiling": ratio(ours["decode_tokens_per_s"], ceiling),
        "skipped": skipped,
    }
    return result


# --- int8 ------------------------------------------------------------------------------------


def _saved_mb(model: torch.nn.Module, folder: Path, name: str) -> float:
    path = folder / f"{name}.pt"
    torch.save(model.state_dict(), path)  # tied tensors are stored once
    return path.stat().st_size / 1e6


def _executorch_variants(model: MobileLLM, example: torch.Tensor, folder: Path) -> tuple[dict, dict]:
    """ExecuTorch ``.pte`` programs (fp32 and int8) written by ``executorch_window.export_executorch``.

    Returns ``{label: (timer, size_mb, extra)}`` and ``{label: why skipped}``. The timer runs the
    loaded method's ``execute`` only, as an app does per call; loading (the paper's load + init)
    is timed once and reported apart.
    """
    labels = ("executorch fp32", "executorch int8")
    if importlib.util.find_spec("executorch") is None:
        return {}, dict.fromkeys(labels, "executorch is not installed: pip install executorch")
    from executorch.runtime import Runtime

    from .executorch_window import export_executorch

    with torch.no_grad():
        ref = model(example)
    found, skipped = {}, {}
    for label, quant in zip(labels, (None, "int8"), strict=True):
        try:
            start = time.perf_counter()
            path = Path(export_executorch(model, folder / f"{label.replace(' ', '_')}.pte", quantize=quant,
                                          seq_len=example.shape[1]))
            lower_s = time.perf_counter() - start
            start = time.perf_counter()
            method = Runtime.get().load_program(path).load_method("forward")
            load_s = time.perf_counter() - start
            got = method.execute((example,))[0]
        except Exception as e:  # lowering is fragile across versions: report it, keep the other figures
            skipped[label] = f"export or run failed: {one_line(e)}"
            continue
        extra = {"lower_s": lower_s, "load_ms": load_s * 1e3,
                 "max_abs_diff_vs_fp32": (got - ref).abs().max().item()}
        found[label] = (wall(lambda m=method: m.execute((example,))), path.stat().st_size / 1e6, extra)
    return found, skipped


def bench_int8(config: str | ModelConfig, s: BenchSettings) -> dict:
    """fp32 vs int8 (torchao W8A8 and weight-only, ExecuTorch .pte): forward and decode latency, size on disk."""
    name, cfg = resolve(config)
    repeats = s.repeats_for(cfg)
    seq = min(16 if s.quick else 64, cfg.max_seq_len // 2)
    new = min(8 if s.quick else 32, cfg.max_seq_len - seq)
    example = _tokens(cfg, (1, seq))
    base = build(cfg)
    models: dict[str, torch.nn.Module] = {"fp32": base}
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("torchao") is None:
        skipped["torchao"] = "torchao is not installed: pip install torchao"
    else:
        for scheme in ("w8a8", "w8"):
            try:
                models[f"int8 {scheme}"] = torchao_quantize(base, scheme)
            except Exception as e:  # an unsupported CPU kernel is a result, not a crash
                skipped[f"int8 {scheme}"] = f"torchao failed: {one_line(e)}"
    fwd_timers: dict[str, Callable[[], float]] = {}
    dec_timers: dict[str, Callable[[], float]] = {}
    sizes: dict[str, float] = {}
    compile_s: dict[str, float] = {}
    extras: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for label, m in models.items():
            sizes[label] = _saved_mb(m, folder, label.replace(" ", "_"))
            fwd_timers[label] = wall(torch.no_grad()(lambda m=m: m(example)))
            dec_timers[label] = decode_timer(m, example, new)
        if s.compile:
            # Fixed-shape forward only: a KV cache's moving position would recompile every step.
            for label in [k for k in models if k in ("fp32", "int8 w8a8")]:
                c = torch.compile(models[label])
                run = wall(torch.no_grad()(lambda c=c: c(example)))
                try:
                    compile_s[f"{label} compiled"] = run()
                    fwd_timers[f"{label} compiled"] = run
                except Exception as e:
                    skipped[f"{label} compiled"] = f"torch.compile failed: {one_line(e)}"
        else:
            skipped["compiled"] = "compile off (--quick or --no-compile)"
        if s.executorch:
            et, et_skipped = _executorch_variants(base, example, folder)
            skipped.update(et_skipped)
        else:
            et, skipped["executorch"] = {}, "lowering off (--quick)"
        for label, (timer, size, extra) in et.items():
            fwd_timers[label], sizes[label], extras[label] = timer, size, extra
        fwd = measure(fwd_timers, repeats, s.warmup, f"int8 forward {name}", s.progress)
        dec = measure(dec_timers, repeats, s.warmup, f"int8 decode {name}", s.progress)
    variants = []
    for label in fwd:
        f_ms = median(fwd[label]) * 1e3
        d_ms = median(dec[label]) * 1e3 if label in dec else None
        variants.append({"name": label, "forward_ms": f_ms, "decode_ms_per_token": d_ms, "size_mb": sizes.get(label),
                         "compile_s": compile_s.get(label), **extras.get(label, {})})
    versus(variants, variants[0], "forward_ms", "forward_speedup_vs_fp32", speedup=True)
    versus(variants, variants[0], "decode_ms_per_token", "decode_speedup_vs_fp32", speedup=True)
    versus(variants, variants[0], "size_mb", "size_ratio_vs_fp32")
    result = {"config": name, "params": param_count(cfg)["total"], "forward_len": seq, "new_tokens": new,
              "repeats": repeats, "variants": variants, "skipped": skipped,
              "note": "torchao W8A8 runs int8 matmuls; on CPUs without fast int8 paths it is faster than fp32 "
                      "only under torch.compile"}
    return result


# --- sharing ---------------------------------------------------------------------------------


def _sharing_prompt(cfg: ModelConfig, s: BenchSettings) -> tuple[int, int, torch.Tensor]:
    """(prompt length, new tokens, prompt) of the sharing latency suites: a short prompt, then decode."""
    plen = min(16, cfg.max_seq_len // 4)
    return plen, min(8 if s.quick else 64, cfg.max_seq_len - plen), _tokens(cfg, (1, plen))


def sharing_variants(base_cfg: ModelConfig) -> dict[str, tuple[MobileLLM, str]]:
    """The paper's latency comparison: unshared, its blocks run as immediate and as repeat-all-over
    sharing (the same weights), and an unshared model twice as deep."""
    n = base_cfg.n_layers
    base = build(base_cfg)
    return {
        "unshared": (base, f"{n} blocks, {n} layers"),
        "immediate": (twin(base, base_cfg.replace(layer_sharing="immediate")), f"{n} blocks run as A A B B …"),
        "repeat_all": (twin(base, base_cfg.replace(layer_sharing="repeat_all")), f"{n} blocks run as A B … A B …"),
        "deeper": (build(base_cfg.replace(n_layers=2 * n)), f"{2 * n} blocks, {2 * n} layers (2x deeper, unshared)"),
    }


def bench_sharing(config: str | ModelConfig, s: BenchSettings) -> dict:
    """Per-token cached decode latency: unshared vs layer-shared (same stored blocks) vs twice as deep."""
    name, cfg = resolve(config)
    base_cfg = cfg.replace(layer_sharing="none")
    repeats = s.repeats_for(cfg)
    plen, new, prompt = _sharing_prompt(cfg, s)
    models = sharing_variants(base_cfg)
    times = measure({k: decode_timer(m, prompt, new) for k, (m, _) in models.items()}, repeats, s.warmup,
                    f"sharing {name}", s.progress)
    variants = [{"name": key, "what": what, "layer_sharing": m.cfg.layer_sharing, "stored_blocks": m.cfg.n_layers,
                 "executed_layers": m.cfg.n_executed_layers, "params": param_count(m.cfg)["total"],
                 "ms_per_token": median(times[key]) * 1e3, "paper_ms": PAPER_SHARING_MS.get(key),
                 "paper_ratio": ratio(PAPER_SHARING_MS.get(key), PAPER_SHARING_MS["unshared"])}
                for key, (m, what) in models.items()]
    versus(variants, variants[0], "ms_per_token", "latency_ratio_vs_unshared")
    r = {v["name"]: v["latency_ratio_vs_unshared"] for v in variants}
    result = {"config": name, "prompt_len": plen, "new_tokens": new, "repeats": repeats, "variants": variants,
              "immediate_vs_repeat_all": ratio(r["immediate"], r["repeat_all"]),
              "paper": PAPER_SHARING}
    return result


# --- pte: the sharing table in ExecuTorch ----------------------------------------------------

def cpu_caches() -> list[dict]:
    """This CPU's caches as the kernel reports them (/sys): level, type, size in bytes, CPUs sharing it."""
    out = []
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            size = (d / "size").read_text().strip()
            mult = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30}.get(size[-1], 1)
            out.append({"level": int((d / "level").read_text()), "type": (d / "type").read_text().strip(),
                        "bytes": int(size.rstrip("KMG")) * mult,
                        "shared_cpu_list": (d / "shared_cpu_list").read_text().strip()})
        except (OSError, ValueError):
            continue
    return out


def pte_group_size(cfg: ModelConfig) -> int | None:
    """8da4w's group: 32 (ExecuTorch's usual choice), or None where XNNPACK's int4 kernels do not fit the model."""
    dims = (cfg.dim, cfg.n_heads * cfg.head_dim, cfg.ffn_hidden_dim)
    return 32 if all(d % 32 == 0 for d in dims) else None


def block_bytes(cfg: ModelConfig, quant: str, group_size: int) -> int:
    """Bytes of one block's weights as the program stores them (XNNPACK's layout), norm gains in fp32.

    fp32; int8 + an fp32 scale per output row; int4 + a bf16 scale per group (group 0: an fp32 scale per row).
    """
    q, kv = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    shapes = [(q, cfg.dim), (kv, cfg.dim), (kv, cfg.dim), (cfg.dim, q), (cfg.dim, cfg.ffn_hidden_dim),
              (cfg.ffn_hidden_dim, cfg.dim)]
    if cfg.ffn_type == "swiglu":
        shapes.append((cfg.ffn_hidden_dim, cfg.dim))
    n = sum(o * i for o, i in shapes)
    rows = sum(o for o, _ in shapes)
    int4 = n // 2 + (2 * (n // group_size) if group_size else 4 * rows)
    linear = {"fp32": 4 * n, "int8": n + 4 * rows, "8da4w": int4}[quant]
    return linear + 2 * 4 * cfg.dim


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux's /proc/self/statm), or None where there is none to read."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def loaded_and_run(load: Callable, path: Path, prompt: torch.Tensor) -> tuple[object, int | None]:
    """``load(path)`` and one prefill of ``prompt``: (the decoder, the memory that took, in bytes, or None).

    After a first call, not just the load: the runtime may pack weights for its kernels lazily, and what it
    holds then (the file's pages it read, its own packed copies, the caches) is what decoding keeps.
    """
    gc.collect()
    before = resident_bytes()
    dec = load(path)
    dec.step(prompt, 0)
    after = resident_bytes()
    return dec, None if None in (before, after) else after - before


def pte_decode_timer(dec, prompt: torch.Tensor, new_tokens: int) -> Callable[[], float]:
    """Seconds per greedy decode step of a loaded program, after an untimed prefill of ``prompt``."""
    def run() -> float:
        logits = dec.step(prompt, 0)
        start = time.perf_counter()
        for _ in range(new_tokens):
            logits = dec.step(logits.argmax().reshape(1))
        return (time.perf_counter() - start) / new_tokens
    return run


def repeat_cost(ms: dict[str, float | None], key: str = "immediate") -> float | None:
    """What a re-run layer costs as a fraction of a fresh one: (shared - unshared) / (deeper - unshared).

    Shared and deeper execute the same number of layers; so 0 means a repeated block is free (all
    in cache), 1 that it costs as much as a block read anew. The embedding and head cancel out, so
    a shallower model of the same width can be compared with the paper; what cannot is whether the
    fresh blocks fit in cache (a shallow stack may). Paper: (16.0 - 15.6) / (29.0 - 15.6).
    """
    u, x, d = ms.get("unshared"), ms.get(key), ms.get("deeper")
    if None in (u, x, d) or d <= u:
        return None
    return (x - u) / (d - u)


PEER = "executorch_llama"  # ExecuTorch's own Llama export of the unshared model's weights
OPTIMUM_PEER = "optimum_executorch"  # optimum-executorch's export of them (its own environment; when present)
LLAMA_CPP_PEER = "llama_cpp"  # llama.cpp running them as GGUF (llama-cpp-python; when installed)
GGUF_FOR_QUANT = {"fp32": "f32", "int8": "q8_0", "8da4w": "q4_0"}  # llama.cpp's nearest format to each of ours
# The control: our unshared program loaded a second time and timed as a peer. Two loads of one file
# differ only in where the runtime put them in memory, so their ratio is the run's noise floor.
AGAIN = "unshared_again"


def executorch_threads() -> int:
    """The threads ExecuTorch's XNNPACK kernels use in this process (its thread pool: one per core)."""
    with quiet_libraries(), native_stderr_silenced():  # torchao's and XNNPACK's start-up chatter
        from executorch.extension.pybindings import portable_lib

        return int(portable_lib._threadpool_get_thread_count())


def _gguf_peer(model: MobileLLM, path: Path, quant: str, max_len: int, group_size: int | None) -> Path:
    from .gguf_export import write_gguf

    return write_gguf(model, path.with_suffix(".gguf"), None, GGUF_FOR_QUANT[quant])


# The modules whose code decides what a lowered program holds: a change to either lowers anew.
_EXPORT_CODE = ("executorch_program.py", "gguf_export.py")


def program_fingerprint(model: MobileLLM, key: str, quant: str, max_len: int, group: int) -> str:
    """16 hex digits naming one lowered program: the weights, the variant, format, window and 8da4w group,
    the exporting code and the torch / ExecuTorch / torchao versions (a kept program is reused only if all match)."""
    h = hashlib.blake2b(digest_size=8)
    versions = {d: importlib.metadata.version(d) for d in ("torch", "executorch", "torchao")}
    h.update(json.dumps([key, quant, max_len, group, model.cfg.to_dict(), versions], sort_keys=True).encode())
    for name in _EXPORT_CODE:
        h.update(Path(__file__).with_name(name).read_bytes())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def lowered(export: Callable[..., Path], model: MobileLLM, key: str, quant: str, max_len: int, group: int,
            folder: Path, keep: str | os.PathLike | None = None) -> tuple[Path, float, bool]:
    """``export`` the model's program for one variant and format: (path, seconds it took to lower, reused).

    With ``keep``, programs live there and one already lowered from the same weights, code and versions is
    reused (its first lowering time is reported): an interrupted run loses no finished lowering, and the
    slow lowering can run apart from the timing, e.g. two formats at once, then each timed alone.
    """
    stem = folder / f"{key}-{quant}"
    if keep is not None:
        stem = Path(keep) / f"{key}-{quant}-{program_fingerprint(model, key, quant, max_len, group)}"
        if stem.with_suffix(".json").is_file():
            kept = json.loads(stem.with_suffix(".json").read_text())
            if (stem.parent / kept["file"]).is_file():
                return stem.parent / kept["file"], kept["lower_s"], True
        stem.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    path = export(model, stem.with_suffix(".pte"), quant, max_len=max_len, group_size=group)
    lower_s = time.perf_counter() - start
    if keep is not None:  # the note is written last: a program without one (an interrupted export) is lowered again
        when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        write_atomic(stem.with_suffix(".json"),
                     lambda tmp: tmp.write_text(json.dumps({"file": path.name, "lower_s": lower_s, "date": when})))
    return path, lower_s, False


def set_size_ratios(rows: list[dict]) -> None:
    """Each program row's ``size_ratio_vs_fp32``: its bytes over the fp32 program's of the same model (None without)."""
    fp32_bytes = {r["name"]: r.get("bytes") for r in rows if r["quant"] == "fp32"}
    for r in rows:
        r["size_ratio_vs_fp32"] = ratio(r.get("bytes"), fp32_bytes.get(r["name"]))


def bench_pte(config: str | ModelConfig, s: BenchSettings, quants: tuple[str, ...] = PTE_QUANTS,
              n_layers: int | None = None, peer: bool = True, optimum: str | os.PathLike | None = None,
              programs: str | os.PathLike | None = None) -> dict:
    """Per-token decode latency of KV-cached .pte programs (unshared, immediate, repeat_all, 2x deeper) per quant.

    Random weights; beside our eager PyTorch decode of the same models, ExecuTorch's own Llama export
    of the unshared weights (``peer``: timed in the same rounds), optimum-executorch's export of them
    (with ``peer``, where its environment exists: ``optimum``, or ``.venv-optimum``), llama.cpp running
    them as GGUF F32 / Q8_0 / Q4_0 (with ``peer``, where llama-cpp-python is installed; as many threads
    as ExecuTorch's) and the paper's iPhone 13 figures.
    ``n_layers``: the preset's width with this many stored blocks (lowering grows a little faster than
    the executed layers: on 2 cores a 30-layer 8da4w program takes about 6 minutes, a 60-layer one 19,
    so the 30-block grid of one format is over an hour); ``repeat_cost``
    takes the embedding and head out of the comparison, not the cache effect of a shallower stack.
    ``programs``: a folder to keep the lowered programs in and reuse them from (see ``lowered``).
    """
    with quiet_libraries(), native_stderr_silenced():  # torchao says hello
        from .executorch_program import (
            PteDecoder,
            export_llama_peer,
            export_optimum_peer,
            export_program,
            optimum_python,
            program_census,
        )
        from .gguf_export import LlamaCppDecoder

    name, cfg = resolve(config)
    if cfg.ffn_type != "swiglu":
        raise ValueError(f"the pte suite needs a SwiGLU model, {name} has {cfg.ffn_type!r}")
    unknown = [q for q in quants if q not in PTE_QUANTS]
    if unknown or not quants:
        raise ValueError(f"pte formats {list(quants)}: choose one or more of {', '.join(PTE_QUANTS)}")
    if n_layers is not None:
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers ({n_layers!r}) must be a positive integer")
        name, cfg = f"{name} at {n_layers} blocks", cfg.replace(n_layers=n_layers)
    base_cfg = cfg.replace(layer_sharing="none")
    repeats = s.repeats_for(cfg)
    plen, new, prompt = _sharing_prompt(cfg, s)
    group = pte_group_size(cfg)
    paper_ms = PAPER_SHARING_MS
    models = sharing_variants(base_cfg)
    eager = measure({k: decode_timer(m, prompt, new) for k, (m, _) in models.items()}, repeats, s.warmup,
                    f"pte eager {name}", s.progress)
    rows, skipped, costs = [], {}, {}
    threads = executorch_threads()
    # each peer: (export the unshared weights to a file, what it is, load that file for decode steps)
    peers = {PEER: (export_llama_peer, "ExecuTorch's export_llama of the unshared weights", PteDecoder)} if peer else {}
    if peer and optimum_python(optimum):
        peers[OPTIMUM_PEER] = (functools.partial(export_optimum_peer, python=optimum),
                               "optimum-executorch's export of the unshared weights", PteDecoder)
    elif peer:
        skipped[OPTIMUM_PEER] = "no optimum-executorch environment (make optimum-venv)"
    if not peer:
        skipped["peers"] = "not asked for (peer=False; the CLI's --no-pte-peers)"
    if peer and importlib.util.find_spec("llama_cpp"):
        peers[LLAMA_CPP_PEER] = (_gguf_peer, "llama.cpp on the unshared weights as GGUF (F32 / Q8_0 / Q4_0)",
                                 functools.partial(LlamaCppDecoder, n_ctx=plen + new, n_threads=threads))
    elif peer:
        skipped[LLAMA_CPP_PEER] = "no llama-cpp-python (make llama-cpp)"
    with tempfile.TemporaryDirectory() as tmp:
        for quant in quants:
            if quant == "8da4w" and group is None:
                skipped["8da4w"] = "XNNPACK's int4 kernels need linear input sizes in multiples of 32"
                continue
            # One format at a time: its programs are timed interleaved, then freed (a 125M fp32 set is 3 GB).
            # Ours for each model; each peer's export of the unshared weights (PteDecoder runs them all).
            jobs = [(k, export_program, m, PteDecoder) for k, (m, _) in models.items()]
            jobs += [(key, export, models["unshared"][0], load) for key, (export, _, load) in peers.items()]
            decs, info = {}, {}
            for key, export, m, load in jobs:
                try:
                    path, lower_s, reused = lowered(export, m, key, quant, plen + new,
                                                    group or 0,  # (no 8da4w group: fp32 and int8 use none)
                                                    Path(tmp), programs)
                    decs[key], held = loaded_and_run(load, path, prompt)
                    info[key] = {"lower_s": lower_s, "lowered_earlier": reused, "bytes": path.stat().st_size,
                                 "resident_bytes": held}
                    if key == LLAMA_CPP_PEER:
                        info[key] |= {"gguf_type": GGUF_FOR_QUANT[quant], "threads": threads}
                    else:  # what one call runs: XNNPACK subgraphs, and kernels of the runtime's own
                        census = program_census(path)
                        info[key] |= {"delegate_calls": census["delegate_calls"],
                                      "kernel_calls": census["kernel_calls"]}
                except Exception as e:  # lowering is fragile across versions: report it, keep the rest
                    skipped[f"{key} {quant}"] = f"export or run failed: {one_line(e)}"
            if "unshared" in decs:  # the control needs no lowering: it runs with or without the peers
                decs[AGAIN], held = loaded_and_run(PteDecoder, decs["unshared"].path, prompt)
                info[AGAIN] = dict(info["unshared"]) | {"resident_bytes": held}
            times = measure({k: pte_decode_timer(d, prompt, new) for k, d in decs.items()}, repeats, s.warmup,
                            f"pte {quant} {name}", s.progress) if decs else {}
            ms = {k: median(t) * 1e3 for k, t in times.items()}
            ref = ms.get("unshared")
            costs[quant] = {k: repeat_cost(ms, k) for k in ("immediate", "repeat_all")}
            peer_rows = [(k, (models["unshared"][0], w)) for k, (_, w, _) in peers.items()]
            if AGAIN in decs:
                peer_rows.append((AGAIN, (models["unshared"][0], "our unshared program, loaded a second time")))
            for key, (m, what) in [*models.items(), *peer_rows]:
                eager_ms = median(eager[key if key in eager else "unshared"]) * 1e3
                rows.append({"name": key, "quant": quant, "what": what, "layer_sharing": m.cfg.layer_sharing,
                             "stored_blocks": m.cfg.n_layers, "executed_layers": m.cfg.n_executed_layers,
                             "ms_per_token": ms.get(key), "ms_rounds": [t * 1e3 for t in times.get(key, [])],
                             "latency_ratio_vs_unshared": ratio(ms.get(key), ref),
                             "eager_fp32_ms_per_token": eager_ms, "speedup_vs_eager_fp32": ratio(eager_ms, ms.get(key)),
                             "paper_ms": paper_ms.get(key),
                             "paper_ratio": ratio(paper_ms.get(key), paper_ms["unshared"]),
                             **info.get(key, {})})
            for d in decs.values():
                getattr(d, "close", lambda: None)()  # llama.cpp's model: freed now, not at exit
            del decs
            gc.collect()
    set_size_ratios(rows)
    by = {(r["name"], r["quant"]): r for r in rows}
    def timed(key: str, quant: str) -> bool:  # lowered, loaded and timed (not skipped)
        return bool(by.get((key, quant), {}).get("ms_rounds"))

    # speed >1: our program decodes faster than the peer's export of the same weights (same run); rounds are
    # interleaved, so round i of ours and of the peer are a pair: in how many was ours faster
    peer_cmp = {f"vs_{p}": {q: {"speed_ratio": ratio(by[p, q]["ms_per_token"], by["unshared", q]["ms_per_token"]),
                                "size_ratio": ratio(by["unshared", q].get("bytes"), by[p, q].get("bytes")),
                                "ours_faster_rounds": sum(o < t for o, t in zip(by["unshared", q]["ms_rounds"],
                                                                                by[p, q]["ms_rounds"], strict=True)),
                                "rounds": len(by[p, q]["ms_rounds"])}
                            for q in quants if timed(p, q) and timed("unshared", q)}
                for p in (PEER, OPTIMUM_PEER, LLAMA_CPP_PEER, AGAIN)}
    caches = cpu_caches()
    blocks = {q: block_bytes(base_cfg, q, group or 0) for q in quants if q != "8da4w" or group}
    fits = {q: [f"L{c['level']}{'d' if c['type'] == 'Data' else ''}" for c in caches
                if c["type"] != "Instruction" and b <= c["bytes"]] for q, b in blocks.items()}
    return {"config": name, "weights": "random (seeded); latency does not depend on the values",
            "stored_blocks": base_cfg.n_layers, "prompt_len": plen, "new_tokens": new, "cache_window": plen + new,
            "repeats": repeats, "group_size_8da4w": group, "threads": threads, "variants": rows, "block_bytes": blocks,
            "programs_kept_in": None if programs is None else str(programs),
            "block_fits_in": fits, "cpu_caches": caches, "skipped": skipped,
            "repeat_cost": costs, "paper_repeat_cost": repeat_cost(paper_ms), **peer_cmp,
            "paper": PAPER_SHARING}



def merge_pte_reports(reports: list[dict]) -> dict:
    """One pte report from several runs of the same models, each timing other formats (``--pte-quants``).

    Each format's figures stay as its own run measured them (ratios are within a run, never across);
    ``runs`` keeps every run's formats, command and machine details. Runs of different models or
    settings, or two runs of one format, are refused.
    """
    if not reports:
        raise ValueError("no pte reports to merge")
    same = ("config", "stored_blocks", "prompt_len", "new_tokens", "cache_window", "repeats", "group_size_8da4w",
            "threads", "weights")
    first = reports[0]["pte"][0]
    merged = {k: first.get(k) for k in same} | {"variants": [], "cpu_caches": first.get("cpu_caches"),
                                               "paper_repeat_cost": first.get("paper_repeat_cost"),
                                               "paper": first.get("paper")}
    runs, seen = [], set()
    for report in reports:
        pte = report["pte"][0]
        differ = {k: (first.get(k), pte.get(k)) for k in same if pte.get(k) != first.get(k)}
        if differ:
            raise ValueError(f"pte reports of different runs cannot be merged: {differ}")
        quants = list(dict.fromkeys(v["quant"] for v in pte["variants"]))
        if seen & set(quants):
            raise ValueError(f"two pte reports time {sorted(seen & set(quants))}: merge one run per format")
        seen |= set(quants)
        runs.append({"quants": quants, "command": report.get("command"), "machine": report["machine"]})
        merged["variants"] += pte["variants"]
        for k, v in pte.items():
            if isinstance(v, dict) and k not in same:  # per-format dicts: repeat_cost, block_bytes, vs_<peer>, …
                merged.setdefault(k, {}).update(v)
    set_size_ratios(merged["variants"])  # sizes, unlike times, do not depend on the run that measured them
    return {"schema": reports[0].get("schema"), "machine": reports[0]["machine"], "runs": runs, "pte": [merged]}


def pte_full_depth(folder: str | os.PathLike) -> dict | None:
    """The committed 30-block pte runs in ``folder`` (one file per format), merged; None if there are none."""
    paths = [Path(folder) / PTE_FULL_BENCH_JSON.format(quant=q) for q in ("8da4w", "int8", "fp32")]
    reports = [json.loads(p.read_text()) for p in paths if p.is_file()]
    return merge_pte_reports(reports) if reports else None

# --- the whole run ---------------------------------------------------------------------------


def run_bench(suites: list[str] | tuple[str, ...] = ALL_SUITES, configs: list[str | ModelConfig] | None = None,
              settings: BenchSettings | None = None) -> dict:
    """Run the chosen suites (each on its default configs, or on ``configs``) and return the report."""
    s = settings or BenchSettings.make()
    suites = list(ALL_SUITES) if "all" in suites else list(suites)
    unknown = [x for x in suites if x not in SUITES]
    if unknown:
        raise ValueError(f"unknown suite {unknown[0]!r}; valid: {', '.join(SUITES)}, all")
    for c in configs or []:
        resolve(c)  # an unknown name fails now, not after minutes of measuring
    report: dict = {"schema": SCHEMA_VERSION, "machine": machine_info(),
                    "settings": {"suites": suites, "repeats": s.repeats, "warmup": s.warmup, "quick": s.quick,
                                 "compile": s.compile, "executorch": s.executorch},
                    "ceilings": {}}
    defaults = QUICK_CONFIGS if s.quick else DEFAULT_CONFIGS

    def chosen(suite: str) -> list[str | ModelConfig]:
        return list(configs) if configs else list(defaults[suite])

    if "train" in suites:
        report["ceilings"]["matmul"] = matmul_gflops(s)
    if {"decode", "sharing", "int8"} & set(suites):
        report["ceilings"]["memory"] = memory_bandwidth(s)
    runners = {"train": lambda c: bench_train(c, s, report["ceilings"]["matmul"]),
               "decode": lambda c: bench_decode(c, s, report["ceilings"]["memory"]),
               "int8": lambda c: bench_int8(c, s), "sharing": lambda c: bench_sharing(c, s),
               "pte": lambda c: bench_pte(c, s, s.pte_quants, n_layers=s.pte_blocks, peer=s.pte_peers,
                                          programs=s.pte_programs)}
    for suite in (x for x in SUITES if x in suites):
        report[suite] = []
        for c in chosen(suite):
            report[suite].append(runners[suite](c))
            gc.collect()  # closures keep the last models alive in cycles: free them before the next
    report["machine"]["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


# --- printing --------------------------------------------------------------------------------


def _f(x: float | None, fmt: str = ".1f", suffix: str = "") -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:{fmt}}{suffix}"


def table(rows: list[dict], columns: list[tuple[str, str | Callable[[dict], object], str]]) -> list[str]:
    """Rows as aligned text, indented two spaces: columns of (header, key or function of the row, format).

    A column formatted ``""`` holds text and is aligned left; numbers align right, a missing one shows "—".
    """
    def cell(row: dict, get, fmt: str) -> str:
        value = get(row) if callable(get) else row.get(get)
        return str(value) if fmt == "" else _f(value, fmt)

    body = [[cell(row, get, fmt) for _, get, fmt in columns] for row in rows]
    head = [h for h, _, _ in columns]
    widths = [max(map(len, col)) for col in zip(head, *body, strict=True)]

    def line(cells: list[str]) -> str:
        return "  " + "  ".join(c.ljust(w) if fmt == "" else c.rjust(w)
                                for c, w, (_, _, fmt) in zip(cells, widths, columns, strict=True)).rstrip()
    return [line(head), *map(line, body)]


def _percent(key: str) -> Callable[[dict], float | None]:
    return lambda row: None if row.get(key) is None else 100 * row[key]


NAME = ("", "name", "")
COLUMNS = {
    "train": [NAME, ("tokens/s", "tokens_per_s", ".0f"), ("GFLOP/s", "gflops", ".2f"),
              ("% of matmul", _percent("fraction_of_matmul"), ".1f"), ("step ms", "step_ms", ".1f")],
    "decode": [NAME, ("prefill ms", "prefill_ms", ".2f"), ("tokens/s", "decode_tokens_per_s", ".1f"),
               ("ms/token", "decode_ms_per_token", ".2f")],
    "int8": [NAME, ("forward ms", "forward_ms", ".2f"), ("x fp32", "forward_speedup_vs_fp32", ".2f"),
             ("decode ms/tok", "decode_ms_per_token", ".2f"), ("x fp32", "decode_speedup_vs_fp32", ".2f"),
             ("size MB", "size_mb", ".1f"), ("x fp32", "size_ratio_vs_fp32", ".2f")],
    "sharing": [NAME, ("what", "what", ""), ("ms/token", "ms_per_token", ".2f"),
                ("x unshared", "latency_ratio_vs_unshared", ".3f"), ("paper", "paper_ratio", ".3f")],
    "pte": [NAME, ("quant", "quant", ""), ("ms/token", "ms_per_token", ".2f"),
            ("x unshared", "latency_ratio_vs_unshared", ".3f"), ("paper", "paper_ratio", ".3f"),
            ("eager ms", "eager_fp32_ms_per_token", ".2f"), ("MB", lambda row: row.get("bytes") and row["bytes"] / 1e6,
                                                              ".2f"), ("x fp32", "size_ratio_vs_fp32", ".2f")],
}


# The line above each suite's table: what was measured, on what, how often (filled from the suite's result).
TITLES = {
    "train": "train {config} ({params:,} params), batch {batch} x {seq_len}, AdamW step, median of {repeats}",
    "decode": "decode {config} ({params:,} params), batch 1, prompt {prompt_len}, {new_tokens} new tokens greedy, "
              "median of {repeats}",
    "int8": "int8 {config} ({params:,} params): forward 1 x {forward_len}, decode {new_tokens} tokens, "
            "median of {repeats}",
    "sharing": "sharing {config}: cached decode at batch 1, prompt {prompt_len}, {new_tokens} tokens, "
               "median of {repeats}",
    "pte": "pte {config} ({weights}): KV-cached ExecuTorch programs, batch 1, prompt {prompt_len}, {new_tokens} "
           "tokens, median of {repeats}; 8da4w groups of {group_size_8da4w}",
}


def _notes(suite: str, r: dict) -> list[str]:
    """The lines below a suite's table: its comparisons and what was skipped."""
    out = []
    if suite == "train":
        out.append(f"ours/HF {_f(r['ratio_vs_hf'], '.2f', 'x')}   compiled/eager "
                   f"{_f(r['ratio_compiled_vs_eager'], '.2f', 'x')}   compiled/HF "
                   f"{_f(r['ratio_compiled_vs_hf'], '.2f', 'x')}"
                   + (f"   (compile {r['compile_s']:.0f} s)" if r["compile_s"] else ""))
    elif suite == "decode":
        out.append(f"ours vs HF (>1: ours faster): prefill {_f(r['prefill_speedup_vs_hf'], '.2f', 'x')}, decode "
                   f"{_f(r['decode_ratio_vs_hf'], '.2f', 'x')}; same tokens: {r['same_tokens']}")
        out.append(f"bound: {r['weight_bytes_per_token'] / 1e6:.1f} MB of weights per token -> "
                   f"{_f(r['ceiling_tokens_per_s'], '.0f')} tokens/s; ours at "
                   f"{_f(r['fraction_of_ceiling'] and 100 * r['fraction_of_ceiling'], '.1f', '%')}")
    elif suite == "int8":
        out.append("(x fp32: speed-up for times, fraction for size)")
        for v in r["variants"]:
            if v.get("compile_s"):
                out.append(f"{v['name']}: compiled in {v['compile_s']:.0f} s")
            if v.get("lower_s"):
                out.append(f"{v['name']}: lowered in {v['lower_s']:.0f} s, loaded in {v['load_ms']:.0f} ms, "
                           f"max |logit - eager fp32| {v['max_abs_diff_vs_fp32']:.1e}")
    elif suite == "sharing":
        out.append(f"immediate / repeat_all latency: {_f(r['immediate_vs_repeat_all'], '.3f')}  "
                   f"(paper: {r['paper']})")
    elif suite == "pte":
        caches = ", ".join(f"L{c['level']}{c['type'][0].lower()} {c['bytes'] // 1024} KiB" for c in r["cpu_caches"])
        blocks = ", ".join(f"{q} {b / 1024:.0f} KiB (fits {'/'.join(r['block_fits_in'][q]) or 'no cache'})"
                           for q, b in r["block_bytes"].items())
        out.append(f"one block: {blocks}; caches: {caches}")
        out.append("a re-run layer's cost / a fresh layer's ((shared - unshared) / (deeper - unshared)): "
                   + ", ".join(f"{q} immediate {_f(c['immediate'], '.2f')} repeat_all {_f(c['repeat_all'], '.2f')}"
                               for q, c in r["repeat_cost"].items())
                   + f"; paper {_f(r['paper_repeat_cost'], '.2f')}")
        for key, peer in (("vs_executorch_llama", "ExecuTorch's Llama export"),
                          ("vs_optimum_executorch", "optimum-executorch's export"),
                          ("vs_llama_cpp", "llama.cpp (GGUF F32 / Q8_0 / Q4_0)"),
                          ("vs_unshared_again", "the same program loaded again (the noise floor)")):
            if r.get(key):
                out.append(f"ours vs {peer}, same weights (speed >1: ours faster, in k/n paired rounds; size: ours / "
                           "its bytes): " + ", ".join(
                               f"{q} speed {_f(c['speed_ratio'], '.2f', 'x')} ({c.get('ours_faster_rounds', '?')}/"
                               f"{c.get('rounds', '?')}) size {_f(c['size_ratio'], '.2f')}" for q, c in r[key].items()))
        calls = [v for v in r["variants"] if v.get("delegate_calls") is not None and v["name"] not in
                 ("immediate", "repeat_all", "deeper")]
        if calls:
            out.append(f"calls per token ({calls[0]['quant']}; XNNPACK subgraphs + the runtime's own kernels): "
                       + ", ".join(f"{v['name']} {v['delegate_calls']} + {v['kernel_calls']}" for v in calls
                                   if v["quant"] == calls[0]["quant"]))
        loaded = [v for v in r["variants"] if v.get("resident_bytes") is not None]
        for q in dict.fromkeys(v["quant"] for v in loaded):
            out.append(f"memory taken by loading each {q} program and a first call, MiB (file size): " + ", ".join(
                f"{v['name']} {v['resident_bytes'] / 2**20:.0f} ({v['bytes'] / 2**20:.0f})"
                for v in loaded if v["quant"] == q))
        out.append(f"(paper: {r['paper']}; eager ms: our PyTorch fp32 cached decode of the same model)")
    out += [f"skipped {k}: {why}" for k, why in r.get("skipped", {}).items()]
    return ["  " + line for line in out]


def format_report(report: dict) -> str:
    """The report as plain-text tables, one per suite."""
    m = report["machine"]
    out = [f"machine: {m['cpu']} | {m['cpus_available']} CPUs, torch {m['torch']} with {m['torch_threads']} "
           f"threads | transformers {m['transformers']} | commit {m['git_commit']} | {m['date']} | "
           f"load {', '.join(f'{x:.1f}' for x in m['load_average'] or [])}"]
    c = report["ceilings"]
    if "matmul" in c:
        out.append(f"ceiling: fp32 matmul {c['matmul']['n']}^2: {c['matmul']['gflops']:.1f} GFLOP/s")
    if "memory" in c:
        mem = c["memory"]
        out.append(f"ceiling: memory {mem['gbs']:.1f} GB/s (copy {mem['copy_gbs']:.1f}, gemv {mem['gemv_gbs']:.1f}; "
                   f"{mem['mb']} MB)")
    for suite in SUITES:
        for r in report.get(suite, []):
            out += ["", TITLES[suite].format(**r), *table(r["variants"], COLUMNS[suite]), *_notes(suite, r)]
    return "\n".join(out)


def _finite(x: object) -> object:
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN: a missing figure is null
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write the report as strict JSON (non-finite numbers become null)."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"--json {out} is a folder: give a file name, e.g. {out / 'bench.json'}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_finite(report), indent=1, allow_nan=False) + "\n")
    return out
