"""Throughput of every reward model: images per second for one batch (32 by default).

Usage::

    python bench/bench_rewards.py                        # tiny random weights, CPU
    python bench/bench_rewards.py --device cuda --pickscore-model ckpt/PickScore_v1 \
        --pickscore-processor ckpt/CLIP-ViT-H-14-laion2B-s32B-b79K --hps-checkpoint ckpt/HPS_v2.1_compressed.pt

Three columns per model: ``score`` (PIL images through the reference preprocessing, no gradients),
``score_tensor`` (the differentiable torch path, forward only) and ``+backward`` (forward and backward to the
pixels, what reward fine-tuning pays). Models given no real weights run on the tiny builders of
``diffusion_align.testing.tiny_rewards``, which measure the pipeline overhead, not real-model speed.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from diffusion_align.testing.tiny_rewards import build_tiny_reward  # noqa: E402
from reward_models import AestheticReward, ClipScoreReward, HPSReward, PickScoreReward, RewardModel  # noqa: E402
from reward_models.preprocessing import pixels_to_pil  # noqa: E402

PROMPT = "a photo of an astronaut riding a horse on the moon"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=32, help="images scored per measurement")
    parser.add_argument("--image-size", type=int, default=512, help="side of the square input images, pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--pickscore-model", help="local PickScore_v1 directory (tiny weights when absent)")
    parser.add_argument("--pickscore-processor", help="local laion CLIP-H processor directory")
    parser.add_argument("--hps-checkpoint", help="local HPS_v2(.1)_compressed.pt (ViT-H-14)")
    parser.add_argument("--clip-model", help="local openai/clip-vit-large-patch14 directory (CLIP score)")
    parser.add_argument("--aesthetic-weights", help="local sac+logos+ava1-l14-linearMSE.pth")
    parser.add_argument("--aesthetic-clip", help="local CLIP ViT-L/14 directory for the aesthetic predictor")
    return parser.parse_args()


def model_factories(args: argparse.Namespace, tiny_dir: Path) -> dict[str, tuple[str, Callable[[], RewardModel]]]:
    """name -> (weights label, constructor) for each reward model, real weights where given."""
    common = {"device": args.device, "dtype": args.dtype, "batch_size": args.batch_size}

    def pick(name: str, real: dict[str, str] | None, cls: type[RewardModel]) -> tuple[str, Callable[[], RewardModel]]:
        if real is not None:
            return "real", lambda: cls(**real, **common)
        return "tiny", lambda: cls(**build_tiny_reward(name, tiny_dir / name), **common)

    pickscore = None
    if args.pickscore_model:
        pickscore = {"model": args.pickscore_model, "processor": args.pickscore_processor or args.pickscore_model}
    return {
        "pickscore": pick("pickscore", pickscore, PickScoreReward),
        "hps": pick("hps", {"checkpoint": args.hps_checkpoint} if args.hps_checkpoint else None, HPSReward),
        "clip_score": pick("clip_score", {"model": args.clip_model} if args.clip_model else None, ClipScoreReward),
        "aesthetic": pick(
            "aesthetic",
            {"weights": args.aesthetic_weights, "clip": args.aesthetic_clip} if args.aesthetic_weights else None,
            AestheticReward,
        ),
    }


def best_seconds(step: Callable[[], object], repeats: int, device: str) -> float:
    """Fastest of ``repeats`` timed runs of ``step`` (after one warm-up), synchronising CUDA around each."""
    step()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(model: RewardModel, pixels: torch.Tensor, images: list[Image.Image], args: argparse.Namespace) -> list[float]:
    """Images per second of ``score``, ``score_tensor`` and ``score_tensor`` + backward."""
    prompts = [PROMPT] * len(images)
    device_pixels = pixels.to(args.device)

    def forward_backward() -> None:
        leaf = device_pixels.clone().requires_grad_(True)
        model.score_tensor(leaf, prompts).sum().backward()

    def forward_only() -> None:
        with torch.no_grad():
            model.score_tensor(device_pixels, prompts)

    steps = [lambda: model.score(images, prompts), forward_only, forward_backward]
    return [len(images) / best_seconds(step, args.repeats, args.device) for step in steps]


def main() -> None:
    args = parse_args()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(args.batch_size, 3, args.image_size, args.image_size, generator=generator)
    images = pixels_to_pil(pixels)
    print(f"device {args.device}, dtype {args.dtype}, {torch.get_num_threads()} CPU threads, "
          f"batch {args.batch_size} of {args.image_size}x{args.image_size} images; images/s (best of {args.repeats})")
    print(f"{'model':<12} {'weights':<8} {'score':>10} {'score_tensor':>13} {'+backward':>10}")
    with tempfile.TemporaryDirectory(prefix="bench_rewards_") as tiny_dir:
        for name, (label, build) in model_factories(args, Path(tiny_dir)).items():
            rates = measure(build(), pixels, images, args)
            print(f"{name:<12} {label:<8} {rates[0]:>10.1f} {rates[1]:>13.1f} {rates[2]:>10.1f}")


if __name__ == "__main__":
    main()
