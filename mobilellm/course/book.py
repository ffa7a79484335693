"""``make book``: the course as a static website, built from the committed, executed notebooks.

One HTML page per notebook (``notebooks/NN_*.ipynb``, its outputs and figures as committed: nothing
is re-executed), the README as its landing page, the workshop and reference pages of ``docs/``, a
sidebar, previous/next links, links to the source files, and on every page the date and commit its
results were produced with and the command that regenerates them.

The tool is nbconvert's ``HTMLExporter`` with its ``lab`` template, extended by the one small Jinja
template below. Why not Jupyter Book 2 / MyST: it needs Node.js and the ``mystmd`` npm package on every
machine that builds the book, and ``myst build`` fetches its site theme from the internet on a first
build, so it would not build offline from the repository alone. nbconvert is already installed with
JupyterLab, renders outputs exactly as JupyterLab does, and converts the notebooks in seconds.
"""

from __future__ import annotations

import datetime
import html
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .paths import BOOK_DIR as DEFAULT_OUT
from .paths import DOCS, NOTEBOOKS_DIR, README, ROOT
from .paths import RESULTS_DIR as RESULTS

REGENERATE = "make figures"

TEMPLATE = r"""
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
{%- if resources.book.math %}{{ super() }}{% endif -%}
{%- endblock html_head_js_mathjax -%}
{%- block notebook_css -%}
<link rel="stylesheet" href="_static/lab.css">
<link rel="stylesheet" href="_static/book.css">
{%- endblock notebook_css -%}
{%- block body_header -%}
<body data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
{{ resources.book.sidebar }}
<main class="jp-Notebook book-main">
{{ resources.book.header }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ resources.book.footer }}
</main>
</body>
{%- endblock body_footer -%}
"""

CSS = """
body { margin: 0; display: flex; align-items: flex-start; font-family: var(--jp-ui-font-family);
  background: var(--jp-layout-color0); }
.book-sidebar { position: sticky; top: 0; flex: 0 0 250px; box-sizing: border-box; height: 100vh;
  overflow-y: auto; padding: 20px 16px; background: var(--jp-layout-color2);
  border-right: 1px solid var(--jp-border-color2); font-size: 14px; line-height: 1.4; }
.book-sidebar .book-title { display: block; font-weight: 600; font-size: 16px; margin-bottom: 14px; }
.book-sidebar ol { list-style: none; margin: 0; padding: 0; }
.book-sidebar li a { display: block; padding: 4px 8px; border-radius: 4px; }
.book-sidebar li a:hover { background: var(--jp-layout-color3); }
.book-sidebar li.current > a { background: var(--jp-brand-color1); color: white; }
.book-sidebar li.sub a { padding-left: 22px; font-size: 13px; }
.book-main { flex: 1 1 auto; min-width: 0; max-width: 1000px; box-sizing: border-box; padding: 16px 28px 48px; }
/* Lab's .jp-Notebook scrolls sideways; here anything too wide must widen the page, where it shows. */
.jp-Notebook.book-main { overflow: visible; }
a { color: var(--jp-content-link-color); }
.book-sidebar a { color: inherit; }
.book-meta { font-size: 13px; color: var(--jp-ui-font-color2); border: 1px solid var(--jp-border-color2);
  border-radius: 4px; padding: 8px 12px; margin: 8px 0 12px; background: var(--jp-layout-color1); }
.book-meta p { margin: 2px 0; }
.book-meta code, .book-footer code { font-size: 12px; }
.book-prevnext { display: flex; justify-content: space-between; gap: 12px; margin: 8px 0; font-size: 14px; }
.book-prevnext a { padding: 6px 10px; border: 1px solid var(--jp-border-color2); border-radius: 4px; }
.book-footer { margin-top: 24px; font-size: 13px; color: var(--jp-ui-font-color2); }
/* Wide tables and long code lines scroll inside their own box, never the page. */
.jp-RenderedHTMLCommon table { display: block; max-width: 100%; overflow-x: auto; }
.jp-RenderedHTMLCommon td, .jp-RenderedHTMLCommon th { max-width: 40em; }
.jp-OutputArea-output pre, .jp-InputArea-editor pre, .jp-RenderedHTMLCommon pre { overflow-x: auto; }
.jp-OutputArea-output img, .jp-RenderedHTMLCommon img { max-width: 100%; height: auto; }
/* From nbconvert's lab template, whose inline CSS this page links instead. */
a.anchor-link { display: none; }
.jp-InputArea, .jp-InputArea-editor { overflow: hidden; }
.cm-editor.cm-s-jupyter .highlight pre { padding: var(--jp-code-padding) 4px; margin: 0;
  font-family: inherit; font-size: inherit; line-height: inherit; color: inherit; }
.jp-OutputArea-output pre { line-height: inherit; font-family: inherit; }
.jp-RenderedText pre { color: var(--jp-content-font-color1); font-size: var(--jp-code-font-size); }
.jp-Collapser { display: none; }
@media (max-width: 800px) {
  body { display: block; }
  .book-sidebar { position: static; height: auto; border-right: none;
    border-bottom: 1px solid var(--jp-border-color2); }
  .book-main { padding: 8px 10px 32px; }
}
"""


