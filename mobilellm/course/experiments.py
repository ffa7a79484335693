"""The cached runner: train an ablation's runs, only those ``data/results/`` lacks, and compare them.

An ablation is a name, labelled model variants, one training recipe and the seeds (the
curriculum's own are in ``ablations.py``). Each
(variant, recipe, data, seed) run is stored as one JSON file named by a hash of exactly those
inputs, so a variant shared by two ablations (the baseline, say) is trained once, and changing
anything that matters (the config, the recipe, the corpus or tokenizer, ``RESULTS_VERSION``)
makes a new file rather than reusing a stale one.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .._files import write_atomic
from ..config import ModelConfig
from . import paths
from .paired import Paired, paired
from .paths import ROOT, cache_dir
from .settings import Settings

RESULTS_VERSION = 1  # bump when the training code changes what a run measures


def quick_mode(settings: Settings | None = None) -> bool:
    """Quick mode (``make test``): tiny runs, one seed, temp output. ``None``: the environment's settings."""
    return (settings or Settings.from_env()).quick


def seeds_of(ab: Ablation, settings: Settings | None = None) -> tuple[int, ...]:
    """The seeds to run: all of ``ab.seeds``, the first only in quick mode, or the first N with
    ``seeds=N`` (``make figures FRESH=1 SEEDS=1``: a from-scratch run in ~60% of the time, as the
    budget sweeps already have one seed; every figure then shows one seed)."""
    settings = settings or Settings.from_env()
    if settings.quick:
        return ab.seeds[:1]
    return ab.seeds[: settings.seeds] if settings.seeds else ab.seeds


def _reusable(path: Path, settings: Settings) -> bool:
    """A cached file serves unless ``fresh`` asks for it again: under FRESH, what was written after
    ``fresh_since`` (set once by ``make figures``) is already fresh, so a run shared by several
    notebooks is retrained once per FRESH session, not once per notebook."""
    return path.is_file() and (not settings.fresh or path.stat().st_mtime >= settings.fresh_since)


_QUICK_DIR: Path | None = None


def output_dirs(settings: Settings | None = None) -> tuple[Path, Path]:
    """(results, figures) folders: the committed ones, or a temp folder in quick mode."""
    global _QUICK_DIR
    if quick_mode(settings):
        if _QUICK_DIR is None:  # one per process, removed when it exits: quick results are throwaway
            import atexit
            import shutil

            _QUICK_DIR = Path(tempfile.mkdtemp(prefix="mobilellm-quick-"))
            atexit.register(shutil.rmtree, _QUICK_DIR, ignore_errors=True)
        return _QUICK_DIR / "results", _QUICK_DIR / "figures"
    return paths.RESULTS_DIR, paths.FIGURES_DIR


