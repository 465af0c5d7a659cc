"""Smoke test of ``bench/bench_peer.py`` (CPU, tiny model, 3 steps): the table and JSON it prints, and, when
``$DIFFALIGN_DIFFUSERS_CHECKOUT`` names a diffusers checkout, that both sides compute the same loss on the script's
first batches. No timing is asserted: only that every figure is there and sane."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_peer.py"
CHECKOUT = os.environ.get("DIFFALIGN_DIFFUSERS_CHECKOUT")
STEPS = 3  # the smoke preset's
SIDE_FIELDS = {
    "side", "ms_per_step", "steady_pairs_per_s", "wall_s", "whole_pairs_per_s", "to_first_step_end_s",
    "after_last_step_s", "peak_rss_gib", "cuda_peak_gib", "torch_threads", "losses", "repeats", "notes",
}


@pytest.fixture(scope="module")
def bench_output(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """One smoke run: our side (latent cache on), plus the script when a checkout is given."""
    sides = ["ours", "peer"] if CHECKOUT else ["ours"]
    work = tmp_path_factory.mktemp("bench_peer")
    command = [sys.executable, str(BENCH), "--preset", "smoke", "--cache", "on", "--sides", *sides,
               "--work-dir", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"bench_peer.py failed:\n{done.stderr[-4000:]}"
    return done.stdout, json.loads(done.stdout.strip().splitlines()[-1])


def test_our_side_prints_table_and_json(bench_output) -> None:
    stdout, result = bench_output
    assert set(result) == {"settings", "sides", "speedup", "first_batches"}
    assert result["settings"]["steps"] == STEPS and result["settings"]["threads"] == 1
    ours = next(side for side in result["sides"] if side["side"] == "ours (cache on)")
    assert set(ours) == SIDE_FIELDS
    for name in ("ms_per_step", "steady_pairs_per_s", "wall_s", "whole_pairs_per_s", "peak_rss_gib"):
        assert math.isfinite(ours[name]) and ours[name] > 0, name
    assert ours["to_first_step_end_s"] + ours["after_last_step_s"] < ours["wall_s"]
    assert ours["cuda_peak_gib"] is None and ours["torch_threads"] == 1
    assert len(ours["losses"]) == STEPS and all(math.isfinite(v) for v in ours["losses"])
    assert ours["losses"][0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA starts at zero: policy == reference
    header = next(line for line in stdout.splitlines() if line.startswith("side "))
    for column in ("ms/step", "pairs/s", "whole pairs/s", "peak GiB (RSS)", "batches 1 / 2 loss"):
        assert column in header
    assert any(line.startswith("ours (cache on)") for line in stdout.splitlines())


@pytest.mark.skipif(not CHECKOUT, reason="set DIFFALIGN_DIFFUSERS_CHECKOUT to a diffusers checkout (or the DPO "
                                         "script's path) to run the peer side")
def test_both_sides_agree_on_the_scripts_first_batches(bench_output) -> None:
    stdout, result = bench_output
    peer = next(side for side in result["sides"] if side["side"] == "diffusers script")
    assert set(peer) == SIDE_FIELDS and len(peer["losses"]) == STEPS
    assert set(result["speedup"]) == {"ours (cache on)"}
    assert set(result["speedup"]["ours (cache on)"]) == {"whole", "steady"}
    first = result["first_batches"]
    assert [b["step"] for b in first] == [1, 2]
    for batch in first:
        assert batch["script"] == pytest.approx(peer["losses"][batch["step"] - 1], abs=1e-7)
        assert batch["noisy_input_max_abs_diff"] == 0.0  # the same DDPM forward process
        assert batch["ours_on_script_predictions"] == pytest.approx(batch["script"], abs=1e-6)
        assert batch["ours_forward"] == pytest.approx(batch["script"], abs=1e-5)  # same weights, inputs, threads
    assert first[0]["script"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(first[1]["script"] - math.log(2)) > 1e-4, "batch 2 should follow an update that moved the policy"
    assert "speed-up ours (cache on) / diffusers script" in stdout
