"""The teacher's page: each lesson's reading time (its prose at a reading pace), run time and exercises'
measured costs, and two agendas built from them (``docs/workshop.md``)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .notebooks import TIMES_FILE, notebooks

WORDS_PER_MINUTE = 200  # reading prose with figures beside it
EXERCISE_MINUTES = 15  # per lesson in an agenda: one exercise tried, its solution read
BREAK_EVERY, BREAK_MINUTES = 90, 15


def prose_words(path: Path) -> int:
    """Words a reader reads in a notebook: its Markdown and the readings rendered from the data, tables left out."""

    def words(text: str) -> int:
        return sum(len(line.split()) for line in text.splitlines() if not line.lstrip().startswith("|"))

    total = 0
    for cell in json.loads(path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            total += words("".join(cell["source"]))
        for out in cell.get("outputs", []):
            total += words("".join(out.get("data", {}).get("text/markdown", "")))
    return total


def _exercises(path: Path) -> int:
    """The numbered items under a notebook's "## Exercises" heading (in Markdown or a rendered reading)."""
    for cell in json.loads(path.read_text())["cells"]:
        texts = ["".join(cell["source"])] if cell["cell_type"] == "markdown" else []
        texts += ["".join(o.get("data", {}).get("text/markdown", "")) for o in cell.get("outputs", [])]
        for text in texts:
            if "## Exercises" in text:
                return len(re.findall(r"^\d+\. ", text.split("## Exercises", 1)[1], re.M))
    return 0


def lesson_minutes() -> dict[str, tuple[float, float, list[float]]]:
    """Per lesson (00–11): (reading minutes, run minutes with the cache as `make figures` measured them,
    each exercise's measured cost in minutes, in order; nan where not measured yet)."""
    times = json.loads(TIMES_FILE.read_text()) if TIMES_FILE.is_file() else {}
    out = {}
    for path in notebooks():
        if int(path.stem[:2]) > 11:
            continue
        stored = times.get(path.stem, {})
        solved = stored.get("solutions", {})
        costs = [solved.get(str(k), math.nan * 60) / 60 for k in range(1, _exercises(path) + 1)]
        out[path.stem] = (prose_words(path) / WORDS_PER_MINUTE, stored.get("seconds", 0.0) / 60, costs)
    return out


def agenda(lessons: list[str], minutes: dict[str, tuple[float, float, list[float]]]) -> list[tuple[str, float]]:
    """(what, start minute) for lessons read and run in order, a slot each for trying one exercise (the
    cheapest, run as its solution runs) and reading its solution, breaks between."""
    rows, t, since_break = [], 0.0, 0.0
    for stem in lessons:
        if since_break >= BREAK_EVERY:
            rows.append(("break", t))
            t, since_break = t + BREAK_MINUTES, 0.0
        read, run, costs = minutes[stem]
        rows.append((stem, t))
        measured = [c for c in costs if not math.isnan(c)]
        exercise = EXERCISE_MINUTES + min(measured, default=0.0) if costs else 0.0
        spent = read + run + exercise
        t, since_break = t + spent, since_break + spent
    rows.append(("end", t))
    return rows


def _cost(minutes: float) -> str:
    if math.isnan(minutes):
        return "—"
    return f"{max(1, round(minutes * 60))} s" if minutes < 1.5 else f"{round(minutes)} min"


def workshop() -> str:
    """The teacher's page: each lesson's reading and run time, and two agendas built from them."""
    minutes = lesson_minutes()
    rows = ["| lesson | reading | run (with the cache) | each exercise's cost |", "|---|---:|---:|---|"]
    for stem, (read, run, costs) in minutes.items():
        each = ", ".join(_cost(c) for c in costs) or "—"
        rows.append(f"| [{stem}](../notebooks/{stem}.ipynb) | {read:.0f} min | {run:.1f} min | {each} |")  # docs/
    short = list(minutes)
    while agenda(short, minutes)[-1][1] > 180:  # the lessons, in order, that fit three hours
        short.pop()

    def plan(title: str, lessons: list[str]) -> str:
        steps = agenda(lessons, minutes)
        body = ", ".join(f"{what} at {int(start) // 60}:{int(start) % 60:02d}" for what, start in steps[:-1])
        return f"- **{title}** ({steps[-1][1] / 60:.1f} hours): {body}."

    return "\n".join(
        [
            *rows,
            "",
            f"Reading at {WORDS_PER_MINUTE} words a minute; run times as `make figures` last measured them on two "
            f"cores; an exercise costs what its solution took in that run (or, where it reads cached runs, their "
            f"recorded training time); {EXERCISE_MINUTES} minutes per lesson to try its cheapest exercise and read the "
            f"solution, plus that cost; a {BREAK_MINUTES}-minute break every "
            f"{BREAK_EVERY} minutes. Two agendas built from these:",
            "",
            plan("A three-hour session (the lessons that fit, in order)", short),
            plan("A full day", list(minutes)),
        ]
    )
