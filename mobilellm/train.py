"""The training loop: one process on a laptop, or DDP/FSDP2 under ``torchrun`` with the same code.

AdamW (0.9, 0.95), weight decay 0.1 on matrices only, linear warmup then cosine decay to 10% of
the peak, gradient clipping at 1.0 — the paper's recipe. Checkpoints hold everything needed to
continue bit-identically (weights, optimizer, step, the batch sampler's RNG), are written
atomically, and are written on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import ModelConfig
from .data import TokenData, Tokenizer, get_batch, val_windows
from .model import MobileLLM


@dataclass
class TrainConfig:
    """How to train: budget, optimizer, schedule, evaluation, checkpoints, hardware."""

    max_steps: int = 1000
    batch_size: int = 32  # sequences per optimizer step, over all processes and micro-steps
    seq_len: int | None = None  # None: the model's max_seq_len
    grad_accum: int = 1
    lr: float = 1e-2  # near-best at teaching scale; the paper used 2e-3 at 125M
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_windows: int = 64  # validation windows of seq_len tokens
    checkpoint_every: int | None = None  # None: at every evaluation (when training into a folder)
    device: str = "auto"
    compile: bool = False
    fsdp: bool = False  # under torchrun: shard with FSDP2 instead of replicating with DDP
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "eval_every", "eval_windows"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} ({v!r}) must be a positive integer")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum "
                             f"({self.grad_accum})")
        if not self.lr > 0:
            raise ValueError(f"lr ({self.lr}) must be > 0")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio ({self.min_lr_ratio}) must be in [0, 1]")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be >= 0")
        self.betas = tuple(self.betas)

    def to_dict(self) -> dict:
        """Plain-dict form (for JSON)."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """What a run measured."""

    steps: int
    tokens: int
    params: int
    train_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val_loss: list[tuple[int, float]] = field(default_factory=list)
    wall_time: float = 0.0  # of this session (a resumed run counts from the resume)
    session_tokens: int = 0
    interrupted: bool = False

    @property
    def final_val_loss(self) -> float:
        """Validation loss at the last evaluation."""
        return self.val_loss[-1][1] if self.val_loss else float("nan")

    @property
    def best_val_loss(self) -> float:
        """Lowest validation loss seen."""
        return min((v for _, v in self.val_loss), default=float("nan"))

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of wall time (this session of the run)."""
        return self.session_tokens / self.wall_time if self.wall_time else float("nan")


