"""The course as a person sees it: the built book (``make book``) and JupyterLab, in headless Chromium.

The browser is Debian's ``chromium`` with its ``chromedriver`` (``make browser`` installs them), driven by
Selenium with both paths given, so Selenium Manager never downloads a browser or a driver of its own.
Every page's screenshot is saved under build/book/_screenshots/ for a person to look at.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest

from mobilellm.course import book

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "build" / "book"
SHOTS = OUT / "_screenshots"
WIDTH = 1280
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FIGURE_MIMES = ("image/png", "image/jpeg", "image/svg+xml")

# What a page shows, read in the browser after it loaded.
PAGE_STATE = r"""
const vw = document.documentElement.clientWidth;
const cells = Array.from(document.querySelectorAll('.jp-Cell'));
const clipped = (e) => {  // inside a box that scrolls or clips it, so it cannot widen the page
  for (let a = e.parentElement; a && a !== document.body; a = a.parentElement) {
    if (getComputedStyle(a).overflowX !== 'visible' && a.getBoundingClientRect().right <= vw + 1) return true;
  }
  return false;
};
const scrollWidth = document.documentElement.scrollWidth;
const beyond = Array.from(document.querySelectorAll('body *'))
  .filter(e => e.getBoundingClientRect().right > vw + 1 && !clipped(e));
const beyondSet = new Set(beyond);
const wide = beyond.filter(e => !beyondSet.has(e.parentElement)).slice(0, 5)  // the outermost ones
  .map(e => `<${e.tagName.toLowerCase()} class="${e.className}"> to ${Math.round(e.getBoundingClientRect().right)}`);
return {
  title: document.title,
  images: Array.from(document.images).map(i => ({
    src: i.getAttribute('src').slice(0, 60), loaded: i.complete && i.naturalWidth > 0,
    output: !!i.closest('.jp-OutputArea-output')})),
  stderr: Array.from(document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"]')).map(e => {
    const cell = e.closest('.jp-Cell'); const prompt = cell && cell.querySelector('.jp-InputPrompt');
    return {cell: cells.indexOf(cell), prompt: prompt ? prompt.textContent.replace(/\s+/g, ' ').trim() : '',
            text: e.textContent.trim().slice(0, 90)};}),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
  viewport: vw, scrollWidth: scrollWidth, wide: wide,
  cut: Array.from(document.querySelectorAll('body *')).filter(e => {  // content a box hides without a scrollbar
    const ox = getComputedStyle(e).overflowX;
    return (ox === 'hidden' || ox === 'clip') && e.scrollWidth > e.clientWidth + 1;
  }).slice(0, 5).map(e => `<${e.tagName.toLowerCase()} class="${e.className}"> ${e.scrollWidth}/${e.clientWidth} px`),
  height: document.documentElement.scrollHeight,
};
"""


def _chrome():
    """Headless Debian Chromium through Selenium, or a skip that says what is missing."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (`make browser` installs them as root)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is missing: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={WIDTH},900",
    ):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    except Exception as e:  # a broken install must say so, not fail every check below with it
        pytest.skip(f"headless chromium did not start ({CHROMIUM}, {CHROMEDRIVER}): {str(e).splitlines()[0]}")


@pytest.fixture(scope="module")
def browser():
    driver = _chrome()
    yield driver
    driver.quit()


# A figure the notebook draws and saves to figures/: plots.save(fig, "NN_x") or plots.<kind>(..., name="NN_x").
FIGURE_CALL = re.compile(r"""(?:\bname\s*=\s*|\bsave\(\s*\w+\s*,\s*)["'](\d\d_\w+)["']""")


def _notebook_figures(path: Path) -> tuple[int, list[str]]:
    """(image outputs in the notebook, the figures it draws that no output of their cell shows)."""
    nb = nbformat.read(path, as_version=4)
    images, missing = 0, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        shown = unseen_reprs = 0
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            has_image = any(m in data for m in FIGURE_MIMES)
            shown += has_image
            unseen_reprs += not has_image and str(data.get("text/plain", "")).startswith("<Figure size")
        images += shown
        names = FIGURE_CALL.findall(cell.source)
        if len(names) > shown or unseen_reprs:
            missing.append(
                f"{path.name} cell {i} (In [{cell.get('execution_count')}]) draws "
                f"{', '.join(names) or 'a figure'} but shows {shown} image(s)"
            )
    return images, missing


