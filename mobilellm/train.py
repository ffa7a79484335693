"""The training loop: one process on a laptop, or DDP/FSDP2 under ``torchrun`` with the same code.

AdamW (0.9, 0.95), weight decay 0.1 on matrices only, linear warmup then cosine decay to 10% of
the peak, gradient clipping at 1.0 — the paper's recipe. Checkpoints hold everything needed to
continue bit-identically (weights, optimizer, step, the batch sampler's RNG), are written
atomically, and are written on Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import eval_mode
from .accounting import param_count
from .checkpoint import FolderLock, _peek_step, checkpoint_dir, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import TokenData, get_batch, val_windows
from .devices import auto_device, dist_setup, full_state, wrap
from .model import MobileLLM
from .resume import MetricsLog, resume_run


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
def evaluate_loss(
    model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 32, device: torch.device | str = "cpu"
) -> float:
    """Mean next-token cross-entropy (nats) over validation windows (N, T + 1)."""
    total, count = 0.0, 0
    with eval_mode(model):
        for i in range(0, len(windows), batch_size):
            w = windows[i : i + batch_size].to(device)
            logits = model(w[:, :-1])
            total += F.cross_entropy(logits.float().flatten(0, 1), w[:, 1:].flatten(), reduction="sum").item()
            count += w[:, 1:].numel()
    return total / count


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


def train(
    cfg: ModelConfig,
    tc: TrainConfig,
    data: TokenData,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    model: MobileLLM | None = None,
    on_step: Callable[[int, float], None] | None = None,
    overwrite: bool = False,
) -> tuple[MobileLLM, TrainResult]:
    """Train ``cfg`` on ``data``; with ``out``, write checkpoints and metrics there (and resume).

    A folder that already holds a checkpoint needs ``resume`` (continue it) or ``overwrite``
    (replace it); only one process may train into a folder at a time. A non-finite loss stops the
    run with a ValueError before anything is logged or saved for that step.
    ``on_step(step, loss)`` is called after every optimizer step (for live plots or tests).
    """
    with contextlib.ExitStack() as stack:
        out = Path(out) if out is not None else None
        if out is not None:
            if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 writes (and locks)
                try:
                    out.mkdir(parents=True, exist_ok=True)
                    stack.enter_context(FolderLock(out))
                except OSError as e:  # a file, a folder under a file, read-only, ...
                    raise ValueError(
                        f"cannot train into {out} ({e.strerror or e}): --out must be a folder you can write to"
                    ) from None
            current = checkpoint_dir(out) if out.is_dir() else None  # every rank refuses alike
            if current is not None and not resume and not overwrite:
                step_now = _peek_step(current)
                raise ValueError(
                    f"{out} already holds a checkpoint (step {step_now}): pass --resume to "
                    "continue it, another --out to start a new run, or --overwrite to replace it"
                )
        # Overwriting keeps the old run's checkpoint and metrics until the new run's first checkpoint is
        # complete: a run that diverges or is killed before then leaves the old one loadable.
        replacing = out is not None and current is not None and not resume
        return _train(cfg, tc, data, out, resume, model, on_step, replacing)


@dataclass
class TrainStep:
    """One optimizer step: ``grad_accum`` micro-batches forward and backward, clip, update.

    Every process draws the same global micro-batch and keeps its slice, so a run on N processes
    sees exactly the data of a run on one. Returns the step's mean loss (averaged across processes).
    """

    fwd: Callable[[torch.Tensor], torch.Tensor]  # the model as called (wrapped, maybe compiled)
    wrapped: torch.nn.Module  # the model as the optimizer and DDP/FSDP see it
    optimizer: torch.optim.Optimizer
    tokens: object  # the training token array
    sampler: torch.Generator
    tc: TrainConfig
    seq_len: int
    device: torch.device
    rank: int = 0
    world: int = 1

    @property
    def micro(self) -> int:
        """Sequences per micro-batch, across all processes."""
        return self.tc.batch_size // self.tc.grad_accum

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()

    def __call__(self, lr: float) -> float:
        tc, micro, rank, world = self.tc, self.micro, self.rank, self.world
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        for i in range(tc.grad_accum):
            x, y = get_batch(self.tokens, micro, self.seq_len, self.sampler)
            lo, hi = rank * micro // world, (rank + 1) * micro // world
            x, y = x[lo:hi].to(self.device), y[lo:hi].to(self.device)
            sync = i == tc.grad_accum - 1 or world == 1 or tc.fsdp
            ctx = contextlib.nullcontext() if sync else self.wrapped.no_sync()
            with ctx, self.autocast():
                logits = self.fwd(x)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / tc.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.wrapped.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        return loss_sum.item()


@dataclass
class Checkpointer:
    """Writes the run's checkpoint into ``out`` (rank 0; under FSDP, every rank gathers first)."""

    out: Path | None
    cfg: ModelConfig
    tc: TrainConfig
    data: TokenData
    model: MobileLLM  # the unwrapped model
    step_fn: TrainStep
    rank: int = 0
    on_saved: Callable[[], None] | None = None  # after each complete save

    def __call__(self, step: int, tokens: int) -> None:
        full = full_state(self.step_fn.wrapped, self.step_fn.optimizer, self.tc)
        if self.out is None or self.rank != 0:
            return
        model, optimizer = self.model, self.step_fn.optimizer
        if full is not None:  # FSDP: save the gathered copies through an unwrapped twin
            model = MobileLLM(self.cfg)
            model.load_state_dict(full[0])
            optimizer = make_optimizer(model, self.tc)
            optimizer.load_state_dict(full[1])
        save_checkpoint(
            self.out,
            model,
            optimizer,
            self.tc,
            step,
            tokens,
            self.step_fn.sampler,
            self.data.tokenizer,
            self.data.fingerprint,
        )
        if self.on_saved is not None:
            self.on_saved()


