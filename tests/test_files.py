"""files.py: atomic writes that survive a crash at any step, and errors that name the place."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file

from tinyllm_lib import files
from tinyllm_lib.files import (
    checked_field,
    jsonl_bytes,
    load_checked_tensors,
    read_json_object,
    read_jsonl,
    recover_directory,
    write_atomic,
    write_directory,
)


def test_write_atomic_replaces_whole_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_atomic(path, b"old")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_write_atomic_gives_the_permissions_open_gives(tmp_path):
    """Not mkstemp's 0o600: a model or dataset written here is readable as any file is."""
    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "atomic", b"x")
        (tmp_path / "plain").write_bytes(b"x")
        write_directory(tmp_path / "folder", {"f": b"x"})
    finally:
        os.umask(previous)
    modes = {name: os.stat(tmp_path / name).st_mode & 0o777
             for name in ("atomic", "plain", "folder/f")}
    assert modes == {"atomic": 0o644, "plain": 0o644, "folder/f": 0o644}


def test_a_crash_in_write_atomic_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    write_atomic(path, b"old")

    def crash(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(files, "_write_synced", crash)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_write_directory_swaps_whole_and_keeps_others_on_request(tmp_path):
    target = tmp_path / "m"
    write_directory(target, {"a": b"1", "b": b"2"})
    (target / "adapter").mkdir()
    (target / "adapter" / "w").write_bytes(b"keep")
    write_directory(target, {"a": b"3"}, keep_others=True)
    assert sorted(p.name for p in target.iterdir()) == ["a", "adapter", "b"]
    assert (target / "a").read_bytes() == b"3"
    assert (target / "adapter" / "w").read_bytes() == b"keep"
    write_directory(target, {"a": b"4"})
    assert [p.name for p in target.iterdir()] == ["a"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("crash_at", ["writing", "between the renames"])
def test_a_crash_in_write_directory_leaves_the_old_folder(tmp_path, monkeypatch, crash_at):
    target = tmp_path / "m"
    write_directory(target, {"a": b"old", "notes": b"keep"})
    if crash_at == "writing":
        def crash(path, data):
            raise OSError("simulated crash")
        monkeypatch.setattr(files, "_write_synced", crash)
    else:
        rename = os.replace

        def crash(src, dst):  # the old folder is moved aside, the new one not yet in
            if str(src).endswith(".tmp"):
                raise OSError("simulated crash")
            rename(src, dst)
        monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        write_directory(target, {"a": b"new"}, keep_others=True)
    monkeypatch.undo()
    assert recover_directory(target) == target
    assert (target / "a").read_bytes() == b"old"
    assert (target / "notes").read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_recover_directory_of_nothing_is_none(tmp_path):
    assert recover_directory(tmp_path / "none") is None


def test_json_errors_name_file_line_and_column(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{\n  "a": 1,\n  "b": oops\n}')
    with pytest.raises(ValueError, match=r"c\.json: line 3, column 8: invalid JSON"):
        read_json_object(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        read_json_object(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(ValueError, match="not UTF-8"):
        read_json_object(path)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json_object(tmp_path / "missing.json")


def test_jsonl_round_trip_skips_blank_lines_and_names_bad_ones(tmp_path):
    rows = [{"text": "你好"}, {"text": "b", "n": 2}]
    path = tmp_path / "d.jsonl"
    write_atomic(path, jsonl_bytes(rows) + b"\n")
    assert "你好" in path.read_text(encoding="utf-8")  # UTF-8, not \u escapes
    assert list(read_jsonl(path)) == [(1, rows[0]), (2, rows[1])]
    path.write_text('{"a": 1}\n\n{"a": }\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: line 3, column 7"):
        list(read_jsonl(path))
    path.write_bytes(b'{"a": "\xff"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl: not UTF-8"):
        list(read_jsonl(path))


def test_jsonl_bytes_match_json_dumps():
    rows = [{"b": 1, "a": "中"}]
    expected = json.dumps(rows[0], ensure_ascii=False, sort_keys=True) + "\n"
    assert jsonl_bytes(rows, sort_keys=True) == expected.encode("utf-8")


@pytest.mark.parametrize("data, kind, kwargs, message", [
    ({}, int, {}, "missing field 'x'"),
    ({"x": True}, int, {}, "'x' must be an int, got True"),
    ({"x": 1.5}, int, {}, "'x' must be an int"),
    ({"x": 0}, int, {"minimum": 1}, "'x' must be >= 1, got 0"),
    ({"x": "1"}, float, {}, "'x' must be a number"),
    ({"x": float("inf")}, float, {}, "'x' must be finite"),
    ({"x": 1}, bool, {}, "'x' must be a boolean"),
])
def test_checked_field_names_the_file_and_field(data, kind, kwargs, message):
    with pytest.raises(ValueError, match="cfg.json") as err:
        checked_field(data, "x", kind, "cfg.json", **kwargs)
    assert message in str(err.value)


def test_checked_field_values_and_defaults():
    assert checked_field({"x": 2}, "x", float, "f") == 2.0
    assert isinstance(checked_field({"x": 2}, "x", float, "f"), float)
    assert checked_field({"x": 3}, "x", int, "f", minimum=1) == 3
    assert checked_field({}, "x", bool, "f", default=False) is False


def test_load_checked_tensors_refuses_other_keys_and_shapes(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(2, 3)}, path)
    assert load_checked_tensors(path, {"a": (2, 3)})["a"].shape == (2, 3)
    with pytest.raises(ValueError, match=r"'a' has shape \[2, 3\].*\[3, 2\]"):
        load_checked_tensors(path, {"a": (3, 2)})
    with pytest.raises(ValueError, match=r"missing \['b'\], unexpected \['a'\]"):
        load_checked_tensors(path, {"b": (2, 3)})
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checked_tensors(path, {"a": (2, 3)})
