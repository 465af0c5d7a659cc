"""Smoke test of ``bench/bench_generate.py`` (CPU, tiny pipelines and rewards, 1 step): every row and the end-to-end
against bare-loop line are printed with sane figures. No timing is asserted."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_generate.py"


def test_bench_generate_prints_rows_and_the_bare_loop_ratio() -> None:
    command = [sys.executable, str(BENCH), "--batch-sizes", "1", "2", "--images", "4", "--steps", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"bench_generate.py failed:\n{done.stderr[-4000:]}"
    rows = re.findall(r"^(tiny_sd15|tiny_sdxl)\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", done.stdout, re.M)
    assert [(name, int(batch)) for name, batch, *_ in rows] == [
        ("tiny_sd15", 1), ("tiny_sd15", 2), ("tiny_sdxl", 1), ("tiny_sdxl", 2)]
    assert all(float(v) > 0 for *_, a, b, c in rows for v in (a, b, c))
    end = re.search(r"^end to end\s+2\s+([\d.]+)\s+\(generate_dataset: 4 images", done.stdout, re.M)
    assert end and float(end.group(1)) > 0
    ratio = re.search(r"end to end / bare loop: ([\d.]+)x \(target <= 1.2x\): generate_dataset ([\d.]+) s, "
                      r"the bare loop ([\d.]+) s \(([\d.]+) s of it loading", done.stdout)
    assert ratio, done.stdout
    factor, ours, bare, load = map(float, ratio.groups())
    assert 0 < load < bare and ours > 0 and abs(factor - ours / bare) <= 0.05 * factor + 0.01  # printed rounded