def _diverged(what: str, value: float, step: int, lr: float, out: Path | None) -> ValueError:
    ck = checkpoint_dir(out) if out is not None else None
    kept = f"; the checkpoint in {out} (step {_peek_step(ck)}) is the last good one" if ck is not None else ""
    return ValueError(
        f"training diverged: the {what} is {value} at step {step} (learning rate {lr:.3g}); "
        f"nothing was saved for this step{kept}. Use a lower --lr (e.g. {lr / 10:.3g})"
    )


def _train(
    cfg: ModelConfig,
    tc: TrainConfig,
    data: TokenData,
    out: Path | None,
    resume: bool,
    model: MobileLLM | None,
    on_step: Callable[[int, float], None] | None,
    replacing: bool = False,
) -> tuple[MobileLLM, TrainResult]:
    from ._tqdm import tqdm

    if data.tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {data.tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{cfg.vocab_size}: prepare the data with vocab_size={cfg.vocab_size}"
        )
    device = auto_device(tc.device)
    rank, world = dist_setup(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    seq_len = tc.seq_len or cfg.max_seq_len
    if seq_len > cfg.max_seq_len:
        raise ValueError(f"seq_len ({seq_len}) exceeds the model's max_seq_len ({cfg.max_seq_len})")
    if (tc.batch_size // tc.grad_accum) % world:
        raise ValueError(
            f"batch_size / grad_accum ({tc.batch_size // tc.grad_accum}) must be divisible by the {world} processes"
        )

    torch.manual_seed(tc.seed)
    sampler = torch.Generator().manual_seed(tc.seed)
    step, tokens, curves, state = 0, 0, {}, None
    if resume:
        model, state, curves = resume_run(out, cfg, data, tc)
        step, tokens = state["step"], state["tokens"]
        if step >= tc.max_steps:
            raise ValueError(
                f"the checkpoint in {out} is at step {step}, and --max-steps is {tc.max_steps}: nothing is left to "
                f"train; pass a --max-steps above {step} to continue it"
            )
        sampler.set_state(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
    elif model is None:
        model = MobileLLM(cfg)
    model.to(device).train()
    wrapped = wrap(model, tc, device, world)
    optimizer = make_optimizer(wrapped, tc)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    train_step = TrainStep(
        torch.compile(wrapped) if tc.compile else wrapped,
        wrapped,
        optimizer,
        data.train,
        sampler,
        tc,
        seq_len,
        device,
        rank,
        world,
    )
    metrics = MetricsLog(out, resume, rank, replacing)
    checkpoint = Checkpointer(out, cfg, tc, data, model, train_step, rank, metrics.promote)
    windows = val_windows(data.val, seq_len, tc.eval_windows)
    result = TrainResult(
        steps=step,
        tokens=tokens,
        params=param_count(cfg)["total"],
        train_loss=curves.get("train", []),
        val_loss=curves.get("val", []),
    )
    every_ckpt = tc.checkpoint_every or tc.eval_every

    start, start_tokens = time.perf_counter(), tokens
    bar = tqdm(
        total=tc.max_steps,
        initial=step,
        disable=not tc.progress or rank != 0,
        unit="step",
        desc=f"train {cfg.n_layers}L×{cfg.dim}",
        mininterval=1.0,
    )
    try:
        with _StopFlag() as flag:
            while step < tc.max_steps and not flag.stop:
                lr = lr_at(step, tc)
                loss = train_step(lr)
                step += 1
                tokens += tc.batch_size * seq_len
                if not math.isfinite(loss):
                    raise _diverged("training loss", loss, step, lr, out)
                result.train_loss.append((step, loss))
                metrics.write({"step": step, "tokens": tokens, "loss": loss, "lr": lr})
                if on_step is not None:
                    on_step(step, loss)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss:.3f}", tok_s=f"{(tokens - start_tokens) / (time.perf_counter() - start):,.0f}"
                )
                if step % tc.eval_every == 0 or step == tc.max_steps:
                    with train_step.autocast():
                        v = evaluate_loss(train_step.fwd, windows, train_step.micro, device)
                    if not math.isfinite(v):
                        raise _diverged("validation loss", v, step, lr, out)
                    result.val_loss.append((step, v))
                    metrics.write({"step": step, "tokens": tokens, "val_loss": v})
                    bar.set_postfix(loss=f"{loss:.3f}", val=f"{v:.3f}")
                if out is not None and (step % every_ckpt == 0 or step == tc.max_steps):
                    checkpoint(step, tokens)
            if flag.stop:
                result.interrupted = True
                if out is not None:
                    checkpoint(step, tokens)
                    bar.write(f"interrupted at step {step}: checkpoint saved in {out}; continue with --resume")
    finally:
        bar.close()
        metrics.close()
    result.wall_time = time.perf_counter() - start
    result.tokens, result.steps, result.session_tokens = tokens, step, tokens - start_tokens
    return model, result
