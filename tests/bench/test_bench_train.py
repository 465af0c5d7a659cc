"""Smoke test of ``bench/bench_train.py`` (CPU, tiny SD1.5, 1 timed step): a row per mode with sane figures, with the
reference computed inline and by the loop's precompute pass (which MaPO, reference-free, skips). No timing is asserted."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_train.py"
ROW = r"^tiny_sd15\s+(\w+)\s+on\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)\s+cpu$"


@pytest.mark.parametrize("precompute", [False, True], ids=["inline", "precomputed"])
def test_bench_train_prints_a_row_per_mode(precompute) -> None:
    command = [sys.executable, str(BENCH), "--models", "tiny_sd15", "--modes", "dpo_lora", "dpo_full", "mapo_lora",
               "--cache", "on",
               "--steps", "1", "--warmup", "1", "--batch-size", "2"]
    if precompute:
        command.append("--override=reference.precompute=true")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"bench_train.py failed:\n{done.stderr[-4000:]}"
    rows = re.findall(ROW, done.stdout, re.M)
    assert [mode for mode, *_ in rows] == ["dpo_lora", "dpo_full", "mapo_lora"], done.stdout
    for mode, ms, pairs, peak, step_peak, pass_s in rows:
        assert float(ms) > 0 and abs(float(pairs) - 2 / (float(ms) / 1000)) < 0.01 * float(pairs) + 0.01
        assert 0 < float(step_peak) <= float(peak) + 0.01
        passed = precompute and mode != "mapo_lora"  # reference-free: nothing to precompute
        assert (pass_s != "-") == passed and (not passed or float(pass_s) > 0)


def test_bench_train_takes_fused_updates() -> None:
    """``--override trainer.fused_backward=true``: the loop's updates inside backward, in the least-memory setup."""
    command = [sys.executable, str(BENCH), "--models", "tiny_sd15", "--modes", "dpo_full", "--cache", "on",
               "--steps", "1", "--warmup", "1", "--batch-size", "2", "--override=reference.precompute=true",
               "--override=trainer.fused_backward=true", "--override=trainer.max_grad_norm=0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"bench_train.py failed:\n{done.stderr[-4000:]}"
    rows = re.findall(ROW, done.stdout, re.M)
    assert [mode for mode, *_ in rows] == ["dpo_full"], done.stdout
    _, ms, _, peak, step_peak, pass_s = rows[0]
    assert float(ms) > 0 and 0 < float(step_peak) <= float(peak) + 0.01 and float(pass_s) > 0
