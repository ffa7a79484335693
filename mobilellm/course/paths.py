"""Where the course keeps its files in this checkout: the one module that knows the layout."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = ROOT / "data" / "results"  # cached runs and measurements (committed)
DATA_CACHE = ROOT / "data" / "cache"  # prepared tokens (git-ignored)
EVAL_DIR = ROOT / "data" / "eval"  # evaluation rows in hub schema (committed)
FIGURES_DIR = ROOT / "figures"
NOTEBOOKS_DIR = ROOT / "notebooks"
README = ROOT / "README.md"
DOCS = {
    "workshop": ROOT / "docs" / "workshop.md",
    "reference": ROOT / "docs" / "reference.md",
}  # the book's other pages
BOOK_DIR = ROOT / "build" / "book"
OPTIMUM_VENV = ROOT / ".venv-optimum"  # `make optimum-venv`: optimum-executorch, a peer of the pte bench


def cache_dir() -> Path:
    """Prepared tokens: ``$MOBILELLM_CACHE`` if set, else this checkout's ``data/cache``."""
    return Path(os.environ.get("MOBILELLM_CACHE") or DATA_CACHE)


def is_checkout() -> bool:
    """Whether the package runs from a checkout of the course (not from an installed wheel)."""
    return (ROOT / "pyproject.toml").is_file() and NOTEBOOKS_DIR.is_dir()
