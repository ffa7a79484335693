"""The committed notebooks as a reader sees them: every figure on the page where it is drawn, no
stderr, no machine paths, nothing read from outside the repository."""

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# A cell draws a figure when it calls one of the package's plotting functions or makes a pyplot figure.
DRAWS = re.compile(
    r"plots\.(ablation|loss_curves|versus|budget|budget_panels|best_depth|pairs|roadmap)\(|plt\.subplots?\(|"
    r"plt\.figure\(|diagrams\.show\("
)


def cells(path: Path):
    """(index in the notebook, cell) of every code cell."""
    return [(i, c) for i, c in enumerate(json.loads(path.read_text())["cells"]) if c["cell_type"] == "code"]


def has_image(cell) -> bool:
    return any("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 11


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_cell_that_draws_shows_its_figure(path):
    missing = [i for i, c in cells(path) if DRAWS.search("".join(c["source"])) and not has_image(c)]
    assert not missing, f"{path.name}: code cells {missing} draw a figure but show none"


def test_every_figure_file_is_shown_in_a_notebook():
    shown = set()
    for path in NOTEBOOKS:
        for _, c in cells(path):
            if has_image(c):
                source = "".join(c["source"])
                shown.update(re.findall(r"[\"']([0-9]{2}_[A-Za-z0-9_]+)[\"']", source))
                shown.update(f"diagram_{d}" for d in re.findall(r"diagrams\.show\([\"'](\w+)[\"']", source))
    files = {p.stem for p in (ROOT / "figures").glob("*.png")}
    assert files, "figures/ is empty"
    assert not files - shown, f"figures never shown in a notebook: {sorted(files - shown)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_stderr_no_errors_no_machine_paths(path):
    for i, c in cells(path):
        for o in c.get("outputs", []):
            assert o.get("name") != "stderr", f"{path.name} cell {i} shows stderr: {''.join(o['text'])[:200]!r}"
            assert o["output_type"] != "error", f"{path.name} cell {i} ends in {o.get('ename')}"
            text = json.dumps({k: v for k, v in o.get("data", {}).items() if not k.startswith("image/")})
            text += "".join(o.get("text", ""))
            for marker in ("site-packages", "/work/", "/home/", "/tmp/", ".venv"):
                assert marker not in text, f"{path.name} cell {i} prints a machine path ({marker})"
        assert "execution" not in c.get("metadata", {}), f"{path.name} cell {i} keeps execution timestamps"


# What a file of the product must never name: the workspace folder beside a checkout, and the
# project's private notes (spelled from parts, so that this file does not name them either).
OUTSIDE = (
    "/".join(("..", "shared")),
    "/".join(("shared", "data")),
    "DES" + "IGN",
    "design " + "notes",
    "design " + "document",
)


def test_nothing_reads_or_cites_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    offenders = []
    for name in tracked.splitlines():
        if not name.endswith((".py", ".ipynb", ".md", ".cfg", ".toml", ".yml")) or name.startswith(".ci"):
            continue
        text = (ROOT / name).read_text(encoding="utf-8", errors="replace")
        for marker in OUTSIDE:
            if marker in text:
                offenders.append(f"{name}: {marker}")
    assert not offenders, offenders


# --- nothing but the lesson on the page -------------------------------------------------------------

LESSONS = [p for p in NOTEBOOKS if int(p.stem[:2]) <= 11]  # after 11: the evidence appendix and the glossary
READING_WORDS = 2000  # about ten minutes at 200 words a minute
# Lessons still longer, each with what moves out of it (issue: short lessons, the evidence in an appendix)
LONG_LESSONS = {"11_on_device": "the runtime analysis and the machine caveats move to the evidence appendix"}


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_lesson_reads_in_about_ten_minutes(path):
    from mobilellm.course.readme import prose_words

    n = prose_words(path)
    if path.stem in LONG_LESSONS:
        assert n > READING_WORDS, f"{path.stem} is short now ({n} words): take it off LONG_LESSONS"
        pytest.xfail(f"{n} words: {LONG_LESSONS[path.stem]}")
    assert n <= READING_WORDS, f"{path.stem}: {n} words of prose, over {READING_WORDS} (about ten minutes)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_nbval_markers_are_tags_not_comments(path):
    marked = [i for i, c in cells(path) if re.search(r"^\s*#\s*NBVAL_", "".join(c["source"]), re.M)]
    assert not marked, f"{path.name} cells {marked}: use the tag (nbval-check-output, …), not a comment a learner reads"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_hidden_cells_stay_hidden(path):
    import nbformat

    from mobilellm.course.notebooks import apply_tags

    nb = nbformat.read(path, as_version=4)
    shown = [c.metadata.get("jupyter", {}) for c in nb.cells]
    assert [c.metadata.get("jupyter", {}) for c in apply_tags(nb).cells] == shown, (
        f"{path.name}: a cell's visibility disagrees with its tags (run make figures, or apply_tags)"
    )


def test_tags_hide_what_they_say():
    import nbformat

    from mobilellm.course.notebooks import HIDE_CELL, HIDE_INPUT, SOLUTION, apply_tags

    nb = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell("1", metadata={"tags": [t]}) for t in (HIDE_INPUT, HIDE_CELL, SOLUTION)]
        + [nbformat.v4.new_code_cell("2", metadata={"jupyter": {"source_hidden": True}})]
    )
    got = [c.metadata.get("jupyter") for c in apply_tags(nb).cells]
    both = {"source_hidden": True, "outputs_hidden": True}
    assert got == [{"source_hidden": True}, both, both, None]  # an untagged cell is shown again