@dataclass(frozen=True)
class Recipe:
    """One training recipe shared by every variant of an ablation."""

    tokens: int = 2_500_000  # ~20 tokens per parameter at ~125k parameters
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 1e-2
    warmup_steps: int = 30
    evals: int = 10  # validation points along the run
    eval_windows: int = 128
    corpus: str = "shakespeare"
    vocab_size: int = 512
    # Train on every k-th training document only (the same tokenizer and validation split): the
    # repetition test, which spends the same tokens on more passes over less text.
    train_docs_every: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.train_docs_every, int) or self.train_docs_every < 1:
            raise ValueError(
                f"train_docs_every ({self.train_docs_every!r}) must be a positive integer "
                f"(1: every training document, 3: every third)"
            )

    def key(self) -> dict:
        """The fields that make a run, for its hash. Fields added later are left out at their default,
        so that every run cached before them keeps its key."""
        d = dataclasses.asdict(self)
        if d["train_docs_every"] == 1:
            del d["train_docs_every"]
        return d

    @property
    def steps(self) -> int:
        """Optimizer steps the token budget buys."""
        return max(1, self.tokens // (self.batch_size * self.seq_len))

    def quick(self) -> Recipe:
        """The same recipe shrunk to a few steps (quick mode)."""
        return dataclasses.replace(
            self, tokens=12 * self.batch_size * self.seq_len, warmup_steps=3, evals=2, eval_windows=8
        )

    def train_config(self, seed: int, device: str = "cpu", progress: bool = True):
        """The TrainConfig of one run."""
        from ..train import TrainConfig

        return TrainConfig(
            max_steps=self.steps,
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            lr=self.lr,
            warmup_steps=min(self.warmup_steps, self.steps),
            seed=seed,
            eval_every=max(1, self.steps // self.evals),
            eval_windows=self.eval_windows,
            device=device,
            progress=progress,
        )


@dataclass(frozen=True)
class Ablation:
    """Variants compared under one recipe over several seeds."""

    name: str
    variants: tuple[tuple[str, ModelConfig], ...]
    recipe: Recipe = Recipe()
    seeds: tuple[int, ...] = (0, 1, 2)
    question: str = ""

    def __post_init__(self) -> None:
        labels = [label for label, _ in self.variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"ablation {self.name!r} has duplicate labels {labels}")
        vocab = {c.vocab_size for _, c in self.variants}
        if vocab != {self.recipe.vocab_size}:
            raise ValueError(
                f"ablation {self.name!r}: every variant needs vocab_size {self.recipe.vocab_size}, got {sorted(vocab)}"
            )

    def config(self, label: str) -> ModelConfig:
        """The variant called ``label``."""
        for lab, cfg in self.variants:
            if lab == label:
                return cfg
        raise ValueError(f"no variant {label!r} in {self.name!r}; labels: {[lab for lab, _ in self.variants]}")


@dataclass
class RunRecord:
    """One finished run, as stored in ``data/results/``."""

    label: str
    config: dict
    recipe: dict
    seed: int
    data_fingerprint: str
    params: int
    tokens: int
    final_val_loss: float
    best_val_loss: float
    val_curve: list  # [(step, loss)]
    train_curve: list  # [(step, loss)], every 10th step
    wall_time: float
    provenance: dict = field(default_factory=dict)
    results_version: int = RESULTS_VERSION
    weights: str | None = None  # file name of the trained weights (kept for seed 0), beside the JSON
    path: Path | None = field(default=None, repr=False)  # where the record was read from or written to (not stored)

    def to_json(self) -> str:
        """The stored form: every field but ``path``."""
        return json.dumps({k: v for k, v in dataclasses.asdict(self).items() if k != "path"}, indent=1)


def run_key(cfg: ModelConfig, recipe: Recipe, data_fingerprint: str, seed: int) -> str:
    """Hash of everything that determines a run's result."""
    blob = json.dumps(
        {
            "config": cfg.to_dict(),
            "recipe": recipe.key(),
            "data": data_fingerprint,
            "seed": seed,
            "version": RESULTS_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_record(path: Path) -> RunRecord:
    """A cached run, checked against itself: its final loss must be the last point of its own validation
    curve, and finite. A hand-edited or damaged file is refused by name, never read as a result."""
    fix = f"delete {path} (or rerun with --fresh) and it is trained again"
    try:
        rec = RunRecord(**json.loads(path.read_text()))
        last = float(rec.val_curve[-1][1])
        final = float(rec.final_val_loss)
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise ValueError(f"the cached run {path.name} cannot be read ({e}): {fix}") from None
    if not math.isfinite(final) or abs(final - last) > 1e-6 * max(1.0, abs(last)):
        raise ValueError(
            f"the cached run {path.name} says final_val_loss {rec.final_val_loss!r} but its validation curve ends at "
            f"{last:.6f}: {fix}"
        )
    return rec


def describe(cfg: ModelConfig) -> str:
    """A short readable name for a config, used in result file names."""
    emb = "tied" if cfg.share_embedding else "untied"
    share = "" if cfg.layer_sharing == "none" else f"-{cfg.layer_sharing}{cfg.layer_repeats}"
    return f"{cfg.n_layers}x{cfg.dim}-{cfg.ffn_type}{cfg.ffn_hidden_dim}-h{cfg.n_heads}kv{cfg.n_kv_heads}-{emb}{share}"


def result_path(results_dir: Path, cfg: ModelConfig, recipe: Recipe, data_fingerprint: str, seed: int) -> Path:
    """Where the result of one (variant, recipe, data, seed) run is stored."""
    return results_dir / f"{describe(cfg)}-s{seed}-{run_key(cfg, recipe, data_fingerprint, seed)}.json"


def provenance(settings: Settings | None = None) -> dict:
    """Where a result came from: commit, command, versions, machine, date."""
    settings = settings or Settings.from_env()
    import torch

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short=12", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", "mobilellm"))
    return {
        "commit": commit + ("+dirty" if dirty else ""),
        "command": settings.command or " ".join(sys.argv),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": settings.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {torch.get_num_threads()} threads",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


_DATA_CACHE: dict = {}


def tokens(corpus: str = "shakespeare", vocab_size: int = 512):
    """``data.prepare(corpus, vocab_size)`` with the course's token cache (``data/cache``, or
    ``$MOBILELLM_CACHE``), memoised per process: what the notebooks train and sample on."""
    from ..data import prepare

    key = (corpus, vocab_size)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = prepare(corpus, vocab_size, cache_dir=cache_dir())
    return _DATA_CACHE[key]


def load_data(recipe: Recipe):
    """Prepared tokens for a recipe (memoised per process); with ``train_docs_every`` > 1, the
    training split keeps every k-th document (the fingerprint stays the full corpus's: the recipe
    says which part of it trained)."""
    from ..data import every_kth_document

    key = (recipe.corpus, recipe.vocab_size, recipe.train_docs_every)
    if key not in _DATA_CACHE:
        data = tokens(recipe.corpus, recipe.vocab_size)
        if recipe.train_docs_every > 1:
            data = dataclasses.replace(
                data, train=every_kth_document(data.train, data.tokenizer.eos_id, recipe.train_docs_every)
            )
        _DATA_CACHE[key] = data
    return _DATA_CACHE[key]


def passes(recipe: Recipe) -> float:
    """How many times a run of ``recipe`` reads its training text (tokens trained / tokens there)."""
    return recipe.tokens / len(load_data(recipe).train)


def run_one(
    label: str,
    cfg: ModelConfig,
    recipe: Recipe,
    seed: int,
    settings: Settings | None = None,
    results_dir: Path | None = None,
) -> RunRecord:
    """Train one (variant, seed) unless its result is cached; return the record."""
    from ..train import train

    settings = settings or Settings.from_env()
    results_dir = results_dir or output_dirs(settings)[0]
    data = load_data(recipe)
    path = result_path(results_dir, cfg, recipe, data.fingerprint, seed)
    if _reusable(path, settings):
        return dataclasses.replace(read_record(path), label=label, path=path)
    print(f"training {label!r} ({describe(cfg)}), seed {seed}: {recipe.steps} steps", flush=True)
    model, res = train(cfg, recipe.train_config(seed, settings.device, settings.progress), data)
    print(
        f"  done: validation loss {res.final_val_loss:.4f} after {res.tokens:,} tokens, {res.wall_time:.0f} s "
        f"({res.tokens_per_s:,.0f} tokens/s)",
        flush=True,
    )
    results_dir.mkdir(parents=True, exist_ok=True)
    weights = None
    if seed == 0:  # kept so that later notebooks can sample from and evaluate the trained models
        from safetensors.torch import save_model

        weights = path.with_suffix(".safetensors").name
        save_model(model, str(results_dir / weights))
    rec = RunRecord(
        label=label,
        config=cfg.to_dict(),
        recipe=dataclasses.asdict(recipe),
        seed=seed,
        data_fingerprint=data.fingerprint,
        params=res.params,
        tokens=res.tokens,
        final_val_loss=res.final_val_loss,
        best_val_loss=res.best_val_loss,
        val_curve=res.val_loss,
        train_curve=res.train_loss[::10],
        wall_time=round(res.wall_time, 2),
        provenance=provenance(settings),
        weights=weights,
    )
    write_atomic(path, lambda t: t.write_text(rec.to_json()))
    return dataclasses.replace(rec, path=path)


def cached_measurement(
    name: str, key: dict, measure, settings: Settings | None = None, results_dir: Path | None = None
) -> dict:
    """A measurement too slow for every ``make figures`` run (lowering the 125M to ExecuTorch, say),
    cached like a training run: ``{name}-{hash of key}.json`` in the results folder,
    with the provenance of the run that measured it. ``measure()`` returns a JSON-able dict; it is
    called only when the key is new or under ``FRESH=1``. Put everything that changes the result
    (config, versions, sizes) in ``key``."""
    settings = settings or Settings.from_env()
    results_dir = results_dir or output_dirs(settings)[0]
    digest = hashlib.sha256(json.dumps({"key": key, "version": RESULTS_VERSION}, sort_keys=True).encode())
    path = results_dir / f"{name}-{digest.hexdigest()[:16]}.json"
    if _reusable(path, settings):
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict) or "result" not in stored:
                raise ValueError("no 'result' in it")
        except ValueError as e:  # JSONDecodeError included
            raise ValueError(
                f"the cached measurement {path} cannot be read ({e}): delete it (or rerun with --fresh) "
                "and it is measured again"
            ) from None
        return {**stored, "cached": True, "path": str(path)}
    result = {"name": name, "key": key, "result": measure(), "provenance": provenance(settings)}
    write_atomic(path, lambda t: t.write_text(json.dumps(result, indent=1)))
    return {**result, "cached": False, "path": str(path)}


def load_model(rec: RunRecord):
    """The trained model of a run whose weights were kept (seed 0)."""
    from safetensors.torch import load_model as load_weights

    from ..model import MobileLLM

    if not rec.weights:
        raise ValueError(f"run {rec.label!r} seed {rec.seed} kept no weights (only seed 0 runs do)")
    path = Path(rec.path).parent / rec.weights
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rerun with FRESH=1 to retrain it")
    model = MobileLLM(ModelConfig.from_dict(rec.config))
    load_weights(model, str(path))
    return model.eval()


def run_ablation(ab: Ablation, settings: Settings | None = None, results_dir: Path | None = None) -> list[RunRecord]:
    """Every (variant, seed) of an ablation; quick mode shrinks the recipe and keeps one seed.
    ``settings=None``: the environment's (``Settings.from_env``), as in a notebook kernel."""
    settings = settings or Settings.from_env()
    recipe = ab.recipe.quick() if settings.quick else ab.recipe
    records = [
        run_one(label, cfg, recipe, seed, settings, results_dir)
        for label, cfg in ab.variants
        for seed in seeds_of(ab, settings)
    ]
    log_cost(sum(r.wall_time for r in records))
    return records


COST_LOG = "MOBILELLM_COST_LOG"  # set by the notebook runner for each kernel


def log_cost(seconds: float) -> None:
    """Note, for the notebook runner, the training time a call stands for (cached or not): an exercise
    whose solution reads cached runs costs a learner their recorded wall time, not the cache's second."""
    path = os.environ.get(COST_LOG)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"t": time.time(), "seconds": seconds}) + "\n")


