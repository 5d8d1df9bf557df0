"""Fail if a chapter notebook is committed with outputs; `--strip` removes them in place.

Usage: python tools/check_notebooks.py [--strip] [NOTEBOOK_OR_DIR ...]   (default: book/)

The book build and the tests execute every notebook, so stored outputs only add noise to
diffs and can show results the current code no longer produces. "Output" here means a code
cell's outputs or execution count, and the notebook's saved widget state (metadata.widgets).
Standard library only, so it runs before any venv exists.
"""

import argparse
import json
import sys
from pathlib import Path


def find_notebooks(paths: list[Path]) -> list[Path]:
    """The notebooks named, or found under the folders named (checkpoints skipped)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts]
        elif path.suffix == ".ipynb" and path.is_file():
            found.append(path)
        else:
            raise SystemExit(f"check_notebooks: {path} is neither a folder nor a notebook")
    return sorted(found)


def stored_outputs(notebook: dict) -> list[str]:
    """One line per stored output in a parsed notebook, naming the cell (1-based)."""
    problems = []
    for number, cell in enumerate(notebook.get("cells", []), start=1):
        if cell.get("cell_type") != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {number}: {len(cell['outputs'])} output(s)")
        if cell.get("execution_count") is not None:
            problems.append(f"cell {number}: execution_count {cell['execution_count']}")
    if "widgets" in notebook.get("metadata", {}):
        problems.append("metadata.widgets: saved widget state")
    return problems


def strip_outputs(notebook: dict) -> None:
    """Remove what `stored_outputs` reports, in place."""
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    notebook.get("metadata", {}).pop("widgets", None)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("book")])
    parser.add_argument("--strip", action="store_true", help="remove the outputs in place")
    args = parser.parse_args(argv)

    notebooks = find_notebooks(args.paths)
    offenders = 0
    for path in notebooks:
        try:
            notebook = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            print(f"{path}:{error.lineno}: not valid notebook JSON: {error.msg}")
            offenders += 1
            continue
        problems = stored_outputs(notebook)
        if not problems:
            continue
        if args.strip:
            strip_outputs(notebook)
            # nbformat's own layout (one-space indent, sorted keys), so diffs stay small.
            text = json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False)
            path.write_text(text + "\n", encoding="utf-8")
            print(f"{path}: stripped {len(problems)} stored output(s)")
        else:
            offenders += 1
            print(f"{path}: committed with outputs ({'; '.join(problems)})")
    if offenders:
        print(
            f"check_notebooks: {offenders} notebook(s) need fixing; "
            "`python tools/check_notebooks.py --strip` removes stored outputs",
            file=sys.stderr,
        )
        return 1
    print(f"check_notebooks: {len(notebooks)} notebook(s), none with stored outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
