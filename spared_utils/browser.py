"""Check the rendered book as a reader's browser shows it: ``python -m spared_utils.browser [HTML]``.

Two passes over every page of ``_build/html`` (default):

1. :func:`static_problems` parses each page's HTML (BeautifulSoup, no browser): every internal
   link, image, stylesheet and script must point at a file of the build (and a link's ``#anchor``
   at an element of that page); no cell output may be an error or a Python traceback.
2. :func:`browse` opens each page in headless Chromium through Playwright: the page must load,
   every ``<img>`` must be decoded with a non-zero size once laid out, no cell output may be a
   stderr stream, name a path of the build machine or hold a table wider than the content
   column, and a screenshot of the page is written to ``_build/screenshots/<page>.png``.

The browser is Debian's ``chromium`` package (``apt-get install chromium``), which Playwright's
Python package drives through ``executable_path``: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["PageReport", "browse", "find_chromium", "html_pages", "machine_paths", "static_problems", "check_book"]

REFRESH = re.compile("^refresh$", re.IGNORECASE)  # <meta http-equiv="Refresh">: a redirect page

#: Classes myst-nb gives to a cell output that is an error (``output error`` / ``traceback``).
ERROR_OUTPUT_CLASSES = ("traceback", "error")

_PAGE_JS = """
async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  const column = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
  const colWidth = column.getBoundingClientRect().width;
  const outputs = [...document.querySelectorAll('div.cell_output')];
  return {
    title: document.title,
    text: document.body ? document.body.innerText.length : 0,
    height: document.documentElement.scrollHeight,
    wide: [...document.querySelectorAll('div.cell_input pre')]
      .filter(p => p.checkVisibility() && p.scrollWidth > p.clientWidth + 1)
      .map(p => Math.max(...p.textContent.split('\\n').map(l => l.length))),
    stderr: [...document.querySelectorAll('div.cell_output .stderr, div.cell_output .output.stderr')]
      .map(e => e.textContent.trim()).filter(t => t.length),
    outputs: outputs.map(o => o.innerText || ''),
    figures: [...document.querySelectorAll('figcaption span.caption-number')].map(e => e.textContent.trim()),
    tables: [...document.querySelectorAll('div.cell_output table')]
      .filter(t => t.checkVisibility())
      .map(t => ({width: t.getBoundingClientRect().width, column: colWidth,
                  head: [...t.querySelectorAll('th')].slice(0, 4).map(h => h.textContent.trim()).join(', ')}))
      .filter(t => t.width > t.column + 1),
    images: imgs.map(i => ({src: i.getAttribute('src'), natural: [i.naturalWidth, i.naturalHeight],
                           shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height],
                           visible: i.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})})),
  };
}
"""


@dataclass
class PageReport:
    """What the browser saw on one page.

    Attributes
    ----------
    page
        Path of the page relative to the HTML folder.
    title
        The document's title.
    images
        ``(src, natural width, natural height, shown width, shown height)`` per ``<img>``.
    screenshot
        Where the page's screenshot was written.
    wide_code
        The longest line (characters) of each code cell wider than its box (a scroll bar).
    stderr, machine_paths, wide_tables
        The page's stderr outputs (their start), the build machine's paths its outputs name, and
        its tables wider than the content column.
    figure_numbers
        The numbers of the page's figure captions as shown ("Fig. 9.2 ").
    explorers
        Per kernel-free explorer on the page: whether choosing another value changed its view.
    redirect
        The target of a redirect page (Sphinx's ``index.html``), which is not opened.
    problems
        What is wrong (empty when the page is fine).
    """

    page: str
    title: str = ""
    images: list[tuple[str, int, int, float, float]] = field(default_factory=list)
    screenshot: Path | None = None
    wide_code: list[int] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    machine_paths: list[str] = field(default_factory=list)
    wide_tables: list[str] = field(default_factory=list)
    figure_numbers: list[str] = field(default_factory=list)
    explorers: list[bool] = field(default_factory=list)
    redirect: str | None = None
    problems: list[str] = field(default_factory=list)


def book_html(folder: str | os.PathLike) -> Path | None:
    """The book's HTML folder: ``folder`` itself, or its ``html/`` (the build folder the README
    names, ``_build``, holds the HTML there); ``None`` when neither has an ``index.html``."""
    for html in (Path(folder), Path(folder) / "html"):
        if (html / "index.html").is_file():
            return html
    return None


def html_pages(html: Path) -> list[Path]:
    """Every ``.html`` page of the build, sorted (Sphinx's own ``_static`` folder left out)."""
    html = Path(html)
    if not (html / "index.html").is_file():
        raise FileNotFoundError(f"{html}/index.html not found: build the book first "
                                "(python -m spared_utils.book)")
    return sorted(p for p in html.rglob("*.html") if "_static" not in p.relative_to(html).parts)


def _local_target(page: Path, ref: str) -> tuple[Path, str] | None:
    """The file (and fragment) a relative reference of ``page`` points at; None if external."""
    parts = urlsplit(ref)
    if parts.scheme or parts.netloc or ref.startswith(("mailto:", "javascript:", "data:")):
        return None
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    return target, unquote(parts.fragment)


def static_problems(html: Path) -> dict[str, list[str]]:
    """Broken internal links, missing files and error outputs of every page, without a browser.

    Parameters
    ----------
    html
        The book's HTML folder (``_build/html``).

    Returns
    -------
    dict
        Page (relative to ``html``) → its problems; pages without problems are left out.
    """
    from bs4 import BeautifulSoup

    html = Path(html).resolve()
    ids: dict[Path, set[str]] = {}

    def anchors(path: Path) -> set[str]:
        if path not in ids:
            soup = BeautifulSoup(path.read_text(errors="replace"), "html.parser")
            ids[path] = {el["id"] for el in soup.find_all(id=True)} | {
                el["name"] for el in soup.find_all("a", attrs={"name": True})}
        return ids[path]

    found: dict[str, list[str]] = {}
    for page in html_pages(html):
        soup = BeautifulSoup(page.read_text(errors="replace"), "html.parser")
        problems = []
        refs = ([("link", a.get("href")) for a in soup.find_all("a", href=True)]
                + [("image", el.get("src")) for el in soup.find_all("img")]
                + [("stylesheet", el.get("href")) for el in soup.find_all("link", rel="stylesheet")]
                + [("script", el.get("src")) for el in soup.find_all("script", src=True)]
                + [("redirect", el.get("content", "").partition("url=")[2])
                   for el in soup.find_all("meta", attrs={"http-equiv": REFRESH})])
        for kind, ref in refs:
            if not ref:
                problems.append(f"{kind} without a target")
                continue
            target = _local_target(page, ref)
            if target is None:
                continue
            path, fragment = target
            if not path.is_file():
                problems.append(f"{kind} {ref!r}: {path} does not exist")
            elif kind in ("link", "redirect") and fragment and path.suffix == ".html" and fragment not in anchors(path):
                problems.append(f"link {ref!r}: no element with id {fragment!r} in {path.name}")
        for out in soup.select("div.output, div.cell_output div"):
            classes = set(out.get("class", []))
            if classes & set(ERROR_OUTPUT_CLASSES):
                problems.append(f"error output cell: {out.get_text()[:200]!r}")
        if "Traceback (most recent call last)" in soup.get_text():
            problems.append("a Python traceback is shown on the page")
        if problems:
            found[str(page.relative_to(html))] = problems
    return found


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``$CHROMIUM`` first), or None."""
    candidates = [os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome",
                  "google-chrome-stable"]
    for name in candidates:
        if name and (path := shutil.which(name)):
            return path
    return None


def machine_paths(text: str, roots: Sequence[str] = ()) -> list[str]:
    """Absolute paths of the build machine in ``text`` (a cell's output): under the temporary,
    home and work folders, a virtual environment's ``site-packages``, or one of ``roots`` (the
    project's folder). A reader cannot open them, and they change from machine to machine."""
    found = [m.group(0) for m in MACHINE_PATH.finditer(text)]
    found += [root for root in roots if root and root in text and not any(root in f for f in found)]
    return sorted(set(found))


#: Absolute paths that only exist on the machine that built the book.
MACHINE_PATH = re.compile(r"(?<![\w.:/])/(?:tmp|work|home|root|Users|private/var|var/folders)/[^\s'\"<>),;]+"
                          r"|[^\s'\"<>]*site-packages/[^\s'\"<>),;]+")


def browse(html: Path, screenshots: Path | None = None, chromium: str | None = None, width: int = 1280,
           max_height: int = 6000, timeout: float = 30.0) -> list[PageReport]:
    """Open every page of the build in headless Chromium (through Playwright), check what a reader
    sees, and screenshot it.

    Playwright's Python package drives Debian's ``chromium`` (``executable_path``); it needs
    none of its own browser downloads. Per page: it loads; every ``<img>`` decodes with a
    non-zero size once laid out; no cell output is a stderr stream (warnings), names a path of the
    build machine (:func:`machine_paths`) or holds a table wider than the content column; the
    code cells wider than their box are listed (:attr:`PageReport.wide_code`).

    Parameters
    ----------
    html
        The book's HTML folder (``_build/html``).
    screenshots
        Folder for the screenshots (default: ``<html>/../screenshots``, i.e. ``_build/screenshots``).
    chromium
        The browser executable (default: :func:`find_chromium`).
    width, max_height
        Viewport width and the most pixels of a page's height a screenshot keeps.
    timeout
        Seconds to wait for each page to load.

    Returns
    -------
    list of PageReport
        One per page, in :func:`html_pages` order.
    """
    from bs4 import BeautifulSoup
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright
    from tqdm.auto import tqdm

    html = Path(html).resolve()
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found: install Debian's package (apt-get install chromium) "
                                "or set CHROMIUM to the browser's path")
    shots = Path(screenshots) if screenshots else html.parent / "screenshots"
    roots = [str(html.parent.parent), str(Path(sys.prefix))]
    reports = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            for path in tqdm(html_pages(html), desc="pages in chromium", leave=False):
                rel = path.relative_to(html)
                report = PageReport(str(rel))
                refresh = BeautifulSoup(path.read_text(errors="replace"), "html.parser").find(
                    "meta", attrs={"http-equiv": REFRESH})
                if refresh is not None:  # checked by static_problems: its target exists
                    report.redirect = refresh.get("content", "").partition("url=")[2] or "?"
                    reports.append(report)
                    continue
                try:
                    page.goto(path.as_uri(), wait_until="load", timeout=timeout * 1000)
                    seen = page.evaluate(_PAGE_JS)
                except PlaywrightError as err:
                    report.problems.append(f"did not load or could not be inspected: {str(err).splitlines()[0]}")
                    reports.append(report)
                    continue
                _read_page(report, seen, roots)
                report.explorers = _try_explorers(page)
                report.problems += [f"explorer {k + 1} did not change its view when a value was chosen"
                                    for k, ok in enumerate(report.explorers) if not ok]
                height = min(int(seen["height"]), max_height)
                report.screenshot = shots / rel.with_suffix(".png")
                report.screenshot.parent.mkdir(parents=True, exist_ok=True)
                tmp = report.screenshot.with_suffix(".part.png")
                page.screenshot(path=str(tmp), full_page=True, clip={"x": 0, "y": 0, "width": width, "height": height})
                tmp.replace(report.screenshot)
                reports.append(report)
        finally:
            browser.close()
    return reports