@pytest.fixture(scope="module")
def built() -> list[Path]:
    """The book, built into build/book/ (landing page first)."""
    start = time.perf_counter()
    written = book.build(OUT)
    print(f"book: {len(written)} pages built in {time.perf_counter() - start:.1f} s")
    return written


@pytest.fixture(scope="module")
def pages(built, browser) -> dict[str, dict]:
    """Open every page of the book at 1280 px, screenshot it, and return what each page shows."""
    SHOTS.mkdir(exist_ok=True)
    state = {}
    for path in built:
        browser.get(path.as_uri())
        page = browser.execute_script(PAGE_STATE)
        height = min(page["height"], 16000)  # Chromium's largest capture
        shot = browser.execute_cdp_cmd(
            "Page.captureScreenshot",
            {
                "format": "png",
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
            },
        )
        (SHOTS / f"{path.stem}.png").write_bytes(base64.b64decode(shot["data"]))
        state[path.name] = page
    print(f"book: screenshots in {SHOTS}")
    return state


def _notebook_of(page_name: str) -> Path | None:
    path = ROOT / "notebooks" / page_name.replace(".html", ".ipynb")
    return path if path.exists() else None


def test_the_book_leaves_out_checks_and_shows_readings_without_their_code(built):
    from mobilellm.course.notebooks import HIDE_CELL, HIDE_INPUT

    for path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tagged = {t: sum(t in c.metadata.get("tags", ()) for c in nb.cells) for t in (HIDE_CELL, HIDE_INPUT)}
        page = (OUT / f"{path.stem}.html").read_text()
        assert f"celltag_{HIDE_CELL}" not in page, f"{path.stem}: a check cell is on the page"
        assert page.count(f"celltag_{HIDE_INPUT} ") + page.count(f'celltag_{HIDE_INPUT}"') == tagged[HIDE_INPUT]
        if tagged[HIDE_INPUT]:  # the reading's output is there, its code is not
            cell = page.split(f"celltag_{HIDE_INPUT}", 1)[1].split("jp-Cell ", 1)[0]
            assert "jp-OutputArea" in cell and "jp-InputArea" not in cell, path.stem


@pytest.mark.slow
def test_book_has_every_notebook_and_landing(built):
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    names = [p.name for p in built]
    assert names == ["index.html", *[f"{p.stem}.html" for p in notebooks], "workshop.html", "reference.html"]
    landing = (OUT / "index.html").read_text()
    for text in ("make figures", "make test", "02_swiglu.html", "workshop.html", "reference.html"):
        assert text in landing, f"the landing page lacks {text!r}"
    assert "Every ablation in the project" in (OUT / "reference.html").read_text()
    assert "A three-hour session" in (OUT / "workshop.html").read_text()


@pytest.mark.slow
def test_every_image_loaded(pages):
    broken = [
        f"{name}: <img src={img['src']}…>"
        for name, page in pages.items()
        for img in page["images"]
        if not img["loaded"]
    ]
    assert not broken, "images that did not load (naturalWidth 0):\n" + "\n".join(broken)


@pytest.mark.slow
def test_every_figure_the_notebook_draws_is_on_the_page(pages):
    problems = []
    for name, page in pages.items():
        nb = _notebook_of(name)
        if nb is None:
            continue
        images, missing = _notebook_figures(nb)
        shown = sum(img["output"] for img in page["images"])
        if shown != images:
            problems.append(f"{name}: {images} image outputs in {nb.name}, {shown} on the page")
        problems += missing
    assert not problems, (
        "figures missing from the book (a figure the notebook draws and saves to figures/ must "
        "also be an output of its cell):\n" + "\n".join(problems)
    )


@pytest.mark.slow
def test_no_stderr_output_shown(pages):
    cells: dict[tuple[str, int, str], list[str]] = {}
    for name, page in pages.items():
        for s in page["stderr"]:
            key = (name.replace(".html", ".ipynb"), s["cell"], s["prompt"].rstrip(":"))
            cells.setdefault(key, []).append(s["text"])
    shown = [
        f"{nb} cell {i} ({prompt}): {len(texts)} stderr block(s): {' '.join(texts)[:110]!r}"
        for (nb, i, prompt), texts in cells.items()
    ]
    assert not shown, (
        "KNOWN until the committed notebooks are cleaned of stderr output: the book shows what the "
        f"notebook shows, and {len(shown)} cells have stderr (cell = index in the notebook):\n" + "\n".join(shown)
    )


