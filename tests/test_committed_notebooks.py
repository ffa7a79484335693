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
    r"plots\.(ablation|loss_curves|versus|budget|budget_panels|pairs|roadmap)\(|plt\.subplots?\(|"
    r"plt\.figure\("
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
                shown.update(re.findall(r"[\"']([0-9]{2}_[A-Za-z0-9_]+)[\"']", "".join(c["source"])))
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
