"""Files on disk: one way to write them safely and one way to read them with clear errors.

Everything the library saves (models, adapters, resume checkpoints, data files) goes
through this module, so there is one answer to "what if the process dies mid-write?":

- a *file* is written to a temporary name beside it, ``fsync``'d, renamed over the old one
  (a rename is atomic within one file system) and its folder ``fsync``'d, so a crash
  leaves either the old file or the new one (``write_atomic``);
- a *folder* of files is written whole to ``NAME.tmp/``, then swapped in with two renames
  through ``NAME.old/``; ``recover_directory`` puts an interrupted swap right
  (``write_directory``).

Reading: JSON and JSONL with errors that name the file, line and column; safetensors
files checked key by key and shape by shape; one validator for typed fields of a config.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors
import torch
from safetensors.torch import load_file

PARTIAL_SUFFIX = ".tmp"  # a folder being written
PREVIOUS_SUFFIX = ".old"  # the folder being replaced


# ----------------------------------------------------------------------------- writing


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable. POSIX only: Windows cannot."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` and wait until the disk has it (``fsync``), not just the OS cache."""
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _new_file_mode() -> int:
    """The permissions ``open()`` gives a new file: ``0o666`` less the process's umask."""
    umask = os.umask(0)  # the only way to read it is to set it, so set it straight back
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; it becomes ``path`` only when complete.

    For writers that open the file themselves (``gguf.GGUFWriter`` streams hundreds of
    megabytes, too many to hold as one ``bytes``): write to the path this yields; when
    the ``with`` block ends normally the file is ``fsync``'d and renamed over ``path``
    (a rename is atomic within one file system, hence "beside"); when it raises, the
    temporary file is deleted and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _new_file_mode())  # mkstemp's 0o600 would hide the file from others
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one
    (``atomic_path``)."""
    with atomic_path(path) as tmp:
        _write_synced(tmp, data)  # synced already, so atomic_path's own fsync finds nothing


def json_bytes(obj: Any, indent: int | None = 2, sort_keys: bool = False) -> bytes:
    """``obj`` as UTF-8 JSON text ending in a newline; Chinese stays readable (no ``\\u``)."""
    return (json.dumps(obj, ensure_ascii=False, indent=indent, sort_keys=sort_keys)
            + "\n").encode("utf-8")


def jsonl_bytes(rows: Iterable[Any], sort_keys: bool = False) -> bytes:
    """One JSON value per line, UTF-8, ``"\\n"`` newlines: byte-stable output."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=sort_keys) + "\n" for row in rows]
    return "".join(lines).encode("utf-8")


def recover_directory(target: str | Path) -> Path | None:
    """Tidy what an interrupted ``write_directory`` left beside ``target``; return it if any.

    ``NAME.tmp/`` is always incomplete or superseded, so it goes; ``NAME.old/`` whose
    replacement never got renamed into place becomes ``NAME/`` again.
    """
    target = Path(target)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if partial.exists():
        shutil.rmtree(partial)
    if previous.exists():
        if target.exists():
            shutil.rmtree(previous)
        else:
            os.replace(previous, target)
    return target if target.exists() else None


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one (instant, no space), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_directory(
    target: str | Path, files: Mapping[str, bytes], keep_others: bool = False
) -> Path:
    """Make ``target`` a folder holding exactly ``files`` (name -> bytes), atomically.

    1. Write every file into ``NAME.tmp/`` and ``fsync`` it (and the folder). With
       ``keep_others``, entries of the old folder that ``files`` does not replace (an
       adapter, logs) are linked or copied in too: the old folder is never touched.
    2. Rename the old ``NAME/`` to ``NAME.old/``.
    3. Rename ``NAME.tmp/`` to ``NAME/`` and ``fsync`` the parent.
    4. Delete ``NAME.old/``.

    ``NAME/`` only ever names a complete folder. Killed during 1, the old one is
    untouched; between 2 and 3 only ``NAME.old/`` is left and ``recover_directory``
    renames it back; after 3 the new one is in place. (POSIX cannot rename a folder over
    a non-empty one, hence the two renames.)
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a directory")
    target.parent.mkdir(parents=True, exist_ok=True)
    old = recover_directory(target)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    partial.mkdir()
    try:
        for name, data in files.items():
            _write_synced(partial / name, data)
        if keep_others and old is not None:
            for entry in old.iterdir():
                if entry.name in files:
                    continue
                if entry.is_dir():
                    shutil.copytree(entry, partial / entry.name, copy_function=_link_or_copy)
                else:
                    _link_or_copy(str(entry), str(partial / entry.name))
        fsync_dir(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    previous = target.with_name(target.name + PREVIOUS_SUFFIX)
    if old is not None:
        os.replace(old, previous)
    os.replace(partial, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(previous)
    return target


# ----------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    """A UTF-8 text file's contents; a missing file or bad bytes raise an error naming it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err})") from None


