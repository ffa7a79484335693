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
LONG_LESSONS: dict[str, str] = {}


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_a_lesson_reads_in_about_ten_minutes(path):
    from mobilellm.course.workshop import prose_words

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


# Decimals typed in a notebook's Markdown that come from no run: constants and quotations, each with its
# source. Every other decimal in the prose must appear in some notebook's code or outputs (where a run
# printed or rendered it) or in mobilellm/course/paper.py (the paper's numbers, quoted once).
NOT_MEASURED = {
    ("00_setup_and_data", "6.24"): "ln 512, the loss of a uniform guess",
    ("01_baseline", "0.4"): "0.5M tokens / 1M parameters, the pilot's budget as the design states it",
    ("02_swiglu", "4.30"): "Student's t quantile t(0.975, 2)",
    ("02_swiglu", "1.96"): "the normal quantile",
    ("04_embedding_sharing", "0.4"): "the paper's 45.0 − 44.6 (both in paper.py)",
    ("05_grouped_query_attention", "0.4"): "the paper's 45.0 − 44.6 (both in paper.py)",
    ("08_full_size", "0.95"): "AdamW's beta2",
    ("13_glossary", "0.01"): "an example difference",
}
DECIMAL = re.compile(r"(?<![\w.\-/])[−-]?\d+\.\d+(?![\w.])")


def _texts(path: Path) -> list[str]:
    out = []
    for c in json.loads(path.read_text())["cells"]:
        if c["cell_type"] == "code":
            out.append("".join(c["source"]))
        for o in c.get("outputs", []):
            out.append("".join(o.get("text", "")))
            out += [
                "".join(v) if isinstance(v, list) else v
                for v in o.get("data", {}).values()
                if isinstance(v, (str, list))
            ]
    return out


def test_every_decimal_in_the_prose_comes_from_a_run_or_the_paper():
    """A number typed into Markdown drifts when `make figures` re-runs: a dozen did. Decimals in prose must
    be rendered (a hide-input cell's output) or appear where a run wrote them."""
    measured = "\n".join(t for p in NOTEBOOKS for t in _texts(p)) + (ROOT / "mobilellm/course/paper.py").read_text()
    typed = []
    for path in NOTEBOOKS:
        for c in json.loads(path.read_text())["cells"]:
            if c["cell_type"] != "markdown":
                continue
            prose = re.sub(r"`[^`]*`", "", "".join(c["source"]))  # code spans name things, they measure nothing
            for m in DECIMAL.finditer(prose):
                x = m.group().replace("−", "-").lstrip("-")
                found = re.search(rf"(?<![\d.]){re.escape(x)}(?!\d)", measured)  # 1.1 is not in 11.1 or 1.15
                if (path.stem, x) not in NOT_MEASURED and not found:
                    typed.append(f"{path.stem}: {m.group()} in “…{prose[max(0, m.start() - 60) : m.end() + 20]}…”")
    assert not typed, "typed numbers (render them, or quote them in paper.py):\n" + "\n".join(typed)


def test_the_not_measured_list_has_no_stale_entries():
    for (stem, x), why in NOT_MEASURED.items():
        prose = "".join(
            "".join(c["source"])
            for c in json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())["cells"]
            if c["cell_type"] == "markdown"
        )
        assert x in prose, f"{stem} no longer types {x} ({why}): drop it from NOT_MEASURED"