@pytest.mark.slow
def test_every_internal_link_resolves(pages):
    ids = {(OUT / name).resolve(): set(page["ids"]) for name, page in pages.items()}
    broken = []
    for name, page in pages.items():
        for href in page["links"]:
            url = urlparse(href)
            if url.scheme != "file":
                continue  # the web is not reachable from a test; internal links are file:// here
            target = Path(unquote(url.path)).resolve()
            if not target.exists():
                broken.append(f"{name}: {href} (no such file)")
            elif url.fragment and target in ids and not {url.fragment, unquote(url.fragment)} & ids[target]:
                # as browsers do, the raw fragment or its percent-decoded form names the element
                broken.append(f"{name}: {href} (no #{unquote(url.fragment)} on {target.name})")
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)


@pytest.mark.slow
def test_nothing_overflows_a_1280px_screen(pages):
    wide = [
        f"{name}: page {p['scrollWidth']} px wide in a {p['viewport']} px window; " + "; ".join(p["wide"])
        for name, p in pages.items()
        if p["scrollWidth"] > p["viewport"] or p["wide"]
    ]
    cut = [f"{name}: " + "; ".join(p["cut"]) for name, p in pages.items() if p["cut"]]
    assert all(p["viewport"] <= WIDTH for p in pages.values())
    assert not wide, "pages wider than the screen:\n" + "\n".join(wide)
    assert not cut, "content cut off by a box that hides its overflow:\n" + "\n".join(cut)


@pytest.mark.slow
def test_each_page_states_its_provenance(built):
    runs = book.newest_run()
    assert runs, "data/results/ has no run with a provenance"
    executed = book.notebook_runs()
    for path in built:
        text = path.read_text()
        assert runs["commit"] in text and runs["date"] in text and "make figures" in text, path.name
        if path.stem in executed:
            assert executed[path.stem]["commit"] in text, path.name


@pytest.mark.slow
def test_every_page_has_a_screenshot(pages):
    for name in pages:
        shot = SHOTS / name.replace(".html", ".png")
        assert shot.stat().st_size > 10_000, f"{shot} is (nearly) empty"


def test_pages_in_docs_link_like_the_readme():
    pages = {"notebooks/02_swiglu.ipynb": "02_swiglu.html", "docs/reference.md": "reference.html"}
    assert book.link_target("../notebooks/02_swiglu.ipynb", pages, "../../", from_dir="docs") == "02_swiglu.html"
    assert book.link_target("docs/reference.md#layout", pages, "../../") == "reference.html#layout"
    assert book.link_target("../mobilellm/model.py", pages, "../../", from_dir="docs") == "../../mobilellm/model.py"


def test_links_point_at_pages_or_sources():
    pages, base = {"notebooks/02_swiglu.ipynb": "02_swiglu.html"}, "../../"
    assert book.link_target("notebooks/02_swiglu.ipynb", pages, base) == "02_swiglu.html"
    assert book.link_target("02_swiglu.ipynb#x", pages, base, from_dir="notebooks") == "02_swiglu.html#x"
    assert book.link_target("mobilellm/model.py", pages, base) == "../../mobilellm/model.py"
    assert (
        book.link_target("../README.md", pages, "https://example.org/r/blob/main/", from_dir="notebooks")
        == "https://example.org/r/blob/main/README.md"
    )
    assert book.link_target("https://arxiv.org/abs/2402.14905", pages, base) == "https://arxiv.org/abs/2402.14905"
    text = "see [02](notebooks/02_swiglu.ipynb) and ![fig](figures/07_roadmap.png)"
    assert book.rewrite_links(text, pages, base) == "see [02](02_swiglu.html) and ![fig](figures/07_roadmap.png)"


def test_build_replaces_only_an_earlier_book():
    with pytest.raises(ValueError, match="not a book"):
        book.build(ROOT)


# --- JupyterLab: the first step of a workshop, done the way a participant does it -----------------------

