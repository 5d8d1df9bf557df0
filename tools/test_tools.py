"""Tests of the book's check scripts, on tiny sites and notebooks written here."""

import json
from pathlib import Path

import check_notebooks
import check_offline


def write_site(root: Path, page: str, css: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(page, encoding="utf-8")
    (root / "_static").mkdir(exist_ok=True)
    (root / "_static" / "site.css").write_text(css, encoding="utf-8")
    return root


LOCAL_PAGE = """<html><head>
<script src="_static/npm/require.js"></script>
<link rel="stylesheet" href="_static/site.css">
<link rel="canonical" href="https://example.org/book/">
<script type="application/vnd.jupyter.widget-state+json">{"url": "https://example.org/x"}</script>
<style>body { background: url("_static/bg.png"); }</style>
</head><body>
<a href="https://arxiv.org/abs/2309.14316">a paper</a>
<img src="data:image/png;base64,AAAA" srcset="a.png 1x, b.png 2x">
</body></html>
"""

REMOTE_PAGE = """<html><head>
<script src="https://cdn.example.com/x.js"></script>
<link rel="stylesheet" href="//cdn.example.com/x.css">
<script data-jupyter-widgets-cdn="https://cdn.example.com/npm/" src="local.js"></script>
<script>const URL = "https://unpkg.example.com/thebe.js";</script>
<style>
@import url("https://fonts.example.com/css");
</style>
</head><body>
<img src="local.png" srcset="local.png 1x, http://img.example.com/b.png 2x">
<iframe src="https://video.example.com/embed"></iframe>
<div style="background-image: url(https://img.example.com/bg.png)"></div>
</body></html>
"""


def test_local_site_passes(tmp_path: Path) -> None:
    site = write_site(tmp_path / "html", LOCAL_PAGE, "/* url(https://x.example.com/a) */ a{}")
    assert check_offline.check_site(site) == []
    assert check_offline.main([str(site)]) == 0


def test_every_kind_of_remote_load_is_reported_with_its_line(tmp_path: Path) -> None:
    css = "a {}\n@font-face { src: url('https://fonts.example.com/f.woff2'); }\n"
    site = write_site(tmp_path / "html", REMOTE_PAGE, css)
    found = {(o.file.name, o.line, o.url) for o in check_offline.check_site(site)}
    assert found == {
        ("index.html", 2, "https://cdn.example.com/x.js"),
        ("index.html", 3, "//cdn.example.com/x.css"),
        ("index.html", 4, "https://cdn.example.com/npm/"),
        ("index.html", 5, "https://unpkg.example.com/thebe.js"),
        ("index.html", 7, "https://fonts.example.com/css"),
        ("index.html", 10, "http://img.example.com/b.png"),
        ("index.html", 11, "https://video.example.com/embed"),
        ("index.html", 12, "https://img.example.com/bg.png"),
        ("site.css", 2, "https://fonts.example.com/f.woff2"),
    }
    assert check_offline.main([str(site)]) == 1


def test_missing_site_is_a_usage_error(tmp_path: Path) -> None:
    assert check_offline.main([str(tmp_path / "nothing")]) == 2


def notebook(outputs: list[dict], execution_count: int | None, widgets: bool) -> dict:
    metadata: dict = {"kernelspec": {"name": "python3"}}
    if widgets:
        metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    return {
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": "# Title"},
            {"cell_type": "code", "metadata": {}, "source": "1 + 1",
             "outputs": outputs, "execution_count": execution_count},
        ],
        "metadata": metadata, "nbformat": 4, "nbformat_minor": 5,
    }


def test_clean_notebook_passes(tmp_path: Path) -> None:
    (tmp_path / "a.ipynb").write_text(json.dumps(notebook([], None, False)), encoding="utf-8")
    assert check_notebooks.main([str(tmp_path)]) == 0


def test_outputs_are_reported_and_stripped(tmp_path: Path) -> None:
    result = {"output_type": "execute_result", "data": {"text/plain": "2"}, "metadata": {},
              "execution_count": 1}
    path = tmp_path / "chapter.ipynb"
    path.write_text(json.dumps(notebook([result], 1, True)), encoding="utf-8")
    problems = check_notebooks.stored_outputs(json.loads(path.read_text(encoding="utf-8")))
    assert problems == ["cell 2: 1 output(s)", "cell 2: execution_count 1",
                        "metadata.widgets: saved widget state"]
    assert check_notebooks.main([str(path)]) == 1

    assert check_notebooks.main(["--strip", str(path)]) == 0
    stripped = json.loads(path.read_text(encoding="utf-8"))
    assert stripped == notebook([], None, False)
    assert check_notebooks.main([str(path)]) == 0


def test_invalid_notebook_names_the_file_and_line(tmp_path: Path, capsys) -> None:
    path = tmp_path / "broken.ipynb"
    path.write_text('{\n  "cells": [,]\n}', encoding="utf-8")
    assert check_notebooks.main([str(path)]) == 1
    assert f"{path}:2: not valid notebook JSON" in capsys.readouterr().out
