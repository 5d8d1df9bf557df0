"""Screenshot every chapter of the built book, for a person to look at (not part of CI).

Usage: python tools/screenshot_book.py [BUILT_HTML_DIR] [--out DIR] [--height PX]
(defaults: _build/html, outputs/screenshots, 2000)

Serves the built site on 127.0.0.1 and opens each chapter in headless Chromium with every
other host made unresolvable, so a screenshot shows what a reader sees offline: formulas set
by the local MathJax and widgets drawn by the local widget manager from their saved state.
Needs Debian's Chromium: `apt-get update && apt-get install -y chromium`.
"""

import argparse
import functools
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# Milliseconds of page time Chromium lets scripts run before the shot (MathJax, widgets).
SCRIPT_TIME_BUDGET_MS = 15000


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    sys.exit("screenshot_book: no Chromium found; install it with "
             "`apt-get update && apt-get install -y chromium`")


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Keep the terminal for the screenshot list."""


def chapter_pages(site: Path) -> list[Path]:
    """The chapters' pages (everything the book builds from book/), in file-name order."""
    return sorted((site / "book").rglob("*.html"))


def screenshot(browser: str, url: str, png: Path, height: int) -> bool:
    """One headless Chromium shot of `url`; True if Chromium wrote the file."""
    with tempfile.TemporaryDirectory() as profile:
        command = [
            browser, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--no-first-run", f"--user-data-dir={profile}",
            # Every host but this one fails to resolve, so a page that needs the internet shows it.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--hide-scrollbars", f"--virtual-time-budget={SCRIPT_TIME_BUDGET_MS}",
            f"--window-size=1280,{height}", f"--screenshot={png}", url,
        ]
        png.unlink(missing_ok=True)
        subprocess.run(command, capture_output=True, timeout=120, check=False)
    return png.is_file()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", nargs="?", type=Path, default=Path("_build/html"))
    parser.add_argument("--out", type=Path, default=Path("outputs/screenshots"))
    parser.add_argument("--height", type=int, default=2000, help="window height in pixels")
    args = parser.parse_args()
    pages = chapter_pages(args.site)
    if not pages:
        sys.exit(f"screenshot_book: no pages under {args.site}/book: build the book first")
    browser = find_browser()
    args.out.mkdir(parents=True, exist_ok=True)

    handler = functools.partial(QuietHandler, directory=str(args.site))
    with ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_address[1]
        failed = 0
        for page in pages:
            relative = page.relative_to(args.site).as_posix()
            png = args.out / (page.relative_to(args.site / "book").with_suffix(".png").as_posix()
                              .replace("/", "__"))
            ok = screenshot(browser, f"http://127.0.0.1:{port}/{relative}", png, args.height)
            print(f"{relative} -> {png}" if ok else f"{relative}: Chromium wrote no screenshot")
            failed += not ok
        server.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
