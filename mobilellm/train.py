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
import re
import shutil
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ._common import eval_mode, one_line
from ._files import fsync, tmp_path, write_atomic
from .config import ModelConfig
from .data import TokenData, get_batch, val_windows
from .model import MobileLLM
from .tokenizer import Tokenizer


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
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")
        if self.seq_len is not None and (not isinstance(self.seq_len, int) or self.seq_len < 1):
            raise ValueError(f"seq_len ({self.seq_len!r}) must be a positive integer (or None for the model's max)")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed ({self.seed!r}) must be an integer in [0, 2**63)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr ({self.lr}) must be a finite number > 0")
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
    """``auto``: cuda, then mps (torch >= 2.9), then cpu; otherwise the device named, if this machine has it."""
    if device != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: this machine has no CUDA GPU that torch {torch.__version__} "
                "can use; use --device cpu (or auto)"
            )
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS (Apple GPU) is not available here; use --device cpu (or auto)")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda or mps")
        return dev
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


# --- checkpoints -----------------------------------------------------------------------------
#
# A checkpoint is one folder, OUT/step-NNNNNN/ (config.json, model.safetensors, train_state.pt,
# tokenizer.model), and OUT/latest names the current one. A save writes a new hidden folder, renames
# it into place, then switches `latest` with one atomic rename; only then is the previous folder
# removed. A kill at any instant therefore leaves `latest` naming a complete checkpoint.

LATEST = "latest"
_STEP_DIR = re.compile(r"step-\d+(\.\d+)?")


