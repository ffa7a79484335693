"""Running the course's notebooks: each executed in order, in place, its wall time recorded (``make figures``)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .._files import write_atomic
from .experiments import provenance
from .paths import NOTEBOOKS_DIR, RESULTS_DIR
from .settings import Settings

TIMES_FILE = RESULTS_DIR / "notebook_times.json"


# How a cell is shown is said by its tags; the metadata JupyterLab reads follows from them (``apply_tags``),
# and the book drops what a reader of the page does not need.
HIDE_INPUT = "hide-input"  # a reading rendered from the data: the output is the lesson, the code is not
HIDE_CELL = "hide-cell"  # checks and bookkeeping: collapsed in JupyterLab, left out of the book, still run
SOLUTION = "solution"  # an exercise's worked solution: collapsed until the learner opens it
NBVAL_TAGS = ("nbval-check-output", "nbval-ignore-output", "nbval-skip", "nbval-raises-exception")


def apply_tags(nb):
    """Set each code cell's JupyterLab visibility from its tags (and clear it where no tag asks)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", ()))
        shown = cell.metadata.get("jupyter", {})
        shown.pop("source_hidden", None)
        shown.pop("outputs_hidden", None)
        if tags & {HIDE_INPUT, HIDE_CELL, SOLUTION}:
            shown["source_hidden"] = True
        if tags & {HIDE_CELL, SOLUTION}:
            shown["outputs_hidden"] = True
        if shown:
            cell.metadata["jupyter"] = shown
        else:
            cell.metadata.pop("jupyter", None)
    return nb


def notebooks() -> list[Path]:
    """The curriculum's notebooks, in order."""
    return sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def kernel_env(settings: Settings) -> dict[str, str]:
    """The environment of a notebook kernel: this process's, plus the settings (the only way into a
    kernel), no progress bars in the committed outputs (ours or the libraries': datasets, lm-eval,
    transformers), and OpenMP workers that sleep rather than spin (several times faster training when two
    processes share the cores; read when torch starts, so it must be set before)."""
    command = (
        "make figures" + (" FRESH=1" if settings.fresh else "") + (f" SEEDS={settings.seeds}" if settings.seeds else "")
    )
    return {
        **os.environ,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
        "TQDM_DISABLE": "1",
        **settings.replace(progress=False, command=settings.command or command).to_env(),
    }


def run_notebooks(only: list[str] | None = None, settings: Settings | None = None) -> dict[str, float]:
    """Execute notebooks in place with ``settings`` (the environment's if None); return seconds per notebook.
    Every kernel gets the same ``fresh_since`` (now), so a run shared by several notebooks is
    retrained once under FRESH, not once per notebook."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    settings = (settings or Settings.from_env()).replace(fresh_since=time.time())
    env = kernel_env(settings)
    times: dict[str, float] = {}
    selected = [p for p in notebooks() if not only or any(p.stem.startswith(o) for o in only)]
    if not selected:
        raise ValueError(f"no notebook matches {only}; notebooks: {[p.stem for p in notebooks()]}")
    for path in selected:
        print(f"▶ {path.name} …", flush=True)
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        # Unix sockets rather than TCP: local only, and no "running over TCP without encryption"
        # warning from every kernel in the log.
        # (absolute socket path: the kernel runs in notebooks/, this process elsewhere)
        km = KernelManager(
            kernel_name="python3",
            transport="ipc",
            ip=str(Path(tempfile.gettempdir()) / f"mobilellm-kernel-{os.getpid()}"),
        )
        client = NotebookClient(
            nb, km=km, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
        )
        try:
            client.execute(env=env)
        finally:
            if km.has_kernel:  # the client shuts down only kernels it started itself
                km.shutdown_kernel(now=True)
            # keep what ran, errors included, for inspection; a kill mid-write leaves the old file
            write_atomic(path, lambda t, nb=nb: nbformat.write(apply_tags(strip_volatile(nb)), t))
        times[path.stem] = round(time.perf_counter() - start, 1)
        print(f"  {path.name}: {times[path.stem]:.0f} s", flush=True)
    return times


def strip_volatile(nb):
    """Drop what changes on every run without changing what a reader sees (execution timestamps),
    so that re-running a notebook with the results cache changes only what really changed."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def record_times(times: dict[str, float], settings: Settings | None = None) -> dict:
    """Merge this run's wall times into ``data/results/notebook_times.json``."""
    settings = settings or Settings.from_env()
    stored = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.is_file() else {}
    prov = provenance(settings)
    for name, seconds in times.items():
        stored[name] = {
            "seconds": seconds,
            "fresh": settings.fresh,
            "date": prov["date"],
            "commit": prov["commit"],
            "machine": prov["machine"],
        }
    write_atomic(TIMES_FILE, lambda t: t.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n"))
    return stored