def cached_runs(ab: Ablation, settings: Settings | None = None) -> tuple[list[RunRecord], list[tuple[str, int]]]:
    """The runs of ``ab`` already in the results cache, and the (label, seed) pairs still missing.

    For sweeps too long for ``make figures`` (hours): a notebook shows what is cached and names the
    command that trains the rest (``python -m mobilellm ablation NAME``). In quick mode every run
    takes seconds, so they are all trained."""
    settings = settings or Settings.from_env()
    if settings.quick:
        return run_ablation(ab, settings), []
    results = output_dirs(settings)[0]
    fp = load_data(ab.recipe).fingerprint
    found, missing = [], []
    for label, cfg in ab.variants:
        for seed in seeds_of(ab, settings):
            path = result_path(results, cfg, ab.recipe, fp, seed)
            if path.is_file():
                found.append(run_one(label, cfg, ab.recipe, seed, settings.replace(fresh=False), results))
            else:
                missing.append((label, seed))
    return found, missing


def trend_runs(
    sweeps: list[Ablation], a: str, b: str, settings: Settings | None = None
) -> tuple[dict[int, list[RunRecord]], list[str]]:
    """For a budget trend: training tokens → the cached runs of ``a`` and ``b`` (budgets where both
    have a seed), and one line per sweep with runs still missing, naming the command to train them."""
    runs, notes = {}, []
    for sweep in sweeps:
        found, missing = cached_runs(sweep, settings)
        found = [r for r in found if r.label in (a, b)]
        seeds = {r.seed for r in found if r.label == a} & {r.seed for r in found if r.label == b}
        if seeds:
            runs[sweep.recipe.tokens] = [r for r in found if r.seed in seeds]
        if missing:
            notes.append(
                f"{sweep.name}: {len(missing)} run(s) not trained yet (python -m mobilellm ablation {sweep.name})"
            )
    return runs, notes