def _file_mode() -> int:
    """The mode a new plain file gets here (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def checkpoint_dir(directory: str | os.PathLike) -> Path | None:
    """The folder holding the current checkpoint of a training folder (or the folder itself, if flat); None if none."""
    d = Path(directory)
    pointer = d / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not _STEP_DIR.fullmatch(name):
            raise ValueError(
                f"{pointer} should name a step-NNNNNN folder but holds {name[:40]!r}: "
                "it was edited by hand; point it at one of the step-* folders"
            )
        return d / name
    if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
        return d  # a flat checkpoint (written before checkpoints were folders)
    return None


def save_checkpoint(
    out: str | os.PathLike,
    model: MobileLLM,
    optimizer: torch.optim.Optimizer | None,
    tc: TrainConfig | None,
    step: int,
    tokens: int,
    sampler: torch.Generator | None,
    tokenizer: Tokenizer | None = None,
    data_fingerprint: str | None = None,
) -> Path:
    """Write a complete checkpoint folder, then switch ``OUT/latest`` to it in one rename; returns the folder.

    Refuses weights that are not finite: a diverged model never replaces a good checkpoint.
    """
    from safetensors.torch import save_model

    out = Path(out)
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"not saving step {step}: weight {name} holds NaN or inf (training diverged); "
                f"the previous checkpoint in {out} is kept"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        previous = checkpoint_dir(out)
        tmp = tmp_path(out / f"step-{step:06d}")
        tmp.mkdir()
    except OSError as e:
        raise ValueError(f"cannot write a checkpoint in {out} ({e.strerror or e}): choose another --out") from None
    try:
        cfg = {"model": model.cfg.to_dict(), "train": tc.to_dict() if tc else None, "step": step}
        if tokenizer is not None:
            cfg["data"] = {"fingerprint": data_fingerprint, "tokenizer_fingerprint": tokenizer.fingerprint}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, allow_nan=False))
        save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        os.chmod(tmp / "model.safetensors", _file_mode())  # safetensors writes 0600; readable like the rest
        if optimizer is not None:
            state = {
                "step": step,
                "tokens": tokens,
                "optimizer": optimizer.state_dict(),
                "sampler": sampler.get_state() if sampler is not None else None,
                "torch_rng": torch.get_rng_state(),
            }
            torch.save(state, tmp / "train_state.pt")
        if tokenizer is not None:  # always the tokenizer this model was trained with
            tokenizer.save(tmp / "tokenizer.model")
        for f in tmp.iterdir():
            fsync(f)
    except BaseException as e:  # a full disk, Ctrl-C: no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):
            raise
        # The writers report a full disk in their own ways (OSError, SafetensorError, RuntimeError).
        kept = f"the checkpoint of step {_peek_step(previous)} is kept" if previous else "nothing was saved"
        free = shutil.disk_usage(out).free / 2**20
        raise ValueError(
            f"cannot save step {step} in {out} ({one_line(e)}; {free:.1f} MiB free there): {kept}; "
            "free space, then continue with --resume"
        ) from None
    final, n = out / f"step-{step:06d}", 0
    while final.exists():  # the same step saved again (e.g. Ctrl-C right after a checkpoint)
        n += 1
        final = out / f"step-{step:06d}.{n}"
    os.replace(tmp, final)
    fsync(out)
    write_atomic(out / LATEST, lambda p: p.write_text(final.name + "\n"))
    fsync(out)
    for old in out.iterdir():  # the previous checkpoint, and leftovers of killed saves
        if (
            old != final
            and old.is_dir()
            and (_STEP_DIR.fullmatch(old.name) or re.fullmatch(r"\.step-\d+\.tmp-.*", old.name))
        ):
            shutil.rmtree(old, ignore_errors=True)
    if previous == out:  # a flat checkpoint from before: its files are superseded
        for name in ("config.json", "model.safetensors", "train_state.pt", "tokenizer.model"):
            (out / name).unlink(missing_ok=True)
    return final


def _corrupt(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"checkpoint file {path} is corrupt or truncated ({type(err).__name__}: {err}); "
        "point to another checkpoint, or train into a new --out"
    )


def _unreadable(path: Path, err: OSError) -> ValueError:
    try:
        st = path.stat()
        mode = f"mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}"
    except OSError:
        mode = "mode unknown"
    return ValueError(
        f"cannot read {path}: permission denied ({mode}); ask its owner to run "
        f"`chmod a+r {path}`, or copy the checkpoint to a folder of your own"
    )


def _safetensors_header(path: Path) -> dict:
    """Names, dtypes and shapes of a .safetensors file, read from its header (no tensor data)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def _check_shapes(cfg: ModelConfig, header: dict, d: Path) -> None:
    """config.json against the weights' header, on a meta-device model: nothing is allocated."""
    with torch.device("meta"):
        state = MobileLLM(cfg).state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}  # tied tensors are stored once, under one of their names
    for k, v in state.items():
        aliases.setdefault(id(v), []).append(k)
    expected = {k: tuple(v.shape) for k, v in state.items()}
    saved = {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    wrong = [(k, s, saved[k]) for k, s in expected.items() if k in saved and saved[k] != s]
    missing = sorted(names[0] for names in aliases.values() if not any(n in saved for n in names))
    unexpected = sorted(set(saved) - set(expected))
    if wrong or missing or unexpected:
        what = (
            f"{wrong[0][0]} is {list(wrong[0][2])} in the weights but {list(wrong[0][1])} by config.json"
            if wrong
            else f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
        )
        raise ValueError(
            f"{d}: config.json does not describe model.safetensors ({what}; {len(wrong)} shape "
            f"mismatches, {len(missing)} missing, {len(unexpected)} unexpected tensors): the two files "
            "come from different models; restore the config.json written with these weights"
        )


def load_checkpoint(directory: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[MobileLLM, dict]:
    """A model with the checkpoint's weights, and its ``config.json`` contents."""
    model, meta, _ = load_checkpoint_and_tokenizer(directory, device, tokenizer=False)
    return model, meta


def load_checkpoint_and_tokenizer(
    directory: str | os.PathLike, device: torch.device | str = "cpu", tokenizer: bool = True
) -> tuple[MobileLLM, dict, Tokenizer | None]:
    """The model, ``config.json`` and tokenizer (None if the folder has none) of one checkpoint, read
    consistently: a trainer may switch ``latest`` to a new step folder and delete the old one while
    this reads, so a read that fails after ``latest`` moved is retried once on the new folder. The
    tokenizer is checked against the fingerprint the checkpoint recorded."""
    top = Path(directory)
    if not top.is_dir():
        raise FileNotFoundError(f"{top} is not a checkpoint folder (it does not exist or is a file)")
    for attempt in (0, 1):
        d = checkpoint_dir(top)
        try:
            return _load_once(top, d, device, tokenizer)
        except (ValueError, OSError):
            if attempt or d is None or d == top or checkpoint_dir(top) == d:
                raise  # latest did not move: the error is about this checkpoint
    raise AssertionError("unreachable")


def _load_once(
    top: Path, d: Path | None, device: torch.device | str, with_tokenizer: bool
) -> tuple[MobileLLM, dict, Tokenizer | None]:
    from safetensors.torch import load_model

    if d is None:
        if (
            (top / "config.json").is_file()
            and not (top / "model.safetensors").is_file()
            and any(top.glob("pytorch_model*.bin"))
        ):
            raise FileNotFoundError(
                f"{top} is a Hugging Face folder with pickled weights, not a training "
                "checkpoint: load it with mobilellm.export.load_pretrained"
            )
        raise FileNotFoundError(
            f"{top} is not a checkpoint: it needs config.json and model.safetensors "
            "(written by `python -m mobilellm train --out DIR`)"
        )
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{d} (named by {top / LATEST}) is missing config.json or model.safetensors: "
            "it was changed by hand; point latest at a complete step-* folder"
        )
    device = auto_device(device) if isinstance(device, str) else device
    try:
        meta = json.loads((d / "config.json").read_text())
    except PermissionError as e:
        raise _unreadable(d / "config.json", e) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(d / "config.json", e) from None
    if isinstance(meta, dict) and "model" not in meta and ("model_type" in meta or "architectures" in meta):
        raise ValueError(
            f"{d} is a Hugging Face model folder (e.g. from `export --format hf`), not a training "
            "checkpoint: load it with mobilellm.export.load_pretrained, or pass the training --out folder"
        )
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError) as e:
        raise _corrupt(d / "config.json", e) from None
    try:
        header = _safetensors_header(d / "model.safetensors")
    except PermissionError as e:
        raise _unreadable(d / "model.safetensors", e) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(d / "model.safetensors", e) from None
    _check_shapes(cfg, header, d)
    saved_step = (header.get("__metadata__") or {}).get("step")
    model = MobileLLM(cfg)
    try:
        load_model(model, str(d / "model.safetensors"), strict=True, device=str(device))
    except PermissionError as e:
        raise _unreadable(d / "model.safetensors", e) from None
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise _corrupt(d / "model.safetensors", e) from None
    if saved_step is not None and int(saved_step) != meta.get("step"):
        raise ValueError(
            f"{d}: model.safetensors is from step {saved_step} but config.json from step "
            f"{meta.get('step')} (the files were mixed by hand); use an earlier checkpoint"
        )
    tok = _checked_tokenizer(d, meta) if with_tokenizer else None
    return model.to(device), meta, tok


