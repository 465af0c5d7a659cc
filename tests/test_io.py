"""diffusion_align.io: atomic writes leave no temporary behind; text reads name the file and line of a bad byte."""

from __future__ import annotations

import re

import pytest

from diffusion_align.io import read_text, temporary_path, write_atomic


def test_read_text_names_the_file_line_and_byte_that_is_not_utf8(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_bytes("a cat\nna\u00efve\n".encode())
    assert read_text(path) == "a cat\nna\u00efve\n"
    path.write_bytes(b"a cat\n\nna\xefve\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}: line 3: byte 0xef is not UTF-8") + ".*expected UTF-8"):
        read_text(path)


def test_durable_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "shard.bin"
    write_atomic(path, lambda temporary: temporary.write_bytes(b"old"), durable=True)

    def write_half_then_fail(temporary):
        temporary.write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, write_half_then_fail, durable=True)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["shard.bin"]
    assert temporary_path(path).name.startswith(".shard.bin.") and temporary_path(path).name.endswith(".tmp")
