"""Continuing a run: what a resumed run must share with its checkpoint (the model, the data, the
tokenizer, the recipe), the loss curves it carries on, and the ``metrics.jsonl`` log it appends to.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ._files import write_atomic
from .checkpoint import _load_train_state, _peek_step, checkpoint_dir, load_checkpoint
from .config import ModelConfig
from .data import TokenData
from .model import MobileLLM
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .train import TrainConfig


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


def resume_run(out: Path | None, cfg: ModelConfig, data: TokenData, tc: TrainConfig) -> tuple[MobileLLM, dict, dict]:
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
