"""Every method on the Shapes world, one fixed budget, one table.

One dataset is generated once (the shipped pipeline's candidates ranked by the proxy reward, as ``diffalign demo``
does); each method then trains for the same number of steps on it (pairwise methods on the demo's pairs, the
proxy's most confident ones, RankDPO on the ranked lists, KTO on the unpaired view; the online step-level methods
use its prompts: SPO scores each step's candidates by the proxy reward of their decoded x̂0, LPO by a latent reward
model trained first on the dataset's proxy-labelled pairs with ``diffalign train-lrm``'s recipe) and is evaluated
against the base model on the held-out prompts with identical seeds. Columns: exact reward before / after (mean over held-out samples), the aligned
model's win rate over the base under the exact reward (95% bootstrap interval over prompts), the proxy-reward gain
(a proxy gain the exact reward does not share is reward hacking), and training + evaluation wall time.

    python bench/bench_shapes.py                               # every method, the demo's budget
    python bench/bench_shapes.py --methods dpo mapo --steps 150 --prompts 128
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

# method -> extra overrides (data layout per method; β left at each method's documented default)
METHODS = {
    "dpo": [],
    "dpo_hinge": ["method=dpo_hinge"],
    "dpo_ipo": ["method=dpo_ipo"],
    "sft": ["method=sft", "reference=none"],
    "mapo": ["method=mapo", "reference=none"],
    "smpo": ["method=smpo", "data.dataset.score_prefix=score"],  # ReNoise inversion, smoothed proxy preferences
    "inpo": ["method=inpo"],  # DDIM inversion + 0.1 noise, plain DPO
    "rankdpo": ["method=rankdpo", "data=ranked", "data.loader.batch_size=2"],
    "kto": ["method=kto", "data=unpaired"],
    # online step-level: the demo's sampler (10 DDIM steps, guidance 2), 4 candidates, SPO's fixed threshold
    "spo": ["method=spo", "reward@method.online.scorer.reward=shapes_proxy", "method.online.num_steps=10",
            "method.online.guidance=2.0", "method.online.divert_start_step=2", "method.online.pairs_per_prompt=2"],
    "lpo": ["method=lpo", "method.online.num_steps=10", "method.online.guidance=2.0",
            "method.online.pairs_per_prompt=2"],  # + the LRM directory, trained by train_lrm_for_lpo
}


def compose(out_dir: Path, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from diffusion_align.config import register_resolvers

    register_resolvers()
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = hydra_compose("demo", overrides=[f"output_dir={out_dir}", *overrides])
    OmegaConf.resolve(cfg)
    return cfg


def train_lrm_for_lpo(data_root: Path, work: Path, steps: int) -> Path:
    """LPO's latent reward model on the Shapes UNet, trained on the generated pairs (proxy labels), as
    ``diffalign train-lrm`` would; returns its directory."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from diffusion_align import lrm

    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = hydra_compose("train-lrm", overrides=[
            f"output_dir={work / 'lrm_run'}", "model=shapes", "data=pickapic", f"data.dataset.paths={data_root / 'data' / 'pairs'}",
            "data.dataset.hflip=false", "data.cache.enabled=true", f"data.cache.dir={work / 'lrm_cache'}",
            "data.loader.batch_size=16", f"lrm.max_steps={steps}", "lrm.learning_rate=3e-4",
            "lrm.largest_timestep=600", "lrm.projection_dim=32", "lrm.guidance=1.0", "lrm.log_every=50"])
    OmegaConf.resolve(cfg)
    return lrm.run(cfg)


def run_method(name: str, data_root: Path, work: Path, common: list[str]) -> dict:
    from accelerate.state import AcceleratorState

    from diffusion_align import demo

    AcceleratorState._reset_state(reset_partial_state=True)
    overrides = [*(["method=dpo"] if name == "dpo" else []), *METHODS[name], *common]
    cfg = compose(data_root, overrides)  # the method trains on the shared dataset under data_root/data
    run_dir = work / name
    align, trained = demo.align_stage(cfg, data_root / "data", run_dir)
    evaluation = demo.evaluate_stage(cfg, run_dir, trained)
    lines = demo.headline([evaluation])
    exact, proxy = lines["exact"], lines["proxy"]
    win = exact["win_rate"]
    return {
        "method": name,
        "exact_before": exact["base_mean"]["mean"],
        "exact_after": exact["aligned_mean"]["mean"],
        "win_rate": win["win_rate"],
        "win_low": win["low"],
        "win_high": win["high"],
        "proxy_gain": proxy["aligned_mean"]["mean"] - proxy["base_mean"]["mean"],
        "train_s": align.seconds,
        "eval_s": evaluation.seconds,
    }


def print_table(rows: list[dict]) -> None:
    print(f"{'method':<10} {'exact before':>12} {'exact after':>12} {'win rate vs base [95% CI]':>28} "
          f"{'proxy gain':>11} {'train s':>8} {'eval s':>7}")
    for r in rows:
        interval = f"{r['win_rate']:.3f} [{r['win_low']:.3f}, {r['win_high']:.3f}]"
        print(f"{r['method']:<10} {r['exact_before']:>12.4f} {r['exact_after']:>12.4f} {interval:>28} "
              f"{r['proxy_gain']:>+11.3f} {r['train_s']:>8.1f} {r['eval_s']:>7.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per method")
    parser.add_argument("--prompts", type=int, default=384, help="training prompts generated (the demo's number)")
    parser.add_argument("--eval-prompts", type=int, default=None, help="held-out prompts (default: all 324)")
    parser.add_argument("--lrm-steps", type=int, default=300, help="training steps of LPO's latent reward model")
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()
    common = [f"trainer.max_steps={args.steps}", f"generate.num_prompts={args.prompts}"]
    if args.eval_prompts:
        common.append(f"evaluate.num_prompts={args.eval_prompts}")
    work = Path(args.out or tempfile.mkdtemp(prefix="bench_shapes_"))
    from diffusion_align import demo

    started = time.perf_counter()
    generated = demo.generate_stage(compose(work, common), work)
    print(f"dataset: {json.dumps(generated.figures)} in {time.perf_counter() - started:.1f} s ({work / 'data'})")
    if "lpo" in args.methods:
        started = time.perf_counter()
        lrm_dir = train_lrm_for_lpo(work, work / "runs", args.lrm_steps)
        print(f"latent reward model for lpo: {args.lrm_steps} steps in {time.perf_counter() - started:.1f} s")
        METHODS["lpo"] = [*METHODS["lpo"], f"method.online.scorer.directory={lrm_dir}"]
    rows = [run_method(name, work, work / "runs", common) for name in args.methods]
    print_table(rows)
    (work / "bench_shapes.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
