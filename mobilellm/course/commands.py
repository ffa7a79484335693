"""The course's commands on the command line — ``ablation``, ``verify``, ``figures``, ``bench``, ``book`` —
each run in the checkout (its notebooks and results cache); their parsers are in ``mobilellm.__main__``."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def _need_checkout(command: str) -> None:
    """The course's commands read and write the checkout (its notebooks and results cache), not an installed wheel."""
    from .paths import is_checkout

    if not is_checkout():
        raise ValueError(
            f"`{command}` is a command of the course, which lives in the repository checkout (its notebooks and "
            "results cache): clone the repository and run it there (`make venv` installs the course's extras)"
        )


def cmd_ablation(args: argparse.Namespace) -> int:
    """Run (or read from the results cache) one ablation and print its summary."""
    _need_checkout(args.command)
    from .ablations import get_ablation, scaled
    from .experiments import compare, run_ablation, summarize
    from .settings import Settings

    ab = get_ablation(args.name)
    command = f"python -m mobilellm ablation {args.name}"
    if args.seeds:
        ab = dataclasses.replace(ab, seeds=args.seeds)
        command += " --seeds " + ",".join(map(str, args.seeds))
    if args.scale != 1 or args.corpus:
        ab = scaled(ab, args.scale, args.corpus)
        command += f" --scale {args.scale}" + (f" --corpus {args.corpus}" if args.corpus else "")
    settings = Settings.from_env().replace(command=command)
    if args.fresh or args.quick:
        settings = settings.replace(fresh=settings.fresh or args.fresh, quick=settings.quick or args.quick)
    if args.device:
        from ..devices import auto_device

        auto_device(args.device)  # checked even when every result comes from the cache
        settings = settings.replace(device=args.device)
    records = run_ablation(ab, settings)
    print(f"{ab.name}: {ab.question}")
    for s in summarize(records):
        print(
            f"  {s['label']:28s} {s['params']:>9,} params  val loss {s['mean']:.4f} ± {s['std']:.4f} "
            f"(seeds {', '.join(f'{x:.4f}' for x in s['losses'])})"
        )
    base = ab.variants[0][0]
    for label, _ in ab.variants[1:]:
        print(f"  {label} − {base}: {compare(records, base, label).text()} nats")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Train cached runs of an ablation again from their stored recipe and seed; compare the losses."""
    _need_checkout(args.command)
    from .ablations import get_ablation
    from .evidence import VERIFY_TOLERANCE, rederive_seconds, verify
    from .settings import Settings

    ab = get_ablation(args.name)
    unknown = sorted(set(args.variant or ()) - {label for label, _ in ab.variants})
    if unknown:
        raise ValueError(f"--variant {unknown[0]!r}: {ab.name} has {', '.join(label for label, _ in ab.variants)}")
    settings = Settings.from_env().replace(quick=False, progress=False)
    print(f"{ab.name}: retraining cached runs (all of them took {rederive_seconds(ab, settings) / 60:.0f} min here)")
    worst = 0.0
    for c in verify(ab, settings, args.variant, list(args.seeds) if args.seeds else None):
        worst = max(worst, abs(c.retrained - c.stored))
        print(
            f"  {c.label:28s} seed {c.seed}: stored {c.stored:.6f}, retrained {c.retrained:.6f}, "
            f"difference {c.retrained - c.stored:+.1e} ({'agrees' if c.agrees else 'DISAGREES'}), {c.seconds:.0f} s"
        )
    ok = worst <= VERIFY_TOLERANCE
    print(f"largest difference {worst:.1e} nats: {'within' if ok else 'OUTSIDE'} the tolerance {VERIFY_TOLERANCE:g}")
    return 0 if ok else 1


def cmd_figures(args: argparse.Namespace) -> int:
    """Run the notebooks in order (full mode), then regenerate the README's notebook map."""
    _need_checkout(args.command)
    from .notebooks import record_times, run_notebooks
    from .readme import update_readme
    from .settings import Settings

    settings = Settings.from_env()
    settings = settings.replace(
        fresh=settings.fresh or args.fresh,
        quick=settings.quick or args.quick,
        seeds=settings.seeds if args.seeds is None else args.seeds,
    )
    if not args.readme_only:
        start = time.perf_counter()
        times = run_notebooks(args.only, settings)
        record_times(times, settings)
        print(f"all notebooks: {(time.perf_counter() - start) / 60:.1f} min")
    update_readme()
    print("README.md notebook map updated")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    """Build the static website of the course from the committed notebooks (nothing is re-executed)."""
    _need_checkout(args.command)
    from .book import build

    start = time.perf_counter()
    pages = build(Path(args.out), source_url=args.source_url)
    print(f"{len(pages)} pages in {args.out} ({time.perf_counter() - start:.1f} s); open {pages[0]}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the benchmark suites, print the tables, write the JSON report."""
    from .bench import BenchSettings, format_report, run_bench, write_json

    if Path(args.json).is_dir():
        raise ValueError(f"--json {args.json} is a folder: give a file name")
    if args.pte_blocks is not None and args.pte_blocks < 1:
        raise ValueError(f"--pte-blocks ({args.pte_blocks}) must be a positive integer")
    settings = BenchSettings.make(
        quick=args.quick,
        repeats=args.repeats,
        compile=False if args.no_compile else None,
        progress=not args.no_progress,
    )
    settings = dataclasses.replace(
        settings,
        pte_blocks=args.pte_blocks,
        pte_quants=tuple(args.pte_quants or settings.pte_quants),
        pte_programs=args.pte_programs,
        pte_peers=not args.no_pte_peers,
    )
    report = run_bench(args.suite, [args.config] if args.config else None, settings)
    report["command"] = "python -m mobilellm " + " ".join(args.argv)
    print(format_report(report))
    print(f"wrote {write_json(report, args.json)}")
    return 0
