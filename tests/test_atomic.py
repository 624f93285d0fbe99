"""netllm.atomic: a folder written through it appears whole, readable by all, or not at all."""

from __future__ import annotations

import stat

import pytest
import torch
from safetensors.torch import save_file

from netllm.atomic import write_folder_atomically


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _write(tag: str):
    def write(folder):
        save_file({"w": torch.zeros(3)}, str(folder / "w.safetensors"))  # safetensors writes owner-only files
        (folder / "tag.txt").write_text(tag)
    return write


def test_folder_replaced_whole_and_shared(tmp_path):
    out = tmp_path / "ckpt"
    write_folder_atomically(out, _write("one"))
    write_folder_atomically(out, _write("two"))
    assert (out / "tag.txt").read_text() == "two"
    assert _mode(out) == 0o755 and {_mode(f) for f in out.iterdir()} == {0o644}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging or old copies left behind


def test_failed_write_keeps_the_previous_folder(tmp_path):
    out = tmp_path / "ckpt"
    write_folder_atomically(out, _write("one"))

    def crash(folder):
        (folder / "tag.txt").write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        write_folder_atomically(out, crash)
    assert (out / "tag.txt").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_keep_existing_lets_the_first_writer_win(tmp_path):
    out = tmp_path / "cache"
    write_folder_atomically(out, _write("first"), keep_existing=True)
    write_folder_atomically(out, _write("second"), keep_existing=True)
    assert (out / "tag.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]


def test_replacing_swaps_in_one_step_where_the_kernel_can(tmp_path: Path) -> None:
    from netllm.atomic import _exchange

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "which").write_text("a")
    (b / "which").write_text("b")
    assert _exchange(a, b)  # Linux renameat2: the target is never missing, not even between two renames
    assert (a / "which").read_text() == "b" and (b / "which").read_text() == "a"
    write_folder_atomically(b, lambda staging: (staging / "which").write_text("new"))
    assert (b / "which").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no staging or old copy left
