"""Video alignment in the Moving Shapes world: Flow-DPO and DenseDPO, each a whole ``diffalign demo`` run, one table.

Each method runs the demo end to end with its own data (Flow-DPO: the per-frame proxy's most confident clip pairs;
DenseDPO: two re-noised copies of one clip per prompt, labelled per segment by the same proxy), trains the same
number of steps and is evaluated against the base model on the same held-out prompts and seeds under the exact video
reward. Columns: exact video reward before / after (mean over held-out clips), the aligned model's win rate over the
base (95% bootstrap interval over prompts) and the sign test's p, the per-frame proxy's gain, and wall time of the
whole run (generate + align + evaluate).

    python bench/bench_moving_shapes.py                                # flow_dpo and densedpo, the demo's budget
    python bench/bench_moving_shapes.py --methods densedpo --steps 200 --prompts 128
    # the README's table: labelled by the exact reward, DenseDPO's segment gaps up to 0.05 (its units) are ties
    python bench/bench_moving_shapes.py reward@label_reward=moving_shapes generate.dense.tie_tolerance=0.05
    # its first row, Flow-DPO within ~20 minutes on 2 cores: 288 training prompts instead of the demo's 384
    python bench/bench_moving_shapes.py --methods flow_dpo --prompts 288 reward@label_reward=moving_shapes
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

METHODS = ("flow_dpo", "densedpo")


def run_method(method: str, work: Path, overrides: list[str]) -> dict:
    from accelerate.state import AcceleratorState
    from hydra import compose, initialize_config_module

    from diffusion_align import demo
    from diffusion_align.config import register_resolvers

    register_resolvers()
    AcceleratorState._reset_state(reset_partial_state=True)
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = compose("demo", overrides=["world=moving_shapes", f"method={method}", f"output_dir={work / method}",
                                         *overrides])
    OmegaConf.resolve(cfg)
    summary = demo.run(cfg)
    exact, proxy = summary["headline"]["exact"], summary["headline"]["proxy"]
    win = exact["win_rate"]
    return {
        "method": method,
        "pairs": summary["stages"]["generate"]["pairs"],
        "exact_before": exact["base_mean"]["mean"],
        "exact_after": exact["aligned_mean"]["mean"],
        "gain": win["mean_difference"],
        "gain_low": win["difference_low"],
        "gain_high": win["difference_high"],
        "win_rate": win["win_rate"],
        "win_low": win["low"],
        "win_high": win["high"],
        "sign_test_p": win["sign_test_p"],
        "proxy_gain": proxy["aligned_mean"]["mean"] - proxy["base_mean"]["mean"],
        "seconds": summary["total_seconds"],
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'method':<9} {'pairs':>5} {'exact before':>12} {'exact after':>11} {'gain [95% CI]':>27} "
          f"{'win rate vs base [95% CI]':>26} {'p':>8} {'proxy gain':>10} {'wall s':>7}")
    for r in rows:
        gain = f"{r['gain']:+.4f} [{r['gain_low']:+.4f}, {r['gain_high']:+.4f}]"
        win = f"{r['win_rate']:.3f} [{r['win_low']:.3f}, {r['win_high']:.3f}]"
        print(f"{r['method']:<9} {r['pairs']:>5} {r['exact_before']:>12.4f} {r['exact_after']:>11.4f} {gain:>27} "
              f"{win:>26} {r['sign_test_p']:>8.2g} {r['proxy_gain']:>+10.3f} {r['seconds']:>7.1f}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per method (default: the demo's)")
    parser.add_argument("--prompts", type=int, default=None, help="training prompts generated (default: the demo's)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts (default: the demo's)")
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="more demo overrides, e.g. generate.guidance_scale=4")
    args = parser.parse_args(argv)
    overrides = [*(f"{key}={value}" for key, value in (("trainer.max_steps", args.steps),
                                                         ("generate.num_prompts", args.prompts),
                                                         ("evaluate.num_prompts", args.eval_prompts))
                   if value is not None), *args.overrides]
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_moving_shapes_"))
    rows = [run_method(method, work, overrides) for method in args.methods]
    print_table(rows)
    (work / "bench_moving_shapes.json").write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
