"""The pte suite: the paper's sharing latency table in ExecuTorch, beside peers and a same-program control."""

from __future__ import annotations

import datetime
import functools
import gc
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..._common import one_line
from ..._files import write_atomic
from ..._quiet import native_stderr_silenced, quiet_libraries
from ...config import ModelConfig
from ...model import MobileLLM
from ...timing import decode_timer, measure, median
from .common import PAPER_SHARING, PAPER_SHARING_MS, PTE_FULL_BENCH_JSON, QUANT_MODES, BenchSettings, ratio, resolve
from .eager import _sharing_prompt, sharing_variants

# --- pte: the sharing table in ExecuTorch ----------------------------------------------------


def cpu_caches() -> list[dict]:
    """This CPU's caches as the kernel reports them (/sys): level, type, size in bytes, CPUs sharing it."""
    out = []
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            size = (d / "size").read_text().strip()
            mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1], 1)
            out.append(
                {
                    "level": int((d / "level").read_text()),
                    "type": (d / "type").read_text().strip(),
                    "bytes": int(size.rstrip("KMG")) * mult,
                    "shared_cpu_list": (d / "shared_cpu_list").read_text().strip(),
                }
            )
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
    shapes = [
        (q, cfg.dim),
        (kv, cfg.dim),
        (kv, cfg.dim),
        (cfg.dim, q),
        (cfg.dim, cfg.ffn_hidden_dim),
        (cfg.ffn_hidden_dim, cfg.dim),
    ]
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
    from ...gguf_export import write_gguf

    return write_gguf(model, path.with_suffix(".gguf"), None, GGUF_FOR_QUANT[quant])


# The modules whose code decides what a lowered program holds: a change to either lowers anew.
_LIBRARY = Path(__file__).resolve().parents[2]  # the mobilellm package
_EXPORT_CODE = ("executorch_program.py", "gguf_export.py")


def program_fingerprint(model: MobileLLM, key: str, quant: str, max_len: int, group: int) -> str:
    """16 hex digits naming one lowered program: the weights, the variant, format, window and 8da4w group,
    the exporting code and the torch / ExecuTorch / torchao versions (a kept program is reused only if all match)."""
    h = hashlib.blake2b(digest_size=8)
    versions = {d: importlib.metadata.version(d) for d in ("torch", "executorch", "torchao")}
    h.update(json.dumps([key, quant, max_len, group, model.cfg.to_dict(), versions], sort_keys=True).encode())
    for name in _EXPORT_CODE:
        h.update((_LIBRARY / name).read_bytes())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def lowered(
    export: Callable[..., Path],
    model: MobileLLM,
    key: str,
    quant: str,
    max_len: int,
    group: int,
    folder: Path,
    keep: str | os.PathLike | None = None,
) -> tuple[Path, float, bool]:
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
        write_atomic(
            stem.with_suffix(".json"),
            lambda tmp: tmp.write_text(json.dumps({"file": path.name, "lower_s": lower_s, "date": when})),
        )
    return path, lower_s, False


def set_size_ratios(rows: list[dict]) -> None:
    """Each program row's ``size_ratio_vs_fp32``: its bytes over the fp32 program's of the same model (None without)."""
    fp32_bytes = {r["name"]: r.get("bytes") for r in rows if r["quant"] == "fp32"}
    for r in rows:
        r["size_ratio_vs_fp32"] = ratio(r.get("bytes"), fp32_bytes.get(r["name"]))


