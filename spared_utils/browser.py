"""Check the rendered book as a reader's browser shows it: ``python -m spared_utils.browser [HTML]``.

Two passes over every page of ``_build/html`` (default):

1. :func:`static_problems` parses each page's HTML (BeautifulSoup, no browser): every internal
   link, image, stylesheet and script must point at a file of the build (and a link's ``#anchor``
   at an element of that page); no cell output may be an error or a Python traceback.
2. :func:`browse` opens each page in headless Chromium over the DevTools protocol (one browser for
   all pages): the page must load, every ``<img>`` must be decoded with a non-zero size once laid
   out, and a screenshot of the page is written to ``_build/screenshots/<page>.png``.

Chromium is Debian's ``chromium`` package (``apt-get install chromium``); pip packages such as
playwright download their own browser, which an offline machine cannot do.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["PageReport", "browse", "find_chromium", "html_pages", "static_problems", "check_book"]

REFRESH = re.compile("^refresh$", re.IGNORECASE)  # <meta http-equiv="Refresh">: a redirect page

#: Classes myst-nb gives to a cell output that is an error (``output error`` / ``traceback``).
ERROR_OUTPUT_CLASSES = ("traceback", "error")

_IMAGES_JS = """
(async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null :
    new Promise(r => { i.addEventListener('load', r); i.addEventListener('error', r); })));
  return JSON.stringify({
    title: document.title,
    text: document.body ? document.body.innerText.length : 0,
    height: document.documentElement.scrollHeight,
    wide: [...document.querySelectorAll('div.cell_input pre')]
      .filter(p => p.checkVisibility() && p.scrollWidth > p.clientWidth + 1)
      .map(p => Math.max(...p.textContent.split('\\n').map(l => l.length))),
    images: imgs.map(i => ({src: i.getAttribute('src'), natural: [i.naturalWidth, i.naturalHeight],
                           shown: [i.getBoundingClientRect().width, i.getBoundingClientRect().height],
                           visible: i.checkVisibility({checkOpacity: true, checkVisibilityCSS: true})})),
  });
})()
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _DevTools:
    """A minimal DevTools-protocol client on one page target (aiohttp's websocket)."""

    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.events: list[dict] = []

    async def call(self, method: str, **params):
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            msg = json.loads((await self.ws.receive()).data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"DevTools {method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    async def wait_for(self, event: str, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.events):
                if msg.get("method") == event:
                    return self.events.pop(i)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{event} not received within {timeout} s")
            msg = await asyncio.wait_for(self.ws.receive(), left)
            self.events.append(json.loads(msg.data))


async def _browse(chromium: str, pages: list[Path], html: Path, shots: Path, width: int,
                  max_height: int, timeout: float) -> list[PageReport]:
    import aiohttp

    port = _free_port()
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--hide-scrollbars", f"--remote-debugging-port={port}",
             f"--user-data-dir={profile}", f"--window-size={width},900", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with aiohttp.ClientSession() as http:
                targets = None
                deadline = time.monotonic() + timeout
                while targets is None:
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                            targets = [t for t in await resp.json() if t.get("type") == "page"]
                    except aiohttp.ClientError:
                        if proc.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"{chromium} did not start (exit {proc.poll()})")
                        await asyncio.sleep(0.2)
                url = targets[0]["webSocketDebuggerUrl"]
                async with http.ws_connect(url, max_msg_size=0) as ws:
                    return await _visit(_DevTools(ws), pages, html, shots, width, max_height, timeout)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


async def _visit(dt: _DevTools, pages: list[Path], html: Path, shots: Path, width: int,
                 max_height: int, timeout: float) -> list[PageReport]:
    from bs4 import BeautifulSoup
    from tqdm.auto import tqdm

    await dt.call("Page.enable")
    reports = []
    for page in tqdm(pages, desc="pages in chromium", leave=False):
        rel = page.relative_to(html)
        report = PageReport(str(rel))
        refresh = BeautifulSoup(page.read_text(errors="replace"), "html.parser").find(
            "meta", attrs={"http-equiv": REFRESH})
        if refresh is not None:  # checked by static_problems: its target exists
            report.redirect = refresh.get("content", "").partition("url=")[2] or "?"
            reports.append(report)
            continue
        dt.events.clear()
        nav = await dt.call("Page.navigate", url=page.as_uri())
        if nav.get("errorText"):
            report.problems.append(f"did not load: {nav['errorText']}")
            reports.append(report)
            continue
        try:
            await dt.wait_for("Page.loadEventFired", timeout)
        except TimeoutError:
            report.problems.append(f"no load event within {timeout} s")
        res = await dt.call("Runtime.evaluate", expression=_IMAGES_JS, awaitPromise=True,
                            returnByValue=True)
        if "exceptionDetails" in res or not isinstance(res.get("result", {}).get("value"), str):
            report.problems.append(f"could not inspect the page: {res.get('exceptionDetails', res)!s:.300}")
            reports.append(report)
            continue
        seen = json.loads(res["result"]["value"])
        report.title = seen["title"]
        report.wide_code = seen["wide"]
        if seen["text"] == 0:
            report.problems.append("the page shows no text")
        for img in seen["images"]:
            (nw, nh), (sw, sh) = img["natural"], img["shown"]
            report.images.append((img["src"], nw, nh, sw, sh))
            if min(nw, nh) == 0:
                report.problems.append(f"image {img['src']!r} did not decode (natural size {nw}×{nh})")
            elif min(sw, sh) == 0 and img["visible"]:  # a closed menu's icons have no size
                report.problems.append(f"image {img['src']!r} is laid out with zero size")
        height = min(int(seen["height"]), max_height)
        shot = await dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                             clip={"x": 0, "y": 0, "width": width, "height": height, "scale": 1})
        report.screenshot = shots / rel.with_suffix(".png")
        report.screenshot.parent.mkdir(parents=True, exist_ok=True)
        tmp = report.screenshot.with_suffix(".png.part")
        tmp.write_bytes(base64.b64decode(shot["data"]))
        tmp.replace(report.screenshot)
        reports.append(report)
    return reports


def browse(html: Path, screenshots: Path | None = None, chromium: str | None = None, width: int = 1280,
           max_height: int = 6000, timeout: float = 30.0) -> list[PageReport]:
    """Open every page of the build in headless Chromium, check its images, screenshot it.

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
        Seconds to wait for the browser to start and for each page to load.

    Returns
    -------
    list of PageReport
        One per page, in :func:`html_pages` order.
    """
    html = Path(html).resolve()
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium found: install Debian's package (apt-get install chromium) "
                                "or set CHROMIUM to the browser's path")
    shots = Path(screenshots) if screenshots else html.parent / "screenshots"
    return asyncio.run(_browse(chromium, html_pages(html), html, shots, width, max_height, timeout))


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
