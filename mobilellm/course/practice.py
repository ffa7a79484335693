"""The learner's runs: your own model (``notebooks/my_mobilellm.py``) trained by the package's trainer.

A run is cached like a measurement, keyed by the source of your model's file: an unchanged file reads
its run back (``make figures`` stays fast), an edited one trains again, live.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable

from ..config import ModelConfig
from .experiments import cached_measurement, log_cost, tokens
from .settings import Settings

SEQ_LEN, LR, WARMUP, EVALS, EVAL_WINDOWS = 128, 1e-2, 30, 10, 128  # the course's recipe (experiments.Recipe)


def train_mine(
    build: Callable[[ModelConfig, int], object],
    cfg: ModelConfig,
    steps: int,
    settings: Settings,
    seed: int = 0,
    batch_size: int = 32,
) -> dict:
    """Train ``build(cfg, seed)`` for ``steps`` (a few in quick mode) on the course's data; return its
    curves: ``train_loss`` and ``val_loss`` as (step, loss), ``final_val_loss``, ``tokens``, ``seconds``."""
    from ..train import TrainConfig, train

    steps = 4 if settings.quick else steps
    source = inspect.getsource(inspect.getmodule(build))
    key = {
        "source": hashlib.sha256(source.encode()).hexdigest(),
        "config": cfg.to_dict(),
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
    }

    def measure() -> dict:
        tc = TrainConfig(
            max_steps=steps,
            batch_size=batch_size,
            seq_len=SEQ_LEN,
            lr=LR,
            warmup_steps=min(WARMUP, steps),
            seed=seed,
            eval_every=max(1, steps // EVALS),
            eval_windows=8 if settings.quick else EVAL_WINDOWS,
            progress=settings.progress,
            device=settings.device,
        )
        _, r = train(cfg, tc, tokens(), model=build(cfg, seed))
        return {
            "train_loss": [list(point) for point in r.train_loss],  # as JSON reads it back
            "val_loss": [list(point) for point in r.val_loss],
            "final_val_loss": r.final_val_loss,
            "tokens": r.tokens,
            "seconds": r.wall_time,
            "batch_size": batch_size,
        }

    result = cached_measurement("practice", key, measure, settings)["result"]  # one file, whichever notebook asks
    log_cost(result["seconds"])
    return result


def curves(runs: dict[str, dict], title: str, name: str | None = None, reference: dict | None = None):
    """Your runs' losses against the tokens they trained on: training loss (line) and validation loss
    (dots); ``reference``: label → a cached course run (``RunRecord``) of the same model, its validation
    loss dashed."""
    import matplotlib.pyplot as plt

    from .plots import SEED_COLORS, _finish, style

    with style():
        fig, ax = plt.subplots(figsize=(9, 4.2))
        for i, (label, r) in enumerate(runs.items()):
            color = SEED_COLORS[i % len(SEED_COLORS)]
            per_step = r["batch_size"] * SEQ_LEN
            ax.plot(
                [s * per_step for s, _ in r["train_loss"]],
                [v for _, v in r["train_loss"]],
                color=color,
                lw=0.8,
                alpha=0.6,
            )
            ax.plot(
                [s * per_step for s, _ in r["val_loss"]],
                [v for _, v in r["val_loss"]],
                "o",
                color=color,
                label=f"{label}: training (line), validation (dots) {r['final_val_loss']:.3f}",
            )
        mine = list(runs)
        for label, rec in (reference or {}).items():
            per_step = rec.recipe["batch_size"] * rec.recipe["seq_len"]
            # the colour of your run of the same model, if there is one (a single run: it is the reference's)
            same = mine.index(label) if label in mine else (0 if len(mine) == 1 else None)
            ax.plot(
                [s * per_step for s, _ in rec.val_curve],
                [v for _, v in rec.val_curve],
                "--",
                color="grey" if same is None else SEED_COLORS[same % len(SEED_COLORS)],
                alpha=0.7,
                lw=1.2,
                marker="s",
                ms=4,
                label=f"{label} (the course's cached run): {rec.final_val_loss:.3f}",
            )
        ax.set_xlabel("training tokens")
        ax.set_ylabel("loss (nats/token) ↓")
        ax.legend(fontsize=9)
        return _finish(fig, name, title)
