"""`diffalign evaluate` end to end from the command line, and the same for video clips from Python."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from diffusion_align.cli import main
from diffusion_align.evaluate import PromptSet, SamplingSettings, StatsSettings, evaluate_models, load_results
from diffusion_align.evaluate.media import load_frames
from diffusion_align.evaluate.report import ReportSettings


def evaluate_cli(out_dir, *overrides: str) -> None:
    os.environ["HYDRA_FULL_ERROR"] = "1"
    main(["evaluate", f"hydra.run.dir={out_dir}", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled",
          *overrides])


def test_cli_compares_base_and_lora_on_a_prompt_file(tiny_sd15_path, tiny_lora_dir, tiny_reward_kwargs, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a white background\na blue square on a black background\n")
    pickscore = tiny_reward_kwargs("pickscore")
    out_dir = tmp_path / "run"
    evaluate_cli(
        out_dir, f"pipeline={tiny_sd15_path}", f"+models.aligned.lora={tiny_lora_dir}",
        "evaluate/prompts=file", f"prompts.path={prompts}",
        "+reward@rewards.pickscore=pickscore", f"rewards.pickscore.model={pickscore['model']}",
        f"rewards.pickscore.processor={pickscore['processor']}",
        "sampling.num_inference_steps=2", "sampling.samples_per_prompt=2", "stats.n_resamples=100",
        "report.plots=false",
    )
    results = load_results(out_dir)
    assert results.model_names == ["base", "aligned"] and results.reward_names == ["shapes", "pickscore"]
    assert results.models["aligned"]["lora"] == str(tiny_lora_dir)
    assert results.models["base"]["pipeline"] == results.models["aligned"]["pipeline"] == str(tiny_sd15_path)
    assert results.settings["prompt_set"] == "prompts.txt" and len(results.table) == 2 * 2 * 2
    assert {"report.html", "results.json", "results.parquet", "grids", "images"} <= {p.name for p in out_dir.iterdir()}
    assert not (out_dir / "plots").exists()
    metrics = json.loads((out_dir / "metrics.json").read_text())  # what a sweep summary reads
    assert metrics["models"] == ["base", "aligned"] and len(metrics["win_rates"]) == 2
    assert {row["model"] for row in metrics["summary"]} == {"base", "aligned"}
    assert [(w.model, w.opponent, w.reward, w.n_pairs) for w in results.win_rates()] == [
        ("aligned", "base", "shapes", 4), ("aligned", "base", "pickscore", 4)]


def test_cli_without_a_pipeline_says_so(tmp_path):
    with pytest.raises(ValueError, match="models.base has no pipeline and `pipeline`"):
        evaluate_cli(tmp_path / "run", "pipeline=???", "evaluate/prompts=file", f"prompts.path={tmp_path / 'p.txt'}")


def test_several_processes_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(RuntimeError, match="one process per job, got WORLD_SIZE=4"):
        evaluate_cli(tmp_path / "run", "evaluate/prompts=file", f"prompts.path={tmp_path / 'p.txt'}")


def test_video_models_are_compared_clip_by_clip(tiny_pipeline_path, clip_reward, tmp_path):
    base, other = tiny_pipeline_path("wan"), tiny_pipeline_path("wan", seed=1)
    sampling = SamplingSettings(num_inference_steps=2, batch_size=2,
                                pipeline_kwargs={"height": 32, "width": 32, "num_frames": 5})
    results = evaluate_models(
        {"base": str(base), "other": str(other)}, PromptSet("clips", ("a red ball rolling", "a blue car driving")),
        {"clip": clip_reward}, tmp_path, sampling=sampling, stats=StatsSettings(n_resamples=100),
        report=ReportSettings(plots=False),
    )
    assert list(results.table["num_frames"]) == [5] * 4
    row = results.rows_of("other").iloc[1]
    frames = load_frames(row["image"], 5)
    assert [frame.size for frame in frames] == [(32, 32)] * 5
    per_frame = clip_reward.score(frames, [row["prompt"]] * 5)
    assert row["score/clip"] == pytest.approx(float(per_frame.mean()), rel=1e-5)  # video_aggregate=mean
    html = (tmp_path / "report.html").read_text()
    gifs = [chunk.split('"', 1)[0] for chunk in html.split("data:image/gif;base64,")[1:]]
    assert len(gifs) == 4
    animation = Image.open(io.BytesIO(base64.b64decode(gifs[0])))
    assert animation.n_frames == 5 and animation.size == (32, 32)
    strip = np.asarray(Image.open(sorted((tmp_path / "grids").glob("*.png"))[0]))
    assert strip.shape[1] > 2 * 5 * 32  # each grid cell holds the whole frame strip


def test_default_config_is_the_shapes_world():
    from hydra import compose, initialize_config_module

    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = compose("evaluate")
    assert cfg.prompts._target_ == "diffusion_align.evaluate.prompts.load_shapes_held_out"
    assert list(cfg.rewards) == ["shapes"] and cfg.rewards.shapes._target_ == "reward_models.ShapesReward"
    assert OmegaConf.to_container(cfg, resolve=False)["pipeline"] == "${shapes_model:pipeline}"
    assert list(cfg.models) == ["base"]


def test_a_killed_evaluation_resumes_from_its_saved_samples(tiny_sd15_path, tiny_lora_dir, clip_reward, tmp_path,
                                                             monkeypatch):
    """Samples saved before a kill are kept (their model is not even loaded again when all are there); the rest are
    generated from their own seeds, so the result equals an uninterrupted run's; other settings are refused."""
    from diffusion_align.evaluate import run as evaluate_run

    models = {"base": str(tiny_sd15_path), "lora": {"pipeline": str(tiny_sd15_path), "lora": str(tiny_lora_dir)}}
    prompts = PromptSet("p", ("a red circle", "a blue square", "a green triangle"))
    sampling = SamplingSettings(samples_per_prompt=2, num_inference_steps=2, batch_size=2, height=32, width=32)
    settings = {"sampling": sampling, "stats": StatsSettings(n_resamples=50), "report": ReportSettings(plots=False)}
    whole = evaluate_models(models, prompts, {"clip": clip_reward}, tmp_path / "whole", **settings)

    generated = evaluate_run.generate

    def killed_after_three(pipeline, jobs, *args, **kwargs):  # the first model dies after 3 of its 6 samples
        for count, sample in enumerate(generated(pipeline, jobs, *args, **kwargs)):
            if count == 3:
                raise KeyboardInterrupt
            yield sample

    monkeypatch.setattr(evaluate_run, "generate", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        evaluate_models(models, prompts, {"clip": clip_reward}, tmp_path / "cut", **settings)
    lines = (tmp_path / "cut" / "images" / "base" / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 3
    with open(tmp_path / "cut" / "images" / "base" / "samples.jsonl", "a") as log:
        log.write('{"model": "base", "prompt_ind')  # a line cut short by the kill

    asked = []
    monkeypatch.setattr(evaluate_run, "generate",
                        lambda pipeline, jobs, *a, **k: asked.append([j[:2] for j in jobs]) or generated(
                            pipeline, jobs, *a, **k))
    resumed = evaluate_models(models, prompts, {"clip": clip_reward}, tmp_path / "cut", **settings)
    assert asked == [[(1, 1), (2, 0), (2, 1)], [(i, k) for i in range(3) for k in range(2)]]
    for column in ("model", "prompt_index", "sample_index", "seed", "score/clip"):
        assert list(resumed.table[column]) == pytest.approx(list(whole.table[column])) if column.startswith(
            "score") else list(resumed.table[column]) == list(whole.table[column])

    asked.clear()  # everything saved: no model is loaded, whatever the batch size or a smaller sample count
    monkeypatch.setattr(evaluate_run, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    evaluate_models(models, prompts, {"clip": clip_reward}, tmp_path / "cut", **settings)
    for fewer in (SamplingSettings(samples_per_prompt=2, num_inference_steps=2, batch_size=5, height=32, width=32),
                  SamplingSettings(samples_per_prompt=1, num_inference_steps=2, batch_size=2, height=32, width=32)):
        again = evaluate_models(models, prompts, {"clip": clip_reward}, tmp_path / "cut", **{**settings, "sampling": fewer})
        assert len(again.table) == 2 * 3 * fewer.samples_per_prompt
    assert asked == []

    other = SamplingSettings(samples_per_prompt=2, num_inference_steps=3, batch_size=2, height=32, width=32)
    with pytest.raises(ValueError, match="holds samples made with other sampling"):
        evaluate_models(models, prompts, {"clip": clip_reward}, tmp_path / "cut", **{**settings, "sampling": other})
    monkeypatch.undo()
    retrained = tmp_path / "retrained"  # the same LoRA path with new weights (a re-run training): not reused
    shutil.copytree(tiny_lora_dir, retrained)
    moved = {**models, "lora": {"pipeline": str(tiny_sd15_path), "lora": str(retrained)}}
    evaluate_models(moved, prompts, {"clip": clip_reward}, tmp_path / "again", **settings)
    (retrained / "checkpoints" / "step-1").mkdir(parents=True)  # a run's later checkpoints are not its weights
    (retrained / "checkpoints" / "step-1" / "model.safetensors").write_bytes(b"x")
    evaluate_models(moved, prompts, {"clip": clip_reward}, tmp_path / "again", **settings)
    weights = next(retrained.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="holds samples made with other weights"):
        evaluate_models(moved, prompts, {"clip": clip_reward}, tmp_path / "again", **settings)


def test_a_copied_sample_folder_resumes_from_its_own_images(tiny_sd15_path, clip_reward, tmp_path, monkeypatch):
    """A model's sample folder copied into another evaluation (the source then deleted) is reused there, and its
    rows name the copies, not the source's files."""
    from diffusion_align.evaluate import run as evaluate_run

    prompts = PromptSet("p", ("a red circle", "a blue square"))
    settings = {"sampling": SamplingSettings(samples_per_prompt=1, num_inference_steps=2, height=32, width=32),
                "stats": StatsSettings(n_resamples=20), "report": ReportSettings(plots=False)}
    first = evaluate_models({"base": str(tiny_sd15_path)}, prompts, {"clip": clip_reward}, tmp_path / "first",
                            **settings)
    shutil.copytree(tmp_path / "first" / "images" / "base", tmp_path / "second" / "images" / "base")
    shutil.rmtree(tmp_path / "first")
    monkeypatch.setattr(evaluate_run, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    second = evaluate_models({"base": str(tiny_sd15_path)}, prompts, {"clip": clip_reward}, tmp_path / "second",
                             **settings)
    copies = (tmp_path / "second" / "images" / "base").resolve()
    assert [Path(p).parent for p in second.table["image"]] == [copies, copies]
    assert list(second.table["score/clip"]) == pytest.approx(list(first.table["score/clip"]))