def auto_device(device: str = "auto") -> torch.device:
    """``auto``: cuda, then mps (torch >= 2.9), then cpu; anything else is passed to torch."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) >= (2, 9) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio * lr`` at ``max_steps``."""
    if step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cosine)


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices, none on norms and embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed_tokens" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tc.betas, fused=False)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 32,
                  device: torch.device | str = "cpu") -> float:
    """Mean next-token cross-entropy (nats) over validation windows (N, T + 1)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device)
        logits = model(w[:, :-1])
        total += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
        count += w[:, 1:].numel()
    model.train(was_training)
    return total / count


# --- checkpoints -----------------------------------------------------------------------------

def _replace_atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_checkpoint(out: str | os.PathLike, model: MobileLLM, optimizer: torch.optim.Optimizer | None,
                    tc: TrainConfig | None, step: int, tokens: int, sampler: torch.Generator | None,
                    tokenizer: Tokenizer | None = None) -> None:
    """Weights (safetensors) and training state, each written to a temp file and renamed."""
    from safetensors.torch import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = {"model": model.cfg.to_dict(), "train": tc.to_dict() if tc else None, "step": step}
    _replace_atomic(out / "config.json", lambda p: p.write_text(json.dumps(cfg, indent=1)))
    _replace_atomic(out / "model.safetensors", lambda p: save_model(model, str(p), metadata={"step": str(step)}))
    if optimizer is not None:
        state = {"step": step, "tokens": tokens, "optimizer": optimizer.state_dict(),
                 "sampler": sampler.get_state() if sampler is not None else None,
                 "torch_rng": torch.get_rng_state()}
        _replace_atomic(out / "train_state.pt", lambda p: torch.save(state, p))
    if tokenizer is not None and not (out / "tokenizer.model").exists():
        _replace_atomic(out / "tokenizer.model", lambda p: tokenizer.save(p))


def _corrupt(path: Path, err: Exception) -> ValueError:
    return ValueError(f"checkpoint file {path} is corrupt or truncated ({type(err).__name__}: {err}); "
                      "delete the folder to start over, or point to another checkpoint")


def load_checkpoint(directory: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[MobileLLM, dict]:
    """A model with the checkpoint's weights, and its ``config.json`` contents."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    d = Path(directory)
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(f"{d} is not a checkpoint: it needs config.json and model.safetensors "
                                "(written by `python -m mobilellm train --out DIR`)")
    try:
        meta = json.loads((d / "config.json").read_text())
        cfg = ModelConfig.from_dict(meta["model"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise _corrupt(d / "config.json", e) from None
    model = MobileLLM(cfg)
    try:
        with safe_open(str(d / "model.safetensors"), "pt") as f:
            saved_step = (f.metadata() or {}).get("step")
        load_model(model, str(d / "model.safetensors"), strict=True, device=str(device))
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise _corrupt(d / "model.safetensors", e) from None
    if saved_step is not None and int(saved_step) != meta.get("step"):
        raise ValueError(f"{d}: model.safetensors is from step {saved_step} but config.json from step "
                         f"{meta.get('step')} (a write was interrupted); use an earlier checkpoint")
    return model.to(device), meta


def _load_train_state(d: Path, step: int) -> dict:
    path = d / "train_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint has weights but no optimizer state "
                                "to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise _corrupt(path, e) from None
    if state["step"] != step:
        raise ValueError(f"{path} is from step {state['step']} but the weights from step {step}")
    return state


# --- distributed -----------------------------------------------------------------------------

def _dist_setup(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def _wrap(model: MobileLLM, tc: TrainConfig, device: torch.device, world: int) -> torch.nn.Module:
    if world == 1:
        return model
    if tc.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def _full_state(model: torch.nn.Module, optimizer, tc: TrainConfig):
    """Under FSDP, gather the full model and optimizer state (on every rank) for saving."""
    if not tc.fsdp or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --- the loop --------------------------------------------------------------------------------

class _StopFlag:
    """Turns SIGINT into a request to stop after the current step (main thread only)."""

    def __init__(self) -> None:
        self.stop, self._old = False, None

    def __enter__(self) -> _StopFlag:
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.stop:  # a second Ctrl-C: the user means it
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def train(cfg: ModelConfig, tc: TrainConfig, data: TokenData, out: str | os.PathLike | None = None,
          resume: bool = False, model: MobileLLM | None = None,
          on_step: Callable[[int, float], None] | None = None) -> tuple[MobileLLM, TrainResult]:
    """Train ``cfg`` on ``data``; with ``out``, write checkpoints and metrics there (and resume).

    ``on_step(step, loss)`` is called after every optimizer step (for live plots or tests).
    """
    from ._tqdm import tqdm

    if data.tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"the tokenizer has {data.tokenizer.vocab_size} ids but the model's vocab_size is "
                         f"{cfg.vocab_size}: prepare the data with vocab_size={cfg.vocab_size}")
    device = auto_device(tc.device)
    rank, world = _dist_setup(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    seq_len = tc.seq_len or cfg.max_seq_len
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len ({seq_len}) exceeds the model's max_seq_len ({cfg.max_seq_len})")
    micro = tc.batch_size // tc.grad_accum
    if micro % world:
        raise ValueError(f"batch_size / grad_accum ({micro}) must be divisible by the {world} processes")
    out = Path(out) if out is not None else None
    if out is not None and rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(tc.seed)
    sampler = torch.Generator().manual_seed(tc.seed)
    step, tokens = 0, 0
    result_prev: dict = {}
    if resume:
        if out is None or not (out / "train_state.pt").is_file():
            raise FileNotFoundError(f"nothing to resume in {out}: train without --resume first")
        model, meta = load_checkpoint(out, "cpu")
        if model.cfg != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in model.cfg.to_dict().items() if getattr(cfg, k) != v}
            raise ValueError(f"the checkpoint in {out} has a different model config "
                             f"(field: (checkpoint, requested)) {diff}; use another --out or the same config")
        state = _load_train_state(out, meta["step"])
        step, tokens = state["step"], state["tokens"]
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        result_prev = _read_metrics(out, step)
    elif model is None:
        model = MobileLLM(cfg)
    model.to(device).train()
    raw_model = model
    wrapped = _wrap(model, tc, device, world)
    optimizer = make_optimizer(wrapped, tc)
    if resume:
        optimizer.load_state_dict(state["optimizer"])
    fwd = torch.compile(wrapped) if tc.compile else wrapped
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    windows = val_windows(data.val, seq_len, tc.eval_windows)
    result = TrainResult(steps=step, tokens=tokens, params=sum(p.numel() for p in raw_model.parameters()),
                         train_loss=result_prev.get("train", []), val_loss=result_prev.get("val", []))
    metrics = open(out / "metrics.jsonl", "a") if out is not None and rank == 0 else None
    every_ckpt = tc.checkpoint_every or tc.eval_every

    def log(record: dict) -> None:
        if metrics is not None:
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()

    def checkpoint() -> None:
        full = _full_state(wrapped, optimizer, tc)
        if out is None or rank != 0:
            return
        if full is not None:  # FSDP: save the gathered copies through an unwrapped twin
            twin = MobileLLM(cfg)
            twin.load_state_dict(full[0])
            opt = make_optimizer(twin, tc)
            opt.load_state_dict(full[1])
            save_checkpoint(out, twin, opt, tc, step, tokens, sampler, data.tokenizer)
        else:
            save_checkpoint(out, raw_model, optimizer, tc, step, tokens, sampler, data.tokenizer)

    def validate() -> None:
        with autocast:
            v = evaluate_loss(fwd, windows, micro, device)
        result.val_loss.append((step, v))
        log({"step": step, "tokens": tokens, "val_loss": v})

    start, start_tokens = time.perf_counter(), tokens
    bar = tqdm(total=tc.max_steps, initial=step, disable=not tc.progress or rank != 0, unit="step",
               desc=f"train {cfg.n_layers}L×{cfg.dim}", mininterval=1.0)
    try:
        with _StopFlag() as flag:
            while step < tc.max_steps and not flag.stop:
                lr = lr_at(step, tc)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=device)
                for i in range(tc.grad_accum):
                    # Every process draws the same global micro-batch and keeps its slice, so a run
                    # on N processes sees exactly the data of a run on one.
                    x, y = get_batch(data.train, micro, seq_len, sampler)
                    lo, hi = rank * micro // world, (rank + 1) * micro // world
                    x, y = x[lo:hi].to(device), y[lo:hi].to(device)
                    sync = (i == tc.grad_accum - 1 or world == 1 or tc.fsdp)
                    ctx = contextlib.nullcontext() if sync else wrapped.no_sync()
                    with ctx, autocast:
                        logits = fwd(x)
                        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / tc.grad_accum
                    loss.backward()
                    loss_sum += loss.detach()
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(wrapped.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if world > 1:
                    import torch.distributed as dist

                    dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
                step += 1
                tokens += tc.batch_size * seq_len
                loss_value = loss_sum.item()
                result.train_loss.append((step, loss_value))
                log({"step": step, "tokens": tokens, "loss": loss_value, "lr": lr})
                if on_step is not None:
                    on_step(step, loss_value)
                elapsed = time.perf_counter() - start
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{(tokens - start_tokens) / elapsed:,.0f}")
                if step % tc.eval_every == 0 or step == tc.max_steps:
                    validate()
                    bar.set_postfix(loss=f"{loss_value:.3f}", val=f"{result.final_val_loss:.3f}")
                if out is not None and (step % every_ckpt == 0 or step == tc.max_steps):
                    checkpoint()
            if flag.stop:
                result.interrupted = True
                if out is not None:
                    checkpoint()
                    bar.write(f"interrupted at step {step}: checkpoint saved in {out}; "
                              "continue with --resume")
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
    result.wall_time = time.perf_counter() - start
    result.tokens, result.steps, result.session_tokens = tokens, step, tokens - start_tokens
    return raw_model, result


def _read_metrics(out: Path, upto: int) -> dict:
    """Loss curves logged up to the checkpoint's step; later lines (lost work) are dropped."""
    curves: dict = {"train": [], "val": []}
    path = out / "metrics.jsonl"
    kept = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if r.get("step", 0) > upto:
                continue
            kept.append(line)
            if "loss" in r:
                curves["train"].append((r["step"], r["loss"]))
            if "val_loss" in r:
                curves["val"].append((r["step"], r["val_loss"]))
        _replace_atomic(path, lambda p: p.write_text("".join(k + "\n" for k in kept)))
    return curves
