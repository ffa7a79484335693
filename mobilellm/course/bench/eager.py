"""The eager suites: training and cached decoding beside Hugging Face, int8 beside fp32, layer sharing's latency."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..._common import one_line
from ...accounting import flops_per_token, kv_cache_bytes_per_token, param_count, weight_bytes
from ...config import ModelConfig
from ...model import MobileLLM
from ...quantize import torchao_quantize
from ...timing import decode_timer, measure, median, wall
from .common import (
    PAPER_SHARING,
    PAPER_SHARING_MS,
    BenchSettings,
    _hf_peer,
    _tokens,
    build,
    is_big,
    ratio,
    resolve,
    row_of,
    twin,
    versus,
)

# --- train -----------------------------------------------------------------------------------


def _train_shape(cfg: ModelConfig, s: BenchSettings) -> tuple[int, int]:
    if is_big(cfg):
        batch, seq = (1, 64) if s.quick else (2, 256)
    else:
        batch, seq = (8, 64) if s.quick else (32, 128)
    return batch, min(seq, cfg.max_seq_len)


def _train_step(
    forward: Callable[[torch.Tensor], torch.Tensor],
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
) -> Callable[[], None]:
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
    from ...train import TrainConfig, make_optimizer

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
        timers["hf"] = wall(
            _train_step(lambda x: hf(input_ids=x, use_cache=False).logits, hf_params, hf_opt, inputs, targets)
        )
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
        rows.append(
            {
                "name": key,
                "step_ms": median(times[key]) * 1e3,
                "tokens_per_s": tps,
                "gflops": fpt * tps / 1e9,
                "fraction_of_matmul": ratio(fpt * tps / 1e9, matmul and matmul["gflops"]),
            }
        )
    if "hf" in times:
        row_of(rows, "hf")["attn_implementation"] = hf.config._attn_implementation
    tps = {r["name"]: r["tokens_per_s"] for r in rows}
    return {
        "config": name,
        "params": param_count(cfg)["total"],
        "batch": batch,
        "seq_len": seq,
        "tokens_per_step": batch * seq,
        "flops_per_token": fpt,
        "repeats": repeats,
        "variants": rows,
        "compile_s": compile_s,
        "ratio_vs_hf": ratio(tps["ours"], tps.get("hf")),
        "ratio_compiled_vs_eager": ratio(tps.get("ours_compiled"), tps["ours"]),
        "ratio_compiled_vs_hf": ratio(tps.get("ours_compiled"), tps.get("hf")),
        "skipped": skipped,
    }


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

    timers = {
        "ours_prefill": wall(ours_prefill),
        "ours_gen1": wall(lambda: model.generate(prompt, 1)),
        "ours_genN": wall(lambda: model.generate(prompt, new)),
    }
    skipped: dict[str, str] = {}
    hf, why = _hf_peer(model)
    same_tokens = None
    if hf is None:
        skipped["hf"] = why
    else:

        def hf_gen(n: int) -> torch.Tensor:
            # min_new_tokens: the random weights must not stop early on the EOS id.
            return hf.generate(
                prompt,
                attention_mask=mask,
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )

        @torch.no_grad()
        def hf_prefill() -> None:
            hf(input_ids=prompt, attention_mask=mask, use_cache=True)

        timers.update(
            {"hf_prefill": wall(hf_prefill), "hf_gen1": wall(lambda: hf_gen(1)), "hf_genN": wall(lambda: hf_gen(new))}
        )
        same_tokens = bool(torch.equal(model.generate(prompt, new), hf_gen(new)))
    times = measure(timers, repeats, s.warmup, f"decode {name}", s.progress)

    rows = []
    for key in (k for k in ("ours", "hf") if f"{k}_genN" in times):
        # generate(n) - generate(1) is n - 1 cached steps: prefill and set-up cancel out, round by round.
        diffs = [b - a for a, b in zip(times[f"{key}_gen1"], times[f"{key}_genN"], strict=True)]
        step = median(diffs) / (new - 1)
        step = step if step > 0 else float("nan")
        rows.append(
            {
                "name": key,
                "prefill_ms": median(times[f"{key}_prefill"]) * 1e3,
                "decode_ms_per_token": step * 1e3,
                "decode_tokens_per_s": 1 / step,
                "generate_ms": median(times[f"{key}_genN"]) * 1e3,
            }
        )
    ours, peer = rows[0], row_of(rows, "hf") or {}
    per_token = weight_bytes(cfg, "fp32")
    ceiling = bandwidth["gbs"] * 1e9 / per_token if bandwidth else None
    result = {
        "config": name,
        "params": param_count(cfg)["total"],
        "prompt_len": plen,
        "new_tokens": new,
        "repeats": repeats,
        "variants": rows,
        "same_tokens": same_tokens,
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

    from ...executorch_window import export_executorch

    with torch.no_grad():
        ref = model(example)
    found, skipped = {}, {}
    for label, quant in zip(labels, (None, "int8"), strict=True):
        try:
            start = time.perf_counter()
            path = Path(
                export_executorch(
                    model, folder / f"{label.replace(' ', '_')}.pte", quantize=quant, seq_len=example.shape[1]
                )
            )
            lower_s = time.perf_counter() - start
            start = time.perf_counter()
            method = Runtime.get().load_program(path).load_method("forward")
            load_s = time.perf_counter() - start
            got = method.execute((example,))[0]
        except Exception as e:  # lowering is fragile across versions: report it, keep the other figures
            skipped[label] = f"export or run failed: {one_line(e)}"
            continue
        extra = {"lower_s": lower_s, "load_ms": load_s * 1e3, "max_abs_diff_vs_fp32": (got - ref).abs().max().item()}
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
        variants.append(
            {
                "name": label,
                "forward_ms": f_ms,
                "decode_ms_per_token": d_ms,
                "size_mb": sizes.get(label),
                "compile_s": compile_s.get(label),
                **extras.get(label, {}),
            }
        )
    versus(variants, variants[0], "forward_ms", "forward_speedup_vs_fp32", speedup=True)
    versus(variants, variants[0], "decode_ms_per_token", "decode_speedup_vs_fp32", speedup=True)
    versus(variants, variants[0], "size_mb", "size_ratio_vs_fp32")
    result = {
        "config": name,
        "params": param_count(cfg)["total"],
        "forward_len": seq,
        "new_tokens": new,
        "repeats": repeats,
        "variants": variants,
        "skipped": skipped,
        "note": "torchao W8A8 runs int8 matmuls; on CPUs without fast int8 paths it is faster than fp32 "
        "only under torch.compile",
    }
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
    times = measure(
        {k: decode_timer(m, prompt, new) for k, (m, _) in models.items()},
        repeats,
        s.warmup,
        f"sharing {name}",
        s.progress,
    )
    variants = [
        {
            "name": key,
            "what": what,
            "layer_sharing": m.cfg.layer_sharing,
            "stored_blocks": m.cfg.n_layers,
            "executed_layers": m.cfg.n_executed_layers,
            "params": param_count(m.cfg)["total"],
            "ms_per_token": median(times[key]) * 1e3,
            "paper_ms": PAPER_SHARING_MS.get(key),
            "paper_ratio": ratio(PAPER_SHARING_MS.get(key), PAPER_SHARING_MS["unshared"]),
        }
        for key, (m, what) in models.items()
    ]
    versus(variants, variants[0], "ms_per_token", "latency_ratio_vs_unshared")
    r = {v["name"]: v["latency_ratio_vs_unshared"] for v in variants}
    result = {
        "config": name,
        "prompt_len": plen,
        "new_tokens": new,
        "repeats": repeats,
        "variants": variants,
        "immediate_vs_repeat_all": ratio(r["immediate"], r["repeat_all"]),
        "paper": PAPER_SHARING,
    }
    return result