def _checked_tokenizer(d: Path, meta: dict) -> Tokenizer | None:
    """``d/tokenizer.model`` if there is one, refused when it is not the one the weights were trained with."""
    path = d / "tokenizer.model"
    try:
        return Tokenizer.beside_weights(path, (meta.get("data") or {}).get("tokenizer_fingerprint"))
    except PermissionError as e:
        raise _unreadable(path, e) from None


def _load_train_state(d: Path, step: int) -> dict:
    path = d / "train_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint has weights but no optimizer state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise _unreadable(path, e) from None
    except Exception as e:
        raise _corrupt(path, e) from None
    if state["step"] != step:
        raise ValueError(f"{path} is from step {state['step']} but the weights from step {step}")
    return state


class FolderLock:
    """An exclusive lock on a training folder (``OUT/.lock`` holds the owner's pid); released at exit or death."""

    def __init__(self, folder: Path) -> None:
        self.path, self._fh = Path(folder) / ".lock", None

    def __enter__(self) -> FolderLock:
        fh = open(self.path, "a+")
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ValueError(
                f"{self.path.parent} is in use by another training process (pid {holder}): wait for "
                "it to finish, stop it, or train into another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None


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


def _peek_step(d: Path) -> object:
    try:
        return json.loads((d / "config.json").read_text()).get("step", "?")
    except (OSError, ValueError, AttributeError):
        return "?"


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


class MetricsLog:
    """``metrics.jsonl`` in the run folder (rank 0 only; nothing without a folder). A resumed run
    appends (its metrics were cut back to the checkpoint's step); a new one starts afresh. A run
    replacing another writes beside the old file until its first checkpoint is saved (``promote``)."""

    def __init__(self, out: Path | None, resume: bool, rank: int = 0, replacing: bool = False) -> None:
        self._path = self._pending = None
        self._fh = None
        if out is not None and rank == 0:
            self._path = out / "metrics.jsonl"
            self._pending = out / ".metrics.jsonl.new" if replacing else None
            self._fh = open(self._pending or self._path, "a" if resume else "w")

    def write(self, record: dict) -> None:
        if self._fh is not None:
            self._fh.write(json.dumps(record, allow_nan=False) + "\n")
            self._fh.flush()

    def promote(self) -> None:
        """The new run's first checkpoint is saved: its metrics replace the old run's."""
        if self._fh is not None and self._pending is not None:
            self._fh.close()
            os.replace(self._pending, self._path)
            self._pending = None
            self._fh = open(self._path, "a")

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()


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
        full = _full_state(self.step_fn.wrapped, self.step_fn.optimizer, self.tc)
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


# What a resumed run must keep: changing any of them mid-run makes a run no recipe describes.
_SCHEDULE = {
    "batch_size": "--batch-size",
    "seq_len": "--seq-len",
    "lr": "--lr",
    "warmup_steps": "--warmup-steps",
    "min_lr_ratio": None,
    "weight_decay": None,
    "betas": None,
    "grad_clip": None,
}


def _check_same_schedule(out: Path, saved: dict | None, tc: TrainConfig, cfg: ModelConfig) -> None:
    """Refuse to resume with another batch size, sequence length or learning-rate schedule."""
    if not saved:
        return  # a checkpoint saved without its TrainConfig (save_checkpoint from a notebook)

    def value(d: dict, k: str) -> object:
        v = d.get(k)
        if k == "seq_len":
            return v or cfg.max_seq_len
        return list(v) if isinstance(v, (tuple, list)) else v

    now = tc.to_dict()
    changed = [k for k in _SCHEDULE if k in saved and value(saved, k) != value(now, k)]
    if changed:
        was = ", ".join(f"{k} {value(saved, k)} (now {value(now, k)})" for k in changed)
        flags = " ".join(f"{_SCHEDULE[k]} {value(saved, k)}" for k in changed if _SCHEDULE[k])
        raise ValueError(
            f"the run in {out} was trained with {was}: a resumed run keeps its recipe, so "
            f"resume with {flags or 'the same TrainConfig'}, or start a new run from its weights "
            f"with --init-from {out} and another --out"
        )


def _resume(out: Path | None, cfg: ModelConfig, data: TokenData, tc: TrainConfig) -> tuple[MobileLLM, dict, dict]:
    """The checkpointed model, its training state, and the loss curves logged up to its step."""
    ck = checkpoint_dir(out) if out is not None else None
    if ck is None:
        raise FileNotFoundError(f"nothing to resume in {out}: train without --resume first")
    if not (ck / "train_state.pt").is_file():
        raise FileNotFoundError(
            f"{ck} has the weights of step {_peek_step(ck)} but no train_state.pt (the optimizer's state), "
            f"so it cannot be resumed exactly; start a new run from its weights with --init-from {out} "
            "and another --out (the weights stay where they are)"
        )
    model, meta = load_checkpoint(out, "cpu")
    if model.cfg != cfg:
        diff = {k: (v, getattr(cfg, k)) for k, v in model.cfg.to_dict().items() if getattr(cfg, k) != v}
        raise ValueError(
            f"the checkpoint in {out} has a different model config "
            f"(field: (checkpoint, requested)) {diff}; use another --out or the same config"
        )
    _check_same_data(out, ck, meta, data)
    _check_same_schedule(out, meta.get("train"), tc, cfg)
    state = _load_train_state(ck, meta["step"])
    return model, state, _metrics_upto(out, state["step"])


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
    rank, world = _dist_setup(device)
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
        model, state, curves = _resume(out, cfg, data, tc)
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
    wrapped = _wrap(model, tc, device, world)
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
        params=sum(p.numel() for p in model.parameters()),
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


def _check_same_data(out: Path, ck: Path, meta: dict, data: TokenData) -> None:
    """Refuse to resume on other text or another tokenizer than the checkpoint was trained on."""
    saved = meta.get("data") or {}
    tok_fp = saved.get("tokenizer_fingerprint")
    if tok_fp is None and (ck / "tokenizer.model").is_file():
        tok_fp = Tokenizer(ck / "tokenizer.model").fingerprint
    if tok_fp is not None and tok_fp != data.tokenizer.fingerprint:
        raise ValueError(
            f"the checkpoint in {out} was trained with another tokenizer ({tok_fp[:12]}, this run's is "
            f"{data.tokenizer.fingerprint[:12]}): resume with the same --corpus and --tokenizer, "
            "or train into a new --out"
        )
    if saved.get("fingerprint") and saved["fingerprint"] != data.fingerprint:
        raise ValueError(
            f"the checkpoint in {out} was trained on other data (fingerprint {saved['fingerprint'][:12]}, "
            f"this run's is {data.fingerprint[:12]}): resume with the same --corpus, --data-files and "
            "--max-chars, or train into a new --out"
        )


def _metrics_upto(out: Path, upto: int) -> dict:
    """Cut ``metrics.jsonl`` back to the checkpoint's step (later lines are lost work, and a resumed
    run appends after it) and return the loss curves it keeps."""
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
        write_atomic(path, lambda p: p.write_text("".join(k + "\n" for k in kept)))
    return curves
