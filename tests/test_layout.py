"""The package's two rooms: the library (``mobilellm``) stands alone, the course (``mobilellm.course``)
builds on it; every import points down, the command line's parsers load without torch, and no module
grows past one idea's length."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mobilellm"
LIBRARY = sorted(p for p in PACKAGE.glob("*.py") if p.name != "__main__.py")
MAX_LINES = 450  # about one idea; the command line's parsers and the model are the longest


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative imports resolved within mobilellm)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level])
                module = f"{base}.{node.module}" if node.module else base
                found |= {module} | {f"{module}.{a.name}" for a in node.names}
            else:
                found.add(node.module or "")
    return found


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: p.name)
def test_the_library_imports_nothing_from_the_course(path):
    course = sorted(m for m in _imports(path) if m.startswith("mobilellm.course"))
    assert not course, f"{path.name} imports {course}: the library must work from an installed wheel"


def test_the_check_sees_a_course_import(tmp_path):
    # the rule above would pass vacuously if relative imports were not resolved: check it on a real one
    assert "mobilellm.course.paths" in _imports(PACKAGE / "course" / "experiments.py")
    assert "mobilellm.config" in _imports(PACKAGE / "course" / "experiments.py")


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_import_within_the_package_names_a_module_that_exists(path):
    root = PACKAGE.parent
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = path.relative_to(root).with_suffix("").parts[: -node.level]
            target = root.joinpath(*base, *(node.module.split(".") if node.module else ()))
            assert target.with_suffix(".py").is_file() or (target / "__init__.py").is_file(), (
                f"{path.name}, line {node.lineno}: {'.' * node.level}{node.module or ''} is no module"
            )


def test_building_the_command_lines_parsers_imports_no_torch():
    code = (
        "import sys\n"
        "from mobilellm.__main__ import main\n"
        "for command in ('train', 'export', 'bench', 'ablation', 'verify', 'configs'):\n"
        "    try:\n"
        "        main([command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'scipy', 'numpy', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_module_opens_with_its_idea_and_stays_short(path):
    text = path.read_text()
    assert ast.get_docstring(ast.parse(text)), f"{path.name} has no docstring saying its one idea"
    lines = text.count("\n")
    assert lines <= MAX_LINES or path.name in TOO_LONG, f"{path.name}: {lines} lines (limit {MAX_LINES})"


# Still over the limit, each with the split that is left to do (issue: library and course, each in its own room)
TOO_LONG = {
    "__main__.py": "train/generate/export/eval's checks and summaries move beside their modules; parsers only",
    "experiments.py": "the cached runner and the run records apart",
    "pte.py": "the bench's block-bytes and cache arithmetic apart from lowering and timing",
}