def _invalid_json(path: Path, line: int, err: json.JSONDecodeError) -> ValueError:
    return ValueError(f"{path}: line {line}, column {err.colno}: invalid JSON ({err.msg})")


def read_json(path: str | Path) -> Any:
    """A JSON file's value; a missing or malformed file raises an error naming it."""
    path = Path(path)
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise _invalid_json(path, err.lineno, err) from None


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file whose top level must be an object (a config file)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return data


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line of a JSON Lines file."""
    path = Path(path)
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise _invalid_json(path, number, err) from None
        yield number, value


_REQUIRED = object()
_KIND_NAMES = {int: "an int", float: "a number", bool: "a boolean"}


def checked_field(
    data: Mapping[str, Any], name: str, kind: type, path: str | Path,
    default: Any = _REQUIRED, minimum: float | None = None,
) -> Any:
    """``data[name]`` checked to be an ``int``, a finite number (``float``) or a ``bool``.

    JSON has no separate integer type for Python to trust: ``true`` is not an int here,
    ``2`` is a valid number (returned as ``2.0``). Errors name the file and the field.
    """
    if name not in data:
        if default is _REQUIRED:
            raise ValueError(f"{path}: missing field '{name}'")
        return default
    value = data[name]
    is_bool = isinstance(value, bool)
    ok = is_bool if kind is bool else (
        not is_bool and isinstance(value, int | float if kind is float else kind))
    if not ok:
        raise ValueError(f"{path}: field '{name}' must be {_KIND_NAMES[kind]}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"{path}: field '{name}' must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{path}: field '{name}' must be >= {minimum}, got {value!r}")
    return float(value) if kind is float else value


def _preview(keys: list[str], limit: int = 5) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{keys[:limit]}{more}"


def load_checked_tensors(
    path: str | Path, expected: Mapping[str, tuple[int, ...] | None]
) -> dict[str, torch.Tensor]:
    """Load a safetensors file whose keys and shapes must be exactly ``expected``.

    Errors name the file and the offending keys and shapes, so a file made for another
    model is refused before any weight is touched. A shape of ``None`` is one only the
    file can tell (a 4-bit weight's statistics depend on its block size, which is stored
    beside them): the caller checks it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        tensors = load_file(path)
    except (safetensors.SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: keys do not match the model: missing {_preview(missing)}, "
            f"unexpected {_preview(unexpected)}"
        )
    for key, shape in expected.items():
        if shape is not None and tuple(tensors[key].shape) != tuple(shape):
            raise ValueError(
                f"{path}: '{key}' has shape {list(tensors[key].shape)} but the model "
                f"expects {list(shape)} (a file made for a model of another size?)"
            )
    # `load_file` maps the file as one storage that every tensor is a view of, so one
    # tensor kept would keep the whole file resident: a model whose linear weights are
    # then replaced by 4-bit ones (QLoRA) would still hold them all. A copy each owns its
    # memory, and the mapping goes when `tensors` does.
    return {key: tensor.clone() for key, tensor in tensors.items()}