@dataclass
class Page:
    """One page of the book: its file, its title in the sidebar, and where it comes from."""

    file: str
    title: str
    source: str  # path in the repository
    notebook: object  # nbformat.NotebookNode
    stem: str | None = None  # the notebook's stem, for notebook pages


def newest_run(results: Path = RESULTS) -> dict:
    """The provenance (commit, date) of the newest run in data/results/, and how many runs there are."""
    provs = []
    for path in sorted(results.glob("*.json")):
        try:
            prov = json.loads(path.read_text()).get("provenance")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(prov, dict) and prov.get("date") and prov.get("commit"):
            provs.append(prov)
    if not provs:
        return {}
    newest = max(provs, key=lambda p: p["date"])  # "YYYY-MM-DD HH:MM UTC" sorts as text
    return {"commit": newest["commit"], "date": newest["date"], "runs": len(provs)}


def notebook_runs(results: Path = RESULTS) -> dict:
    """Per notebook, the commit and date ``make figures`` last executed it (data/results/notebook_times.json)."""
    path = results / "notebook_times.json"
    return json.loads(path.read_text()) if path.exists() else {}


def link_target(target: str, notebook_pages: dict[str, str], source_base: str, from_dir: str = "") -> str:
    """Where a relative link of the README or a notebook points on the site: a page, or the source file."""
    if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target):
        return target
    path, _, anchor = target.partition("#")
    repo_path = os.path.normpath(os.path.join(from_dir, path))
    href = notebook_pages.get(repo_path, source_base + repo_path)
    return href + (f"#{anchor}" if anchor else "")


def rewrite_links(markdown: str, notebook_pages: dict[str, str], source_base: str, from_dir: str = "") -> str:
    """Point a markdown text's relative links (not its images: nbconvert embeds those) at the site."""
    return re.sub(
        r"(?<!!)(\[[^\]]*\]\()([^)\s]+)(\))",
        lambda m: m[1] + link_target(m[2], notebook_pages, source_base, from_dir) + m[3],
        markdown,
    )