LAB_STATE = """
return {
  headings: Array.from(document.querySelectorAll('.jp-RenderedMarkdown h1')).map(e => e.textContent.replace('¶', '')),
  kernel: (document.querySelector('.jp-Notebook-ExecutionIndicator') || {dataset: {}}).dataset.status || null,
  statusbar: Array.from(document.querySelectorAll('.jp-StatusBar-TextItem')).map(e => e.textContent),
  toasts: Array.from(document.querySelectorAll('.Toastify__toast')).map(e => e.textContent),
  unread: (document.querySelector('.jp-Notification-Status-Text') || {}).textContent,
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as r:
        body = r.read()
    return json.loads(body) if body else None


@pytest.mark.slow
def test_jupyterlab_opens_a_notebook_with_a_running_kernel(built, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    notebook = ROOT / "notebooks" / "00_setup_and_data.ipynb"
    before = notebook.read_bytes()
    heading = book.first_heading(nbformat.reads(before.decode(), as_version=4))
    port, token = _free_port(), secrets.token_hex(16)
    # A clean user: no settings or workspace of the developer's, and no autosave of the opened notebook.
    autosave = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings"
    autosave.parent.mkdir(parents=True)
    autosave.write_text('{"autosave": false}')
    env = dict(
        os.environ,
        JUPYTER_CONFIG_PATH=str(ROOT / "jupyter_config"),  # as `make lab` sets it
        JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"),
        JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"),
    )
    log = tmp_path / "lab.log"
    with open(log, "w") as log_file:
        lab = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                f"--ServerApp.port={port}",
                "--ServerApp.port_retries=0",
                f"--IdentityProvider.token={token}",
                "--ServerApp.allow_root=True",
                f"--ServerApp.root_dir={ROOT / 'notebooks'}",
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert lab.poll() is None, f"jupyter lab exited ({lab.returncode}):\n{log.read_text()[-2000:]}"
            try:
                _api(port, token, "/api/status")
                break
            except OSError:
                assert time.monotonic() < deadline, f"jupyter lab did not answer in 90 s:\n{log.read_text()[-2000:]}"
                time.sleep(0.5)
        browser.get(f"http://127.0.0.1:{port}/lab/tree/{notebook.name}?token={token}")
        state = {}

        def ready(driver) -> bool:
            state.update(driver.execute_script(LAB_STATE))
            # The toolbar's indicator says "idle" while the kernel is still "Initializing": read the status bar.
            kernel_up = any(re.search(r"\| (Idle|Busy)\s*$", t) for t in state["statusbar"])
            return heading in state["headings"] and kernel_up

        try:
            WebDriverWait(browser, 120, poll_frequency=0.5).until(ready)
        except Exception:
            browser.save_screenshot(str(tmp_path / "lab.png"))
            pytest.fail(
                f"JupyterLab did not show {heading!r} with a running kernel in 120 s: {state} "
                f"(screenshot {tmp_path / 'lab.png'})"
            )
        SHOTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(SHOTS / "jupyterlab.png"))
        sessions = _api(port, token, "/api/sessions")
        kernels = [s["kernel"]["execution_state"] for s in sessions if s["path"].endswith(notebook.name)]
        assert kernels and kernels[0] in ("idle", "busy"), f"no running kernel for {notebook.name}: {sessions}"
        assert state["kernel"] in ("idle", "busy"), state
        news = [t for t in state["toasts"] if "official Jupyter news" in t]
        assert not news and state["unread"] in ("0", None), (
            f"JupyterLab asks about Jupyter news (jupyter_config/labconfig should turn it off): {state}"
        )
    finally:
        try:
            _api(port, token, "/api/shutdown", method="POST")  # stops the kernels too
            lab.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            lab.kill()
            lab.wait(10)
    assert notebook.read_bytes() == before, f"opening {notebook.name} in JupyterLab changed the file"


def test_math_renders_offline(built, browser):
    """Notebook 03's formula is typeset by the MathJax copied into the book, not fetched from a CDN."""
    from selenium.webdriver.support.ui import WebDriverWait

    page = next(p for p in built if p.name.startswith("03_"))
    html = page.read_text()
    assert "_static/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full" in html and "cdnjs" not in html
    assert (OUT / "_static" / "mathjax" / "MathJax.js").is_file()
    assert all("MathJax.js" not in p.read_text() for p in built if not p.name.startswith("03_"))
    browser.get(page.as_uri())
    typeset = "return document.querySelectorAll('.MathJax_CHTML, .MathJax').length"
    WebDriverWait(browser, 60, poll_frequency=0.5).until(lambda b: b.execute_script(typeset) > 0)