def bench_pte(
    config: str | ModelConfig,
    s: BenchSettings,
    quants: tuple[str, ...] = QUANT_MODES,
    n_layers: int | None = None,
    peer: bool = True,
    optimum: str | os.PathLike | None = None,
    programs: str | os.PathLike | None = None,
) -> dict:
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
        from ...executorch_program import export_program
        from ...executorch_runtime import PteDecoder, program_census
        from ...gguf_export import LlamaCppDecoder
        from .peers import export_llama_peer, export_optimum_peer, optimum_python

    name, cfg = resolve(config)
    if cfg.ffn_type != "swiglu":
        raise ValueError(f"the pte suite needs a SwiGLU model, {name} has {cfg.ffn_type!r}")
    unknown = [q for q in quants if q not in QUANT_MODES]
    if unknown or not quants:
        raise ValueError(f"pte formats {list(quants)}: choose one or more of {', '.join(QUANT_MODES)}")
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
    eager = measure(
        {k: decode_timer(m, prompt, new) for k, (m, _) in models.items()},
        repeats,
        s.warmup,
        f"pte eager {name}",
        s.progress,
    )
    rows, skipped, costs = [], {}, {}
    threads = executorch_threads()
    # each peer: (export the unshared weights to a file, what it is, load that file for decode steps)
    peers = {PEER: (export_llama_peer, "ExecuTorch's export_llama of the unshared weights", PteDecoder)} if peer else {}
    if peer and optimum_python(optimum):
        peers[OPTIMUM_PEER] = (
            functools.partial(export_optimum_peer, python=optimum),
            "optimum-executorch's export of the unshared weights",
            PteDecoder,
        )
    elif peer:
        skipped[OPTIMUM_PEER] = "no optimum-executorch environment (make optimum-venv)"
    if not peer:
        skipped["peers"] = "not asked for (peer=False; the CLI's --no-pte-peers)"
    if peer and importlib.util.find_spec("llama_cpp"):
        peers[LLAMA_CPP_PEER] = (
            _gguf_peer,
            "llama.cpp on the unshared weights as GGUF (F32 / Q8_0 / Q4_0)",
            functools.partial(LlamaCppDecoder, n_ctx=plen + new, n_threads=threads),
        )
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
                    path, lower_s, reused = lowered(
                        export,
                        m,
                        key,
                        quant,
                        plen + new,
                        group or 0,  # (no 8da4w group: fp32 and int8 use none)
                        Path(tmp),
                        programs,
                    )
                    decs[key], held = loaded_and_run(load, path, prompt)
                    info[key] = {
                        "lower_s": lower_s,
                        "lowered_earlier": reused,
                        "bytes": path.stat().st_size,
                        "resident_bytes": held,
                    }
                    if key == LLAMA_CPP_PEER:
                        info[key] |= {"gguf_type": GGUF_FOR_QUANT[quant], "threads": threads}
                    else:  # what one call runs: XNNPACK subgraphs, and kernels of the runtime's own
                        census = program_census(path)
                        info[key] |= {
                            "delegate_calls": census["delegate_calls"],
                            "kernel_calls": census["kernel_calls"],
                        }
                except Exception as e:  # lowering is fragile across versions: report it, keep the rest
                    skipped[f"{key} {quant}"] = f"export or run failed: {one_line(e)}"
            if "unshared" in decs:  # the control needs no lowering: it runs with or without the peers
                decs[AGAIN], held = loaded_and_run(PteDecoder, decs["unshared"].path, prompt)
                info[AGAIN] = dict(info["unshared"]) | {"resident_bytes": held}
            times = (
                measure(
                    {k: pte_decode_timer(d, prompt, new) for k, d in decs.items()},
                    repeats,
                    s.warmup,
                    f"pte {quant} {name}",
                    s.progress,
                )
                if decs
                else {}
            )
            ms = {k: median(t) * 1e3 for k, t in times.items()}
            ref = ms.get("unshared")
            costs[quant] = {k: repeat_cost(ms, k) for k in ("immediate", "repeat_all")}
            peer_rows = [(k, (models["unshared"][0], w)) for k, (_, w, _) in peers.items()]
            if AGAIN in decs:
                peer_rows.append((AGAIN, (models["unshared"][0], "our unshared program, loaded a second time")))
            for key, (m, what) in [*models.items(), *peer_rows]:
                eager_ms = median(eager[key if key in eager else "unshared"]) * 1e3
                rows.append(
                    {
                        "name": key,
                        "quant": quant,
                        "what": what,
                        "layer_sharing": m.cfg.layer_sharing,
                        "stored_blocks": m.cfg.n_layers,
                        "executed_layers": m.cfg.n_executed_layers,
                        "ms_per_token": ms.get(key),
                        "ms_rounds": [t * 1e3 for t in times.get(key, [])],
                        "latency_ratio_vs_unshared": ratio(ms.get(key), ref),
                        "eager_fp32_ms_per_token": eager_ms,
                        "speedup_vs_eager_fp32": ratio(eager_ms, ms.get(key)),
                        "paper_ms": paper_ms.get(key),
                        "paper_ratio": ratio(paper_ms.get(key), paper_ms["unshared"]),
                        **info.get(key, {}),
                    }
                )
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
    peer_cmp = {
        f"vs_{p}": {
            q: {
                "speed_ratio": ratio(by[p, q]["ms_per_token"], by["unshared", q]["ms_per_token"]),
                "size_ratio": ratio(by["unshared", q].get("bytes"), by[p, q].get("bytes")),
                "ours_faster_rounds": sum(
                    o < t for o, t in zip(by["unshared", q]["ms_rounds"], by[p, q]["ms_rounds"], strict=True)
                ),
                "rounds": len(by[p, q]["ms_rounds"]),
            }
            for q in quants
            if timed(p, q) and timed("unshared", q)
        }
        for p in (PEER, OPTIMUM_PEER, LLAMA_CPP_PEER, AGAIN)
    }
    caches = cpu_caches()
    blocks = {q: block_bytes(base_cfg, q, group or 0) for q in quants if q != "8da4w" or group}
    fits = {
        q: [
            f"L{c['level']}{'d' if c['type'] == 'Data' else ''}"
            for c in caches
            if c["type"] != "Instruction" and b <= c["bytes"]
        ]
        for q, b in blocks.items()
    }
    return {
        "config": name,
        "weights": "random (seeded); latency does not depend on the values",
        "stored_blocks": base_cfg.n_layers,
        "prompt_len": plen,
        "new_tokens": new,
        "cache_window": plen + new,
        "repeats": repeats,
        "group_size_8da4w": group,
        "threads": threads,
        "variants": rows,
        "block_bytes": blocks,
        "programs_kept_in": None if programs is None else str(programs),
        "block_fits_in": fits,
        "cpu_caches": caches,
        "skipped": skipped,
        "repeat_cost": costs,
        "paper_repeat_cost": repeat_cost(paper_ms),
        **peer_cmp,
        "paper": PAPER_SHARING,
    }


def merge_pte_reports(reports: list[dict]) -> dict:
    """One pte report from several runs of the same models, each timing other formats (``--pte-quants``).

    Each format's figures stay as its own run measured them (ratios are within a run, never across);
    ``runs`` keeps every run's formats, command and machine details. Runs of different models or
    settings, or two runs of one format, are refused.
    """
    if not reports:
        raise ValueError("no pte reports to merge")
    same = (
        "config",
        "stored_blocks",
        "prompt_len",
        "new_tokens",
        "cache_window",
        "repeats",
        "group_size_8da4w",
        "threads",
        "weights",
    )
    first = reports[0]["pte"][0]
    merged = {k: first.get(k) for k in same} | {
        "variants": [],
        "cpu_caches": first.get("cpu_caches"),
        "paper_repeat_cost": first.get("paper_repeat_cost"),
        "paper": first.get("paper"),
    }
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
