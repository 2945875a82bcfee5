"""Check that the published book draws chapter 9's widget explorer offline, without a kernel.

Usage (after `jupyter-book build`; needs Debian's `chromium` package, no Python dependency beyond the stdlib):

    .venv/bin/python book/check_widget.py [--html _build/html] [--screenshot _build/widget_explorer.png]

1. Static checks of the built HTML: the page of notebook 09 carries the saved widget state and a widget view, and
   loads the vendored `require.js`, `widgets_assets.js` and `embed-amd.js` (book/widgets_js/) from the book
   itself, in this order, once each; no page loads them twice, and pages without widget state do not load them.
2. The built folder is served on 127.0.0.1 (a random free port) and the page is loaded in headless Chromium with
   its network limited to that server. The served copy of the page gets a small test script (the build is not
   changed) that waits for the widgets to draw, then picks another user and another domain in the explorer's
   dropdowns, as a reader would, and writes what became visible into the page. Chromium's `--dump-dom` returns
   the rendered DOM, which must contain drawn widgets (elements, not the JSON state) and show that the dropdowns
   switch the precomputed views. Every request the page made is logged; one that fails (404) fails the check.
3. A screenshot of the explorer, drawn offline, is written to `--screenshot`.

Exits 0 when everything holds, 1 with a message naming what failed otherwise, 2 when Chromium is missing.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from html.parser import HTMLParser
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

PAGE = "notebooks/10_similar_users.html"
VIEW_CLASS = "micrec-explorer-view"  # the class of every precomputed view of the explorer (notebook 09)
VENDORED = ("require.js", "widgets_assets.js", "embed-amd.js")  # in this order: RequireJS first
TEST_FLAG = "micrec-widget-test"
RESULT_ID = "micrec-widget-test-result"

# Runs in the served copy of the page only. Polls until the widget manager has drawn the explorer, then drives the
# dropdowns like a reader and writes a JSON report into <pre id=RESULT_ID>.
TEST_SCRIPT = r"""
<script>
(function () {
  const VIEW = "%(view)s", OUT = "%(out)s", SHOT = location.search.includes("screenshot");
  const report = {errors: [], steps: {}};
  const ours = (text) => /(require|widgets_assets|embed-amd)\.js/.test(String(text || ""));
  window.addEventListener("error", (e) => { if (ours(e.filename)) report.errors.push(String(e.message)); });
  window.addEventListener("unhandledrejection", (e) => {
    const reason = e.reason || {};
    if (ours(reason.stack)) report.errors.push("unhandled rejection: " + (reason.message || reason));
  });
  const visible = () => Array.from(document.querySelectorAll("." + VIEW))
      .filter((el) => el.offsetParent !== null)
      .map((el) => (el.firstElementChild || el).textContent.trim().slice(0, 100));
  const pick = (select, index) => {
    select.selectedIndex = index;
    select.dispatchEvent(new Event("change", {bubbles: true}));
  };
  const selects = () => Array.from(document.querySelectorAll(".jupyter-widgets select"))
      .filter((el) => el.offsetParent !== null);
  const finish = () => {
    const pre = document.createElement("pre");
    pre.id = OUT;
    pre.textContent = JSON.stringify(report);
    document.body.appendChild(pre);
    const explorer = selects().length ? selects()[0].closest(".widget-vbox") : null;
    if (SHOT && explorer) {  // headless screenshots of a scrolled page come out blank: move the explorer to the top
      Array.from(document.body.children).forEach((el) => { el.style.display = "none"; });
      const holder = document.createElement("div");
      holder.style.padding = "12px";
      holder.appendChild(explorer);
      document.body.prepend(holder);
      window.scrollTo(0, 0);
    }
  };
  const steps = [
    () => { report.steps.initial = visible(); report.steps.selects = selects().length;
            pick(selects()[1], 1); },
    () => { report.steps.after_user = visible(); pick(selects()[0], 1); },
    () => { report.steps.after_domain = visible(); pick(selects()[0], 0); },
    () => { report.steps.back = visible(); finish(); },
  ];
  let waited = 0;
  const wait = () => {
    if (visible().length > 0 && selects().length >= 2) {
      report.render_ms = waited;
      steps.forEach((step, k) => setTimeout(() => {
        try { step(); } catch (e) { report.errors.push("step " + k + ": " + e); if (k < 3) finish(); }
      }, 300 * (k + 1)));
    } else if ((waited += 100) > %(limit_ms)d) {
      report.errors.push("no explorer drawn after " + waited + " ms"); finish();
    } else setTimeout(wait, 100);
  };
  window.addEventListener("load", () => setTimeout(wait, 100));
})();
</script>
"""


class _Elements(HTMLParser):
    """Start tags of a page with their classes; text inside <script> is data, so JSON state never counts."""

    def __init__(self) -> None:
        super().__init__()
        self.classes: list[str] = []
        self.scripts: list[dict[str, str | None]] = []
        self._in_result = False
        self.result_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("class"):
            self.classes.append(values["class"] or "")
        if tag == "script":
            self.scripts.append(values)
        if values.get("id") == RESULT_ID:
            self._in_result = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_result = False

    def handle_data(self, data: str) -> None:
        if self._in_result:
            self.result_text += data


def parse(text: str) -> _Elements:
    """The parsed elements of an HTML document."""
    parser = _Elements()
    parser.feed(text)
    return parser


def _local_name(src: str) -> str:
    """The file name of a script URL without query."""
    return urlsplit(src).path.rsplit("/", 1)[-1]


def static_checks(html_dir: Path) -> list[str]:
    """Problems in the built HTML itself (see the module docstring, step 1)."""
    problems = []
    page = html_dir / PAGE
    if not page.is_file():
        return [f"{page} not found: build the book first (jupyter-book build .)"]
    for name in VENDORED:
        if not (html_dir / "_static" / name).is_file():
            problems.append(f"_static/{name} missing from the build: is book/widgets_js in html_static_path?")
    for path in sorted(html_dir.rglob("*.html")):
        doc = parse(path.read_text(encoding="utf-8"))
        sources = [_local_name(s.get("src") or "") for s in doc.scripts]
        has_state = any(s.get("type") == "application/vnd.jupyter.widget-state+json" for s in doc.scripts)
        loads = [sources.count(name) for name in VENDORED]
        rel = path.relative_to(html_dir).as_posix()
        if any(n > 1 for n in loads):
            counts = dict(zip(VENDORED, loads, strict=True))
            problems.append(f"{rel} loads the widget JavaScript more than once {counts}: "
                            "a root _static/ folder makes Jupyter Book add every static .js to every page")
        if not has_state and any(loads):
            problems.append(f"{rel} has no widget state but loads the widget JavaScript")
        if has_state:
            remote = [s.get("src") for s in doc.scripts if _local_name(s.get("src") or "") in VENDORED
                      and "://" in (s.get("src") or "")]
            if remote:
                problems.append(f"{rel} loads the widget JavaScript from the network: {remote}")
            order = [sources.index(name) for name in VENDORED if name in sources]
            if loads != [1] * len(VENDORED) or order != sorted(order):
                problems.append(f"{rel} has widget state but does not load {' then '.join(VENDORED)} once each")
    doc = parse(page.read_text(encoding="utf-8"))
    types = [s.get("type") for s in doc.scripts]
    if "application/vnd.jupyter.widget-state+json" not in types:
        problems.append(f"{PAGE} has no saved widget state: was notebook 09 executed with papermill?")
    if "application/vnd.jupyter.widget-view+json" not in types:
        problems.append(f"{PAGE} has no widget view to draw")
    return problems


class _Handler(SimpleHTTPRequestHandler):
    """Serves the built book, logs every request, and adds the test script to the page when asked."""

    log: list[tuple[str, int]]

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/" + PAGE and TEST_FLAG in parts.query:
            body = (Path(self.directory) / PAGE).read_text(encoding="utf-8")
            script = TEST_SCRIPT % {"view": VIEW_CLASS, "out": RESULT_ID, "limit_ms": 12000}  # < --virtual-time-budget
            data = body.replace("</body>", script + "</body>").encode("utf-8")
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log.append((self.path, int(code) if str(code).isdigit() else 0))

    def log_message(self, format: str, *args: object) -> None:  # http.server's signature
        pass


def find_chromium(explicit: str | None) -> str | None:
    """The Chromium binary: --chromium, $CHROMIUM, or chromium / chromium-browser / google-chrome on PATH."""
    for candidate in (explicit, os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def chromium(binary: str, url: str, port: int, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run headless Chromium on `url`, allowed to reach 127.0.0.1:port only."""
    with tempfile.TemporaryDirectory(prefix="micrec-chromium-") as profile:
        command = [
            binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--virtual-time-budget=15000",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--enable-logging=stderr", "--v=0", *extra, url,
        ]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def main(argv: list[str] | None = None) -> int:
    """Run the checks; 0 on success, 1 on a failed check, 2 when Chromium is missing."""
    here = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--html", type=Path, default=here / "_build" / "html", help="the built book")
    parser.add_argument("--screenshot", type=Path, default=here / "_build" / "widget_explorer.png")
    parser.add_argument("--chromium", help="Chromium binary (default: chromium on PATH, or $CHROMIUM)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per Chromium run")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    html_dir = args.html.resolve()

    problems = static_checks(html_dir)
    if problems:
        print("FAIL (built HTML):\n  " + "\n  ".join(problems))
        return 1
    print(f"built HTML: {PAGE} has saved widget state and loads the vendored {', '.join(VENDORED)} once")

    binary = find_chromium(args.chromium)
    if binary is None:
        print("FAIL: no Chromium found; install Debian's `chromium` package or pass --chromium PATH")
        return 2

    handler = functools.partial(_Handler, directory=str(html_dir))
    _Handler.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}/{PAGE}?{TEST_FLAG}=1"
        dump = chromium(binary, url, port, ["--window-size=1280,2000", "--dump-dom"], args.timeout)
        args.screenshot.parent.mkdir(parents=True, exist_ok=True)
        shot = chromium(binary, url + "&screenshot=1", port,
                        ["--window-size=1280,1400", f"--screenshot={args.screenshot}", "--hide-scrollbars"],
                        args.timeout)
    finally:
        server.shutdown()
        server.server_close()

    problems = []
    if dump.returncode != 0 or not dump.stdout.strip():
        problems.append(f"chromium --dump-dom failed (exit {dump.returncode}): {dump.stderr.strip()[-2000:]}")
    doc = parse(dump.stdout)
    widget_elements = [c for c in doc.classes if re.search(r"\bwidget-|\bjupyter-widgets\b", c)]
    views = [c for c in doc.classes if VIEW_CLASS in c.split()]
    if not widget_elements:
        problems.append("the rendered page has no widget element (.jupyter-widgets / .widget-*): the widget "
                        "JavaScript did not draw the saved state")
    if not views:
        problems.append(f"the rendered page has no .{VIEW_CLASS} element: the explorer's views were not drawn")
    try:
        report = json.loads(doc.result_text) if doc.result_text else None
    except json.JSONDecodeError:
        report = None
    if report is None:
        problems.append("the in-page test wrote no report (the page did not finish loading in time?)")
    else:
        steps = report.get("steps", {})
        initial, after_user = steps.get("initial", []), steps.get("after_user", [])
        after_domain, back = steps.get("after_domain", []), steps.get("back", [])
        if report.get("errors"):
            problems.append(f"errors in the widget JavaScript or the test: {report['errors']}")
        if len(initial) != 1:
            problems.append(f"expected exactly one visible explorer view at first, got {initial}")
        elif len(after_user) != 1 or after_user == initial:
            problems.append(f"picking another user did not switch the view: {initial} -> {after_user}")
        elif len(after_domain) != 1 or after_domain[0].split(":")[0] == initial[0].split(":")[0]:
            problems.append(f"picking another domain did not switch the view: {after_user} -> {after_domain}")
        elif back != after_user:
            problems.append(f"going back to the first domain did not restore its view: {after_user} -> {back}")
        else:
            print(f"explorer drawn in {report.get('render_ms')} ms of page time; dropdowns switch views offline:")
            for step in ("initial", "after_user", "after_domain"):
                print(f"  {step:>12}: {steps[step][0]}")
    served = sorted({path for path, _ in _Handler.log})
    failed = sorted({f"{path} ({code})" for path, code in _Handler.log if code >= 400 and path != "/favicon.ico"})
    if failed:
        problems.append(f"requests that failed: {failed}")
    missing = [name for name in VENDORED if not any(_local_name(p) == name for p in served)]
    if missing:
        problems.append(f"the page never requested {missing} from the local server")
    console = [line for line in dump.stderr.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    widget_errors = [line for line in console if any(f"/_static/{name}" in line for name in VENDORED)]
    if widget_errors:
        problems.append("errors in the widget JavaScript:\n    " + "\n    ".join(widget_errors[:10]))
    if len(console) > len(widget_errors):
        print("other console errors on the page (not the widgets'; informational):\n  "
              + "\n  ".join(line for line in console if line not in widget_errors))
    if shot.returncode != 0 or not args.screenshot.is_file():
        problems.append(f"chromium --screenshot failed (exit {shot.returncode}): {shot.stderr.strip()[-2000:]}")
    else:
        print(f"screenshot: {args.screenshot}")
    print(f"{len(served)} distinct local requests, none failed" if not failed else "")
    if problems:
        print("FAIL:\n  " + "\n  ".join(problems))
        return 1
    print(f"OK: the widget explorer renders offline, without a kernel ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
