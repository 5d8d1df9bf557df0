"""Sphinx extension: the built book serves its own JavaScript, so a page loads nothing from
another host.

By default Sphinx loads MathJax, and myst-nb loads RequireJS and the ipywidgets HTML manager,
from public CDNs. `npm ci --ignore-scripts` installs the same files into `node_modules/`
(versions pinned by package.json and package-lock.json). This extension points Sphinx and
myst-nb at `_static/npm/...` and copies those files there after the build, so a reader
offline still sees formulas and the saved widgets.
"""

import shutil
from pathlib import Path

from sphinx.application import Sphinx
from sphinx.config import Config
from sphinx.errors import ExtensionError

# Where each asset comes from (relative to the book root) -> where it goes (under _static/).
VENDOR_ASSETS: dict[str, str] = {
    "node_modules/mathjax/es5": "npm/mathjax",
    "node_modules/requirejs/require.js": "npm/require.js",
    "node_modules/@jupyter-widgets/html-manager/dist": "npm/html-manager",
}
MATHJAX_PATH = "npm/mathjax/tex-mml-chtml.js"
IPYWIDGETS_JS: dict[str, dict[str, str]] = {
    "npm/require.js": {},
    # embed-amd.js bundles ipywidgets' own widget modules and finds its fonts next to itself.
    # It would fetch any *other* widget module from this base URL; point it at this site so
    # even a third-party widget never makes it reach another host.
    "npm/html-manager/embed-amd.js": {"data-jupyter-widgets-cdn": "_static/npm/"},
}


def _sources(app: Sphinx) -> dict[Path, str]:
    return {Path(app.confdir) / src: dst for src, dst in VENDOR_ASSETS.items()}


def use_local_assets(app: Sphinx, config: Config) -> None:
    """Check the npm files are there, then make Sphinx and myst-nb load them locally."""
    missing = [str(src) for src in _sources(app) if not src.exists()]
    if missing:
        raise ExtensionError(
            f"offline_assets: missing {', '.join(missing)}; "
            "run `npm ci --ignore-scripts` in the repository root before building the book"
        )
    config.mathjax_path = MATHJAX_PATH
    config.nb_ipywidgets_js = IPYWIDGETS_JS


def copy_local_assets(app: Sphinx, exception: Exception | None) -> None:
    """Copy the npm files into the built site's _static/npm/ (HTML builds only)."""
    if exception is not None or app.builder.format != "html":
        return
    static = Path(app.outdir) / "_static"
    for src, dst in _sources(app).items():
        target = static / dst
        if src.is_dir():
            shutil.copytree(src, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def setup(app: Sphinx) -> dict[str, object]:
    app.connect("config-inited", use_local_assets)
    app.connect("build-finished", copy_local_assets)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
