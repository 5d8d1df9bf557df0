"""Fail if the built book would load anything from another host.

Usage: python tools/check_offline.py _build/html

A page "loads" a URL through a script src, a stylesheet or other <link>, an image, an iframe,
media, an inline script that names a URL for later loading, or a CSS url(...) / @import (in
<style> blocks, style="..." attributes and every .css file of the site). Each of those must
be local. Plain <a href> links (to papers, say) are only followed when the reader clicks, so
they may point anywhere. Standard library only, so it runs without the book's venv.
"""

import re
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

# http://host, https://host and protocol-relative //host all leave this site.
REMOTE = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]*)\1\s*\)""", re.IGNORECASE)
CSS_IMPORT = re.compile(r"""@import\s+(?:url\(\s*)?(['"]?)([^'")\s;]+)""", re.IGNORECASE)
CSS_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)
JS_URL_LITERAL = re.compile(r"""["'`]((?:https?:)?//[^"'`\s]+)""", re.IGNORECASE)
# Attributes that make the browser fetch something, by tag ("*" = any tag but <a>).
LOADING_ATTRS: dict[str, tuple[str, ...]] = {
    "*": ("src", "srcset", "poster", "background"),
    "link": ("href", "imagesrcset"),
    "object": ("data",),
    "image": ("href", "xlink:href"),
    "use": ("href", "xlink:href"),
    "script": ("data-jupyter-widgets-cdn",),
}
# <link rel=...> values that name the page rather than load anything.
NON_LOADING_RELS = {"canonical", "author", "license", "help", "search", "index", "next", "prev"}
# Inline <script> types that run as code (widget state and config blobs are data, not code).
JS_TYPES = {"", "text/javascript", "module", "application/javascript"}


@dataclass
class Offender:
    file: Path
    line: int
    what: str
    url: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what} loads {self.url}"


def is_remote(url: str) -> bool:
    return bool(REMOTE.match(url))


def srcset_urls(value: str) -> list[str]:
    """'a.png 1x, b.png 2x' -> ['a.png', 'b.png']."""
    return [part.split()[0] for part in value.split(",") if part.strip()]


def css_offenders(css: str, file: Path, first_line: int, what: str) -> list[Offender]:
    """Remote url(...) and @import targets in a piece of CSS (comments ignored)."""
    css = CSS_COMMENT.sub(lambda m: "\n" * m.group(0).count("\n"), css)
    found = []
    for pattern, kind in ((CSS_URL, "url()"), (CSS_IMPORT, "@import")):
        for match in pattern.finditer(css):
            url = match.group(2)
            if is_remote(url):
                line = first_line + css.count("\n", 0, match.start())
                found.append(Offender(file, line, f"{what} {kind}", url))
    return found


class PageChecker(HTMLParser):
    """Collects the remote loads of one HTML page."""

    def __init__(self, file: Path) -> None:
        super().__init__(convert_charrefs=True)
        self.file = file
        self.offenders: list[Offender] = []
        self._inline: str | None = None  # "style" or "script" while inside one that we check
        self._inline_line = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        line = self.getpos()[0]
        values = {name: value or "" for name, value in attrs}
        if tag != "a":
            names = LOADING_ATTRS["*"] + LOADING_ATTRS.get(tag, ())
            if tag == "link" and set(values.get("rel", "").lower().split()) <= NON_LOADING_RELS:
                names = LOADING_ATTRS["*"]
            for name in names:
                if name not in values:
                    continue
                urls = srcset_urls(values[name]) if name.endswith("srcset") else [values[name]]
                what = f"<{tag} {name}>"
                self.offenders += [Offender(self.file, line, what, u) for u in urls if is_remote(u)]
        if "style" in values:
            self.offenders += css_offenders(values["style"], self.file, line, f"<{tag} style>")
        if tag == "style" or (tag == "script" and values.get("type", "").lower() in JS_TYPES):
            self._inline, self._inline_line = tag, line

    def handle_endtag(self, tag: str) -> None:
        if tag == self._inline:
            self._inline = None

    def handle_data(self, data: str) -> None:
        if self._inline == "style":
            self.offenders += css_offenders(data, self.file, self._inline_line, "<style>")
        elif self._inline == "script":
            for match in JS_URL_LITERAL.finditer(data):
                line = self._inline_line + data.count("\n", 0, match.start())
                self.offenders.append(Offender(self.file, line, "inline <script>", match.group(1)))


def check_site(root: Path) -> list[Offender]:
    """Every remote load in the HTML pages and CSS files under `root`."""
    offenders: list[Offender] = []
    for page in sorted(root.rglob("*.html")):
        checker = PageChecker(page)
        checker.feed(page.read_text(encoding="utf-8", errors="replace"))
        checker.close()
        offenders += checker.offenders
    for sheet in sorted(root.rglob("*.css")):
        offenders += css_offenders(
            sheet.read_text(encoding="utf-8", errors="replace"), sheet, 1, "stylesheet"
        )
    return offenders


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/check_offline.py BUILT_HTML_DIR", file=sys.stderr)
        return 2
    root = Path(argv[0])
    if not (root / "index.html").is_file():
        print(f"check_offline: {root}/index.html not found: build the book first", file=sys.stderr)
        return 2
    offenders = check_site(root)
    for offender in offenders:
        print(offender)
    pages = sum(1 for _ in root.rglob("*.html"))
    if offenders:
        print(f"check_offline: {len(offenders)} remote load(s) in {root}", file=sys.stderr)
        return 1
    print(f"check_offline: {pages} pages under {root} load nothing from another host")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
