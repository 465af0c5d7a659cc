"""Side by side: our DPO-LoRA trainer (``diffalign train``) vs diffusers' research DPO script, same everything.

    python bench/bench_peer.py --diffusers-checkout ~/src/diffusers                 # CPU preset, both sides
    python bench/bench_peer.py --diffusers-checkout ~/src/diffusers --threads 2
    python bench/bench_peer.py --preset gpu --diffusers-checkout ~/src/diffusers    # bf16, 512 px, SD1.5-size UNet
    python bench/bench_peer.py --sides ours --preset smoke                          # ours only (no checkout)

The script (``examples/research_projects/diffusion_dpo/train_diffusion_dpo.py``) is run from the checkout the
user names, unchanged and never copied here, against the installed diffusers. Both sides load one pipeline written
once into the work directory (random weights: ``tiny``, ``tiny-small`` or ``sd15-size``) and read one tie-free
Pick-a-Pic-format Parquet dataset; every training knob is matched (``peer_sides.py`` lists them). Each side runs
in a fresh process under ``step_probe.py`` (class-level instruments, no edit to either program), ``--repeats`` times,
alternating sides. Columns:

- ``ms/step``: median over the steps after ``--warmup`` of the time between consecutive optimizer-step ends (one
  whole loop iteration: data, forward, reference, backward, update, logging), synchronized on a GPU;
  ``pairs/s`` = pairs per step over it.
- ``whole pairs/s``: steps x pairs / the process's wall time from spawn to exit (imports, model load, data set-up
  and latent cache, training, final save); ``first step`` and ``after`` split that wall time.
- ``peak``: ``ru_maxrss`` of the process on CPU; ``torch.cuda.max_memory_allocated`` on a GPU.
- ``batches 1 / 2``: the loss on the script's first two batches: the script's own, and ours recomputed on the
  identical inputs by our adapter, reference and loss (``peer_loss_check.py``; batch 1 is ``log 2`` on both
  sides by construction, batch 2 follows one update). The script's first run captures those two steps on the
  way (a few MB copied to host memory and saved): inside the warm-up of the ``cpu`` and ``gpu`` presets, and far
  below 1% of its wall time.

The speed-ups are ours / the script's. The last line of output is the whole result as one JSON object.

Reading it: at tiny sizes the whole-process figure is mostly what both processes share, importing torch, diffusers,
transformers, accelerate and peft and tearing them down (about 10 s on 2 CPU cores, against ~6 s for 10 steps of
the ``cpu`` preset). On a shared machine compare at ``--threads 1``: with more intra-op threads than free cores both
sides slow down by an order of magnitude, and by however much the neighbours happen to load it. The ``gpu`` preset
casts the frozen weights to bf16 on both sides (LoRA float32, autocast); there the recomputed first-batch loss
agrees to bf16 precision, not to the last bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

import peer_sides
from peer_sides import Settings, SideResult

PRESETS = {
    "cpu": Settings("tiny", 64, 4, 4, "no", steps=10, warmup=2, rows=40, threads=1, device="cpu"),
    "gpu": Settings("sd15-size", 512, 8, 4, "bf16", steps=10, warmup=3, rows=80, device="cuda"),
    "smoke": Settings("tiny-small", 32, 2, 4, "no", steps=3, warmup=1, rows=6, threads=1, device="cpu"),
}
PEER = "diffusers script"


def settings_from(args: argparse.Namespace) -> Settings:
    """The preset with every option the user gave applied; ``rows`` defaults to steps x pairs (one epoch)."""
    fields = {f.name for f in dataclasses.fields(Settings)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    settings = dataclasses.replace(PRESETS[args.preset], **given)
    if args.rows is None:
        settings = dataclasses.replace(settings, rows=settings.steps * settings.batch_size)
    if settings.warmup < 1 or settings.warmup >= settings.steps - 1:
        raise SystemExit(f"--warmup {settings.warmup}: expected 1 <= warmup < steps - 1 ({settings.steps - 1})")
    if settings.rows < settings.batch_size:
        raise SystemExit(f"--rows {settings.rows}: expected at least --batch-size ({settings.batch_size}) pairs")
    return settings


def summarize(runs: list[SideResult], settings: Settings) -> dict:
    """Medians over the repeats of one side: steady-state ms/step, pairs/s, whole-process figures, peak memory."""
    steady = [statistics.median(steady_intervals(run, settings.warmup)) for run in runs]
    wall = statistics.median(r.wall_s for r in runs)
    ms = 1000 * statistics.median(steady)
    cuda = [r.cuda_peak_bytes for r in runs if r.cuda_peak_bytes is not None]
    return {
        "side": runs[0].name,
        "ms_per_step": ms,
        "steady_pairs_per_s": settings.batch_size / (ms / 1000),
        "wall_s": wall,
        "whole_pairs_per_s": settings.steps * settings.batch_size / wall,
        "to_first_step_end_s": statistics.median(r.step_end_s[0] for r in runs),
        "after_last_step_s": statistics.median(r.wall_s - r.step_end_s[-1] for r in runs),
        "peak_rss_gib": max(r.peak_rss_bytes for r in runs) / 2**30,
        "cuda_peak_gib": max(cuda) / 2**30 if cuda else None,
        "torch_threads": runs[0].torch_threads,
        "losses": runs[0].losses,
        "repeats": len(runs),
        "notes": runs[0].notes,
    }


def steady_intervals(run: SideResult, warmup: int) -> list[float]:
    """Seconds between consecutive optimizer-step ends, for the steps after the first ``warmup``."""
    ends = run.step_end_s
    return [b - a for a, b in zip(ends[warmup - 1 :], ends[warmup:])]


def side_plan(args: argparse.Namespace) -> list[tuple[str, bool | None]]:
    """``(row name, our latent cache)`` per side to run; ``None`` for the script."""
    plan: list[tuple[str, bool | None]] = [(PEER, None)] if "peer" in args.sides else []
    if "ours" in args.sides:
        caches = {"off": [False], "on": [True], "both": [False, True]}[args.cache]
        plan += [(f"ours (cache {'on' if cache else 'off'})", cache) for cache in caches]
    return plan


def run_all(args: argparse.Namespace, settings: Settings, work: Path) -> tuple[dict[str, list[SideResult]], Path | None]:
    """Build the shared model and data, then run every side ``--repeats`` times, alternating.

    Returns:
        the runs of each side, and the script's captured first steps (its first run), if it ran.
    """
    script = peer_sides.peer_script(args.diffusers_checkout) if "peer" in args.sides else None
    model = peer_sides.build_model(settings, work / "model")
    data = peer_sides.write_data(settings, work / "data")
    plan = side_plan(args)
    results: dict[str, list[SideResult]] = {name: [] for name, _ in plan}
    first_steps = None
    for repeat in range(args.repeats):
        for name, cache in plan:
            out = work / "runs" / f"{name.split()[0]}{'' if cache is None else '-cache-' + str(cache).lower()}-{repeat}"
            if cache is None:
                capture = out / "first_steps.pt" if repeat == 0 else None
                program = peer_sides.peer_program(settings, script, model, data, out)
                result = peer_sides.run_side(name, program, settings, out, capture=capture, placeholder_wandb=True)
                first_steps = first_steps or capture
            else:
                program = peer_sides.ours_program(settings, model, data, out, cache)
                result = peer_sides.run_side(name, program, settings, out)
            results[name].append(result)
            print(f"  {name} run {repeat + 1}/{args.repeats}: {result.wall_s:.1f} s", file=sys.stderr, flush=True)
    return results, first_steps


def format_table(rows: list[dict], first_batches: list[dict], settings: Settings) -> str:
    peak_name = "peak GiB (cuda)" if settings.device == "cuda" else "peak GiB (RSS)"
    lines = [f"{'side':<18} {'ms/step':>9} {'pairs/s':>8} {'whole pairs/s':>13} {'wall s':>7} {'first step':>10} "
             f"{'after':>6} {peak_name:>15} {'threads':>7}  batches 1 / 2 loss"]
    for row in rows:
        peak = row["cuda_peak_gib"] if settings.device == "cuda" else row["peak_rss_gib"]
        lines.append(f"{row['side']:<18} {row['ms_per_step']:>9.1f} {row['steady_pairs_per_s']:>8.2f} "
                     f"{row['whole_pairs_per_s']:>13.3f} {row['wall_s']:>7.1f} {row['to_first_step_end_s']:>10.1f} "
                     f"{row['after_last_step_s']:>6.1f} {peak:>15.3f} {row['torch_threads']:>7}  "
                     f"{batch_losses(row['side'], first_batches)}")
    return "\n".join(lines)


def batch_losses(side: str, first_batches: list[dict]) -> str:
    if not first_batches:
        return "-"
    key = "script" if side == PEER else "ours_forward"
    return " / ".join(f"{b[key]:.6f}" for b in first_batches)


def format_first_batches(first_batches: list[dict]) -> str:
    lines = ["identical batches (the script's first steps recomputed by our code):",
             f"{'batch':>5} {'script':>10} {'ours on its predictions':>24} {'ours forward':>13} {'max |diff|':>11} "
             f"{'noisy input max |diff|':>23}"]
    for b in first_batches:
        diff = max(abs(b["ours_on_script_predictions"] - b["script"]), abs(b["ours_forward"] - b["script"]))
        lines.append(f"{b['step']:>5} {b['script']:>10.6f} {b['ours_on_script_predictions']:>24.6f} "
                     f"{b['ours_forward']:>13.6f} {diff:>11.2e} {b['noisy_input_max_abs_diff']:>23.2e}")
    return "\n".join(lines)


def speedups(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Ours / the script's pairs per second, whole process and steady state, for each of our rows."""
    peer = next((r for r in rows if r["side"] == PEER), None)
    if peer is None:
        return {}
    return {
        r["side"]: {"whole": r["whole_pairs_per_s"] / peer["whole_pairs_per_s"],
                    "steady": r["steady_pairs_per_s"] / peer["steady_pairs_per_s"]}
        for r in rows if r["side"] != PEER
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--diffusers-checkout", default=os.environ.get("DIFFALIGN_DIFFUSERS_CHECKOUT"),
                        help="diffusers working tree or the DPO script's path (default: $DIFFALIGN_DIFFUSERS_CHECKOUT)")
    parser.add_argument("--sides", nargs="+", choices=["ours", "peer"], default=["ours", "peer"])
    parser.add_argument("--cache", choices=["off", "on", "both"], default="both", help="our latent cache")
    parser.add_argument("--model", choices=peer_sides.MODELS)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batch-size", type=int, dest="batch_size", help="pairs per step")
    parser.add_argument("--rank", type=int)
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--warmup", type=int)
    parser.add_argument("--rows", type=int, help="pairs in the dataset (default: steps x batch size)")
    parser.add_argument("--workers", type=int, help="data loader workers, both sides (default 0, the script's)")
    parser.add_argument("--threads", type=int, help="OMP/MKL threads of both processes (cpu preset: 1)")
    parser.add_argument("--repeats", type=int, default=1, help="processes per side (medians are reported)")
    parser.add_argument("--work-dir", type=Path, help="keep the model, data and runs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if "peer" in args.sides and not args.diffusers_checkout:
        parser.error("the peer side needs --diffusers-checkout PATH (or $DIFFALIGN_DIFFUSERS_CHECKOUT); "
                     "--sides ours runs our side alone")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = settings_from(args)
    if settings.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--preset {args.preset} runs on a CUDA device and none is visible")
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as temporary:
        work = args.work_dir or Path(temporary)
        results, first_steps = run_all(args, settings, work)
        rows = [summarize(runs, settings) for runs in results.values()]
        first_batches = []
        if first_steps is not None:
            from peer_loss_check import check_first_batches

            overrides = peer_sides.ours_overrides(settings, work / "model", work / "data", cache=False)
            first_batches = check_first_batches(first_steps, overrides, settings.device, settings.precision,
                                                settings.threads, work / "check")
    report(rows, first_batches, settings)


def report(rows: list[dict], first_batches: list[dict], settings: Settings) -> None:
    """The table, the speed-ups, the first-batch comparison and notes; last, the whole result as one JSON line."""
    print(f"settings: {json.dumps(dataclasses.asdict(settings))}")
    print(format_table(rows, first_batches, settings))
    for side, ratio in speedups(rows).items():
        print(f"speed-up {side} / {PEER}: whole process {ratio['whole']:.2f}x, steady state {ratio['steady']:.2f}x")
    if first_batches:
        print(format_first_batches(first_batches))
    for note in sorted({n for r in rows for n in r["notes"]}):
        print(f"note: {note}")
    print(json.dumps({"settings": dataclasses.asdict(settings), "sides": rows, "speedup": speedups(rows),
                      "first_batches": first_batches}))


if __name__ == "__main__":
    main()
