"""Shared helpers of the robustness suite: output snapshots, hand-made bad Parquet files, the in-process CLI."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from diffusion_align.testing.data import encode_image, pairwise_row, write_pairwise_rows

# hydra rewrites its own record of each invocation (.hydra/); everything else in a run directory is ours
HYDRA_RECORDS = (".hydra",)


def load_train_cli():
    """``train_cli`` of tests/train/conftest.py (a conftest, so imported by path)."""
    path = Path(__file__).parents[1] / "train" / "conftest.py"
    spec = importlib.util.spec_from_file_location("tests_train_conftest_for_robustness", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.train_cli


def train_logged(out_dir: Path, *overrides: str) -> str:
    """``diffalign train debug=tiny`` in this process with hydra's default job logging (which the plain test
    runner turns off); returns the run's ``train.log``."""
    from accelerate.state import AcceleratorState

    from diffusion_align.cli import main

    os.environ["HYDRA_FULL_ERROR"] = "1"
    AcceleratorState._reset_state(reset_partial_state=True)  # as tests/train/conftest.py: a fresh process each run
    main(["train", "debug=tiny", f"hydra.run.dir={out_dir}", *overrides])
    return (out_dir / "train.log").read_text()


@contextlib.contextmanager
def captured_logs(name: str) -> Iterator[list[str]]:
    """Messages logged to logger ``name`` (WARNING and up) inside the block, through a handler on that logger
    itself (diffusers' loggers do not propagate to the root, where hydra's handlers are)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def snapshot(directory: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``directory`` (hydra's records left out)."""
    found = {}
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and relative.parts[0] not in HYDRA_RECORDS:
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def copy_run(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


def good_row(index: int, **changes) -> dict:
    """A valid Pick-a-Pic row with ``ps_score_0/1`` (the tiny data config reads them); ``changes`` override."""
    colours = ((200, 30 + 10 * index, 40), (30, 60, 200 - 10 * index))
    label = 1.0 if index % 2 == 0 else 0.0
    row = pairwise_row(f"a red square number {index}", label, colours, ps_score_0=20.0 + label,
                       ps_score_1=21.0 - label)
    row.update(changes)
    return row


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Pairwise rows in the full test schema (missing keys are nulls), 2 rows per row group."""
    return write_pairwise_rows(path, rows)


def png_bytes(width: int = 40, height: int = 32, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_image(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "PNG")


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` pixels (CRC fixed, so only the size is wrong)."""
    import struct
    import zlib

    data = bytearray(png_bytes(1, 1))
    header = b"IHDR" + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(header))
    return bytes(data)