def is_cached(ab: Ablation, settings: Settings | None = None) -> bool:
    """Whether every run of ``ab`` is in the results cache (in quick mode runs take seconds: always True)."""
    settings = settings or Settings.from_env()
    if settings.quick:
        return True
    results = output_dirs(settings)[0]
    fp = load_data(ab.recipe).fingerprint
    return all(
        result_path(results, c, ab.recipe, fp, s).is_file() for _, c in ab.variants for s in seeds_of(ab, settings)
    )


def summarize(records: list[RunRecord]) -> list[dict]:
    """Per variant: mean, spread (max - min) and standard deviation of the final validation loss."""
    out = []
    for label in dict.fromkeys(r.label for r in records):
        losses = [r.final_val_loss for r in records if r.label == label]
        rs = [r for r in records if r.label == label]
        out.append(
            {
                "label": label,
                "params": rs[0].params,
                "n_seeds": len(losses),
                "mean": statistics.fmean(losses),
                "spread": max(losses) - min(losses),
                "std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "losses": losses,
                "tokens": rs[0].tokens,
                "wall_time": statistics.fmean(r.wall_time for r in rs),
            }
        )
    return out


def compare(records: list[RunRecord], a: str, b: str) -> Paired:
    """How ``b`` differs from ``a``, seed by seed: the course's paired verdict (``mobilellm.paired``)."""
    losses = {lab: {r.seed: r.final_val_loss for r in records if r.label == lab} for lab in (a, b)}
    for lab in (a, b):
        if not losses[lab]:
            raise ValueError(f"no runs labelled {lab!r}; labels: {sorted({r.label for r in records})}")
    return paired(a, b, losses[a], losses[b])
