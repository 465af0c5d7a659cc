"""``bench/gpu_checks.py``: the plan of GPU commands (listed, not run), and its plumbing run tiny on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def listed(*args: str) -> list[str]:
    done = subprocess.run([sys.executable, str(BENCH / "gpu_checks.py"), "--out", "unused", "--list", *args],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_gpu_plan_builds_the_models_first_and_runs_every_check():
    lines = listed("--diffusers-checkout", "/src/diffusers", "--models", "/models")
    names = [line.split(" ", 1)[0] for line in lines[:-1]]
    assert names[:2] == ["build/sd15", "build/sdxl"]
    assert [n.split("/")[0] for n in names[2:]] == ["lora"] * 8 + ["full"] * 4 + ["peer", "sdxl", "sdxl"]
    by_name = dict(zip(names, lines))
    assert "model.adapter.path=/models/sd15 --resolution 512 --batch-size 8 --precision bf16" in by_name["lora/eager"]
    assert "trainer.fused_backward=true --override=trainer.max_grad_norm=0" in by_name["full/precompute-fused"]
    assert "bench_peer.py --preset gpu --cache on --diffusers-checkout /src/diffusers" in by_name["peer/side-by-side"]
    assert "--resolution 1024 --batch-size 4" in by_name["sdxl/regional"] and "compile=regional" in by_name["sdxl/regional"]
    assert lines[-1].startswith("17 commands")


def test_without_a_checkout_the_peer_check_is_left_out():
    assert not [line for line in listed("--only", "peer", "full") if line.startswith(("peer", "build/sdxl"))]


def test_the_cpu_preset_runs_a_check_and_writes_its_logs_and_summary(tmp_path):
    done = subprocess.run([sys.executable, str(BENCH / "gpu_checks.py"), "--out", str(tmp_path), "--preset", "cpu",
                           "--only", "sdxl"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (tmp_path / "summary.txt").read_text()
    assert summary.startswith("## sdxl/eager: exit 0")
    assert "--models tiny_sdxl" in summary and "compile" not in summary  # no inductor build on a CPU
    assert [line.split()[:3] for line in summary.splitlines() if line.startswith("tiny_sdxl")] == [
        ["tiny_sdxl", "dpo_lora", "on"]]
    assert (tmp_path / "sdxl-eager.log").is_file()