def first_heading(nb) -> str:
    """The text of a notebook's first level-1 markdown heading ("" if none)."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def _source_link(path: str, source_base: str) -> str:
    return f'<a href="{html.escape(source_base + path)}"><code>{html.escape(path)}</code></a>'


def _sidebar(pages: list[Page], current: Page) -> str:
    items = []
    for page in pages:
        cls = ' class="current"' if page is current else ""
        items.append(f'<li{cls}><a href="{page.file}">{html.escape(page.title)}</a></li>')
        if page.file == "index.html":
            items.append(
                '<li class="sub"><a href="reference.html#every-ablation-in-the-project">Every ablation</a></li>'
            )
    return (
        '<nav class="book-sidebar" aria-label="Contents"><a class="book-title" href="index.html">'
        f"MobileLLM, step by step</a><ol>{''.join(items)}</ol></nav>"
    )


def _prevnext(pages: list[Page], i: int) -> str:
    prev = f'<a rel="prev" href="{pages[i - 1].file}">← {html.escape(pages[i - 1].title)}</a>' if i else "<span></span>"
    nxt = (
        f'<a rel="next" href="{pages[i + 1].file}">{html.escape(pages[i + 1].title)} →</a>'
        if i + 1 < len(pages)
        else "<span></span>"
    )
    return f'<nav class="book-prevnext" aria-label="Previous and next">{prev}{nxt}</nav>'


def _provenance(page: Page, runs: dict, executed: dict, readme_stamp: str, source_base: str) -> str:
    lines = []
    if page.stem is not None:
        ex = executed.get(page.stem)
        if ex:
            lines.append(
                f"Outputs as committed: executed by <code>{REGENERATE}</code> on {html.escape(ex['date'])} "
                f"at commit <code>{html.escape(ex['commit'])}</code>."
            )
        else:
            lines.append("Outputs as committed (no execution record in <code>data/results/notebook_times.json</code>).")
    elif readme_stamp:
        lines.append(f"Tables generated by <code>{REGENERATE}</code> on {html.escape(readme_stamp)}.")
    if runs:
        lines.append(
            f"Results: the {runs['runs']} training runs and measurements in <code>data/results/</code>, "
            f"the newest made on {html.escape(runs['date'])} "
            f"at commit <code>{html.escape(runs['commit'])}</code>."
        )
    lines.append(
        f"Regenerate: <code>{REGENERATE}</code> (then <code>make book</code>). "
        f"Source: {_source_link(page.source, source_base)}"
        + (" · run it yourself: <code>make lab</code>" if page.stem else "")
        + "."
    )
    return '<div class="book-meta">' + "".join(f"<p>{line}</p>" for line in lines) + "</div>"


def _pages(source_base: str) -> list[Page]:
    import nbformat

    notebooks = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise FileNotFoundError(f"no notebooks/NN_*.ipynb under {ROOT}: run `make book` in a checkout")
    notebook_pages = {f"notebooks/{p.name}": f"{p.stem}.html" for p in notebooks}
    notebook_pages |= {f"docs/{path.name}": f"{name}.html" for name, path in DOCS.items()}

    def markdown_page(text: str, from_dir: str = ""):
        # images relative to the repository root, as the page is rendered from there
        text = re.sub(
            r"(!\[[^\]]*\]\()([^)\s:]+)(\))",
            lambda m: m[1] + os.path.normpath(os.path.join(from_dir, m[2])) + m[3],
            text,
        )
        return nbformat.v4.new_notebook(
            cells=[nbformat.v4.new_markdown_cell(rewrite_links(text, notebook_pages, source_base, from_dir))],
            metadata={},
        )

    pages = [Page("index.html", "The course", "README.md", markdown_page(README.read_text()))]
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "markdown":
                cell.source = rewrite_links(cell.source, notebook_pages, source_base, from_dir="notebooks")
            for out in cell.get("outputs", []):  # readings rendered from the data link like Markdown cells
                if "text/markdown" in out.get("data", {}):
                    out.data["text/markdown"] = rewrite_links(
                        out.data["text/markdown"], notebook_pages, source_base, from_dir="notebooks"
                    )
        pages.append(
            Page(f"{path.stem}.html", first_heading(nb) or path.stem, f"notebooks/{path.name}", nb, stem=path.stem)
        )
    for name, path in DOCS.items():
        text = path.read_text()
        title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), name)
        pages.append(Page(f"{name}.html", title, f"docs/{path.name}", markdown_page(text, from_dir="docs")))
    return pages


def build(out: Path = DEFAULT_OUT, source_url: str | None = None) -> list[Path]:
    """Write the site into ``out`` (replacing an earlier book there) and return the pages written, landing page first.

    Source files are linked at ``source_url`` + their path in the repository (e.g.
    ``https://github.com/OWNER/REPO/blob/main``), or by default relatively, into this checkout.
    """
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not (out / "_static" / "book.css").exists():
        raise ValueError(
            f"--out {out} holds files that are not a book, which it would replace: give a new folder (e.g. build/book)"
        )
    source_base = source_url.rstrip("/") + "/" if source_url else Path(os.path.relpath(ROOT, out)).as_posix() + "/"
    pages = _pages(source_base)
    runs, executed = newest_run(), notebook_runs()
    stamp = re.search(r"Generated by `make figures` on ([^ ]+) from", README.read_text())
    readme_stamp = stamp[1] if stamp else ""

    from nbconvert.preprocessors import TagRemovePreprocessor

    from .notebooks import HIDE_CELL, HIDE_INPUT

    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"book.html.j2": TEMPLATE})],
        template_file="book.html.j2",
        embed_images=True,
    )
    exporter.register_preprocessor(
        TagRemovePreprocessor(remove_cell_tags={HIDE_CELL}, remove_input_tags={HIDE_INPUT}), enabled=True
    )
    if out.exists():
        shutil.rmtree(out)
    (out / "_static").mkdir(parents=True)
    lab_static = next(
        Path(p) / "static" for p in exporter.template_paths if (Path(p) / "static" / "index.css").exists()
    )
    (out / "_static" / "lab.css").write_text(
        (lab_static / "index.css").read_text() + (lab_static / "theme-light.css").read_text()
    )
    (out / "_static" / "book.css").write_text(CSS)

    def has_math(page) -> bool:
        return any(c.cell_type == "markdown" and re.search(r"\$[^$\n]+\$", c.source) for c in page.notebook.cells)

    if any(has_math(page) for page in pages):  # MathJax from the book's own folder: the pages read offline
        exporter.mathjax_url = _copy_mathjax(out / "_static" / "mathjax") + "?config=TeX-AMS-MML_HTMLorMML-full,Safe"
    written = []
    for i, page in enumerate(pages):
        math = has_math(page)
        resources = {
            "metadata": {"name": page.title, "path": str(ROOT if page.stem is None else NOTEBOOKS_DIR)},
            "book": {
                "math": math,
                "sidebar": _sidebar(pages, page),
                "header": _prevnext(pages, i) + _provenance(page, runs, executed, readme_stamp, source_base),
                "footer": _prevnext(pages, i) + '<p class="book-footer">Built by <code>make book</code> on '
                f"{datetime.date.today().isoformat()} from the committed notebooks; nothing was "
                "re-executed.</p>",
            },
        }
        body, _ = exporter.from_notebook_node(page.notebook, resources=resources)
        (out / page.file).write_text(body)
        written.append(out / page.file)
    return written


def _copy_mathjax(dest: Path) -> str:
    """MathJax 2 (from the ``jupyter-server-mathjax`` package) copied into the book; its URL relative to a page.
    Translations are left out (2 MB). The package's one combined configuration is ``TeX-AMS-MML_HTMLorMML-full``
    (HTML-CSS output, its fonts included)."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        raise ValueError("the book renders math with MathJax: pip install jupyter-server-mathjax") from None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("localization"))
    return "_static/mathjax/MathJax.js"
