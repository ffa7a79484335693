"""Running the course's notebooks: each executed in order, in place, its wall time recorded (``make figures``)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from .._files import write_atomic
from .experiments import COST_LOG, provenance
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


def run_notebooks(only: list[str] | None = None, settings: Settings | None = None) -> dict[str, dict]:
    """Execute notebooks in place with ``settings`` (the environment's if None); return per notebook its
    seconds and its solutions' seconds.
    Every kernel gets the same ``fresh_since`` (now), so a run shared by several notebooks is
    retrained once under FRESH, not once per notebook."""
    import nbformat
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    settings = (settings or Settings.from_env()).replace(fresh_since=time.time())
    env = kernel_env(settings)
    times: dict[str, dict] = {}
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
        cost_log = Path(tempfile.gettempdir()) / f"mobilellm-costs-{os.getpid()}-{path.stem}.jsonl"
        cost_log.unlink(missing_ok=True)
        try:
            client.execute(env={**env, COST_LOG: str(cost_log)})
        finally:
            if km.has_kernel:  # the client shuts down only kernels it started itself
                km.shutdown_kernel(now=True)
            solutions = solution_seconds(nb, _read_costs(cost_log))  # before the timestamps are stripped
            cost_log.unlink(missing_ok=True)
            # keep what ran, errors included, for inspection; a kill mid-write leaves the old file
            write_atomic(path, lambda t, nb=nb: nbformat.write(apply_tags(strip_volatile(nb)), t))
        times[path.stem] = {"seconds": round(time.perf_counter() - start, 1), "solutions": solutions}
        print(f"  {path.name}: {times[path.stem]['seconds']:.0f} s", flush=True)
    return times


def _read_costs(path: Path) -> list[tuple[float, float]]:
    """(when, seconds) of the training the kernel's calls stood for (``experiments.log_cost``)."""
    if not path.is_file():
        return []
    return [(r["t"], r["seconds"]) for r in map(json.loads, path.read_text().splitlines())]


def solution_seconds(nb, costs: list[tuple[float, float]] = ()) -> dict[str, float]:
    """What each exercise's solution costs a learner, by exercise number (the ``**Solution N.**`` Markdown
    before its cells): the cells' time in this run (nbclient's execution timestamps), or, where longer,
    the recorded training time of the runs they read (``costs``, logged while the cell ran)."""
    import datetime
    import re

    out: dict[str, float] = {}
    current = None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            m = re.match(r"\*\*Solution (\d+)\.", cell.source)
            current = m.group(1) if m else current
        elif SOLUTION in cell.metadata.get("tags", ()) and current is not None:
            ex = cell.metadata.get("execution", {})
            if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
                t0, t1 = (
                    datetime.datetime.fromisoformat(ex[k].replace("Z", "+00:00")).timestamp()
                    for k in ("iopub.execute_input", "shell.execute_reply")
                )
                trained = sum(seconds for when, seconds in costs if t0 <= when <= t1)
                out[current] = round(out.get(current, 0.0) + max(t1 - t0, trained), 2)
    return out


def exercise_cost(notebook: str, n: int, live_seconds: float | None = None) -> str:
    """What exercise ``n`` of ``notebook`` costs on this machine, e.g. "~3 s" or "~12 min": its solution's
    time in the last ``make figures`` run, or ``live_seconds`` (the recorded wall time of the training
    runs it uses, which ``make figures`` reads from the cache) where that is longer."""
    stored = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.is_file() else {}
    measured = stored.get(notebook, {}).get("solutions", {}).get(str(n))
    if measured is None and live_seconds is None:
        return "time not measured yet"
    seconds = max(measured or 0.0, live_seconds or 0.0)
    return f"~{max(1, round(seconds))} s" if seconds < 90 else f"~{round(seconds / 60)} min"


def strip_volatile(nb):
    """Drop what changes on every run without changing what a reader sees (execution timestamps),
    so that re-running a notebook with the results cache changes only what really changed."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    return nb


def record_times(times: dict[str, dict], settings: Settings | None = None) -> dict:
    """Merge this run's wall times (each notebook's, and its solutions') into ``data/results/notebook_times.json``."""
    settings = settings or Settings.from_env()
    stored = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.is_file() else {}
    prov = provenance(settings)
    for name, t in times.items():
        stored[name] = {
            "seconds": t["seconds"],
            "solutions": t.get("solutions", {}),
            "fresh": settings.fresh,
            "date": prov["date"],
            "commit": prov["commit"],
            "machine": prov["machine"],
        }
    write_atomic(TIMES_FILE, lambda t: t.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n"))
    return stored
