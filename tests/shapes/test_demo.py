"""`diffalign demo` end to end at CI size: generate with the shipped model, rank with the proxy, DPO, evaluate."""

import json
import os

import pytest
from accelerate.state import AcceleratorState

from diffusion_align.cli import main

PROMPTS, CANDIDATES, EVAL_PROMPTS, SAMPLES = 64, 4, 64, 2
CI_SIZE = (
    f"generate.num_prompts={PROMPTS}",
    f"generate.images_per_prompt={CANDIDATES}",
    "generate.num_inference_steps=10",
    f"evaluate.num_prompts={EVAL_PROMPTS}",
    f"evaluate.samples_per_prompt={SAMPLES}",
    "evaluate.n_resamples=500",
    "trainer.max_steps=60",
)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("demo")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    AcceleratorState._reset_state(reset_partial_state=True)
    main(["demo", f"hydra.run.dir={out_dir}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", *CI_SIZE])
    return out_dir, json.loads((out_dir / "demo_summary.json").read_text())


def test_demo_runs_every_stage_and_writes_its_outputs(demo_run):
    out_dir, summary = demo_run
    generated = summary["stages"]["generate"]
    assert generated["prompts"] == PROMPTS and generated["images"] == PROMPTS * CANDIDATES
    assert 0 < generated["pairs"] <= PROMPTS
    assert summary["stages"]["align"]["steps"] == 60
    assert (out_dir / "train" / "pytorch_lora_weights.safetensors").is_file()
    for reward in ("exact", "proxy"):
        line = summary["headline"][reward]
        assert line["base_mean"]["n"] == line["aligned_mean"]["n"] == EVAL_PROMPTS * SAMPLES
        win = line["win_rate"]
        assert win["wins"] + win["ties"] + win["losses"] == EVAL_PROMPTS * SAMPLES
        assert win["low"] <= win["win_rate"] <= win["high"]
    assert 0.0 <= summary["headline"]["exact"]["base_mean"]["mean"] <= 1.0
    report = (out_dir / "evaluate" / "report.html").read_text()
    assert "aligned" in report and "base" in report
    assert any((out_dir / "evaluate" / "grids").glob("*.png"))