def _try_explorers(page) -> list[bool]:
    """For each kernel-free explorer on the page (:meth:`spared_utils.explore.Explorer.html`):
    choose another value in its last dropdown, and whether its image changed."""
    out = []
    for k in range(page.locator("div.su-explorer").count()):
        explorer = page.locator("div.su-explorer").nth(k)
        select = explorer.locator("select").last
        if select.locator("option").count() < 2:
            out.append(True)  # one view only: nothing to change
            continue
        before = explorer.locator("img").get_attribute("src")
        current = select.input_value()
        other = next(v for v in select.locator("option").all_inner_texts() if v != current)
        select.select_option(label=other)
        out.append(explorer.locator("img").get_attribute("src") != before)
    return out


def _read_page(report: PageReport, seen: dict, roots: Sequence[str]) -> None:
    """Fill ``report`` from what :data:`_PAGE_JS` measured."""
    report.title = seen["title"]
    report.wide_code = seen["wide"]
    report.figure_numbers = seen["figures"]
    report.stderr = [text[:160] for text in seen["stderr"]]
    report.machine_paths = machine_paths("\n".join(seen["outputs"]), roots)
    report.wide_tables = [f"{t['width']:.0f} px in a {t['column']:.0f}-px column ({t['head']})" for t in seen["tables"]]
    if seen["text"] == 0:
        report.problems.append("the page shows no text")
    for img in seen["images"]:
        (nw, nh), (sw, sh) = img["natural"], img["shown"]
        report.images.append((img["src"], nw, nh, sw, sh))
        if min(nw, nh) == 0:
            report.problems.append(f"image {img['src']!r} did not decode (natural size {nw}×{nh})")
        elif min(sw, sh) == 0 and img["visible"]:  # a closed menu's icons have no size
            report.problems.append(f"image {img['src']!r} is laid out with zero size")
    report.problems += [f"stderr output: {text!r}" for text in report.stderr]
    report.problems += [f"output names a path of the build machine: {p}" for p in report.machine_paths]
    report.problems += [f"table wider than the column: {t}" for t in report.wide_tables]


def check_book(html: Path, screenshots: Path | None = None) -> dict[str, list[str]]:
    """Both passes (:func:`static_problems`, :func:`browse`); page → problems (empty: all fine)."""
    problems = static_problems(html)
    for report in browse(html, screenshots):
        if report.problems:
            problems.setdefault(report.page, []).extend(report.problems)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spared_utils.browser", description=__doc__.split("\n\n")[0])
    parser.add_argument("html", nargs="?", default="_build/html", help="the book's HTML folder")
    parser.add_argument("--screenshots", help="screenshot folder (default: _build/screenshots)")
    args = parser.parse_args(argv)
    html = book_html(args.html)
    if html is None:
        print(f"error: no book in {args.html} (no index.html there nor in html/): build it first with `make book`",
              file=sys.stderr)
        return 2
    problems = check_book(html, Path(args.screenshots) if args.screenshots else None)
    for page, items in problems.items():
        for item in items:
            print(f"{page}: {item}")
    print(f"[browser] {len(html_pages(html))} pages, {len(problems)} with problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
