"""Throughput of `diffalign generate`: images per second for generation, scoring, and both, by batch size.

Usage::

    python bench/bench_generate.py                                  # tiny SD1.5 and SDXL, tiny ensemble, CPU
    python bench/bench_generate.py --device cuda --batch-sizes 1 4 16 --images 64 --steps 4
    python bench/bench_generate.py --pipeline sdxl=/ckpt/sdxl-base --steps 30 --device cuda --dtype float16

For each pipeline and batch size: ``generate`` is the pipeline calls alone (``images`` candidates, ``batch``
per call, each with its own seed), ``score`` the reward ensemble's raw scores of those images (``batch`` per
forward pass), ``both`` the two in sequence. A last row runs ``generate_dataset`` end to end (all pipelines, PNG
encoding, ranking, pairs, atomic Parquet shards) at the largest batch size, and the last line sets it against a bare
loop over the same candidates (load each pipeline, call it, run the reward forwards; nothing written), both from
freshly loaded pipelines: the cost of ``diffalign generate``'s bookkeeping (issue 13's target: within 1.2x). In the
rows above the first call of every shape is a warm-up and is not timed. Tiny pipelines and rewards measure the machinery, not real-model speed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_align.generate import (  # noqa: E402
    PairSelection,
    PipelineSpec,
    generate_dataset,
    generate_media,
    load_pipeline,
)
from diffusion_align.generate.ranking import raw_scores  # noqa: E402
from diffusion_align.testing import build_tiny_pipeline  # noqa: E402
from diffusion_align.testing.tiny_rewards import build_tiny_reward  # noqa: E402
from reward_models import ClipScoreReward, PickScoreReward, RewardEnsemble  # noqa: E402

PROMPTS = ["a red circle on a blue background", "a large green square at the left on a white background",
           "a small yellow triangle on a black background", "a purple circle in the center on an orange background"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", action="append", default=[], metavar="NAME=PATH",
                        help="a diffusers pipeline (default: tiny sd15 and sdxl built here)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--images", type=int, default=16, help="candidates generated per measurement")
    parser.add_argument("--steps", type=int, default=2, help="num_inference_steps")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="1.0 = no classifier-free guidance")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    return parser.parse_args()


def pipeline_specs(args: argparse.Namespace, tiny_dir: Path) -> list[PipelineSpec]:
    named = dict(entry.split("=", 1) for entry in args.pipeline)
    if not named:
        named = {f"tiny_{family}": str(build_tiny_pipeline(family, tiny_dir / family)) for family in ("sd15", "sdxl")}
    call = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale}
    return [PipelineSpec(name, path, call, dtype=args.dtype) for name, path in named.items()]


def tiny_ensemble(tiny_dir: Path, device: str) -> RewardEnsemble:
    members = {"pickscore": PickScoreReward(**build_tiny_reward("pickscore", tiny_dir / "pickscore")),
               "clip_score": ClipScoreReward(**build_tiny_reward("clip_score", tiny_dir / "clip_score"))}
    return RewardEnsemble(members, device=device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(function, device: str) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    result = function()
    synchronize(device)
    return time.perf_counter() - start, result


def measure(spec: PipelineSpec, pipeline, reward, batch: int, images: int, device: str) -> tuple[float, float]:
    """Seconds to generate ``images`` candidates ``batch`` at a time, and to score them ``batch`` at a time."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(images)]

    def generate() -> list:
        out = []
        for start in range(0, images, batch):
            chunk = prompts[start : start + batch]
            out += generate_media(pipeline, spec, chunk, list(range(start, start + len(chunk))))
        return out

    generate_media(pipeline, spec, prompts[:batch], list(range(batch)))  # warm-up of this shape
    gen_seconds, pixels = timed(generate, device)
    pil = [Image.fromarray(p) for p in pixels]
    raw_scores(reward, pil[:batch], prompts[:batch], batch)  # warm-up
    score_seconds, _ = timed(lambda: raw_scores(reward, pil, prompts, batch), device)
    return gen_seconds, score_seconds


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as tmp:
        tmp_dir = Path(tmp)
        specs = pipeline_specs(args, tmp_dir / "pipelines")
        reward = tiny_ensemble(tmp_dir / "rewards", args.device)
        print(f"device {args.device}, {args.images} images per row, {args.steps} steps, "
              f"guidance {args.guidance_scale}, threads {torch.get_num_threads()}")
        print(f"{'pipeline':<12} {'batch':>5} {'generate img/s':>15} {'score img/s':>12} {'both img/s':>11}")
        batch = max(args.batch_sizes)
        for spec in specs:
            pipeline = load_pipeline(spec, args.device)
            for size in args.batch_sizes:
                gen, score = measure(spec, pipeline, reward, size, args.images, args.device)
                print(f"{spec.name:<12} {size:>5} {args.images / gen:>15.2f} {args.images / score:>12.2f} "
                      f"{args.images / (gen + score):>11.2f}")
            del pipeline
        specs = [PipelineSpec(s.name, s.path, s.call, batch_size=batch, dtype=s.dtype) for s in specs]
        prompts = [f"{PROMPTS[i % len(PROMPTS)]} {i}" for i in range(max(1, args.images // (2 * len(specs))))]
        bare, bare_load = bare_loop(specs, reward, prompts, 2, batch, args.device)
        seconds, summary = timed(lambda: generate_dataset(
            prompts, specs, reward, tmp_dir / "dataset", images_per_prompt=2, prompts_per_shard=len(prompts),
            pairs=PairSelection("all_pairs"), reward_batch_size=batch, device=args.device, progress=False), args.device)
        print(f"{'end to end':<12} {batch:>5} {'':>15} {'':>12} {summary.candidates / seconds:>11.2f}"
              f"   (generate_dataset: {summary.candidates} images incl. pipeline loading, PNG, Parquet)")
        print(f"end to end / bare loop: {seconds / bare:.2f}x (target <= 1.2x): generate_dataset {seconds:.2f} s, "
              f"the bare loop {bare:.2f} s ({bare_load:.2f} s of it loading the pipelines)")


def bare_loop(specs: list[PipelineSpec], reward, prompts: list[str], per_prompt: int, batch: int, device: str
              ) -> tuple[float, float]:
    """What ``generate_dataset`` is measured against: load each pipeline, call it on the same candidates ``batch``
    at a time (per-candidate seeded generators), score every image with the ensemble's forward; nothing written.

    Returns:
        total seconds (first calls included, as in any fresh process) and the seconds of those spent loading.
    """
    candidates = [(prompt, k) for prompt in prompts for k in range(per_prompt)]
    total = load = 0.0
    for spec in specs:
        seconds, pipeline = timed(lambda spec=spec: load_pipeline(spec, device), device)
        load += seconds
        total += seconds

        def run(pipeline=pipeline, spec=spec) -> None:
            for start in range(0, len(candidates), batch):
                chunk = candidates[start : start + batch]
                texts = [prompt for prompt, _ in chunk]
                generators = [torch.Generator("cpu").manual_seed(start + i) for i in range(len(chunk))]
                images = pipeline(prompt=texts, generator=generators, output_type="pil", **spec.call).images
                raw_scores(reward, images, texts, batch)

        seconds, _ = timed(run, device)
        total += seconds
        del run, pipeline  # run's default argument holds the pipeline too: one in memory at a time
    return total, load


if __name__ == "__main__":
    main()
