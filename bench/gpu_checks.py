"""The Performance section's GPU figures in one command, sized for a short lease of one GPU.

    python bench/gpu_checks.py --out DIR --diffusers-checkout PATH          # every check
    python bench/gpu_checks.py --out DIR --only lora full                   # some of them (a lease in parts)
    python bench/gpu_checks.py --out DIR --list                             # the commands and their time limits
    python bench/gpu_checks.py --out DIR --preset cpu --only full           # the same plumbing, tiny, on a CPU

Each command runs in its own process under its own time limit; a failure or a time-out is recorded and the next
command runs, so one broken row does not cost the lease. Checks, in the order they run:

- ``lora``: DPO-LoRA on SD1.5's architecture (random weights, ``full_size_model.py``), 512 px, 8 pairs per step,
  rank 4, bf16, latent cache: one row per means of the 60 pairs/s target (eager; ``trainer.compile=regional``;
  ``reference.precompute=true``; both; both with gradient checkpointing, for the 0.6x memory target; both with CUDA
  graphs, ``trainer.compile_options.mode=reduce-overhead``; both with ``trainer.channels_last``), and MaPO-LoRA (no
  reference pass).
- ``full``: DPO full fine-tuning's peak memory (the allocator's) against the official design, a frozen copy: with
  the precomputed reference and ``trainer.fused_backward``, with AdamW and with Adafactor.
- ``peer``: ``bench_peer.py --preset gpu --cache on``, ours against diffusers' script side by side (needs
  ``--diffusers-checkout``; skipped without it).
- ``sdxl``: SDXL's architecture at 1024 px, DPO-LoRA, 4 pairs, bf16, gradient checkpointing, eager and regional.

Writes ``DIR/<check>-<row>.log`` (each command's whole output) and ``DIR/summary.txt`` (each command, its exit
status and its table rows). On the lent machine, with the packages it lacks carried as wheels (see the device notes),
``--out "$OUT"`` brings them back. ``--preset cpu`` runs the same commands with tiny models, 1 step and no
compilation, to check the plumbing (``tests/bench/test_gpu_checks.py``); its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
CHECKS = ("lora", "full", "peer", "sdxl")


@dataclass(frozen=True)
class Command:
    check: str
    row: str
    argv: tuple[str, ...]
    timeout_s: int


def train_rows(preset: str, models: Path) -> list[Command]:
    """The ``bench_train.py`` rows of the ``lora``, ``full`` and ``sdxl`` checks."""
    gpu = preset == "gpu"
    compile_rows = gpu  # inductor's CPU build takes minutes and says nothing about the GPU
    fused = ("--override=trainer.fused_backward=true", "--override=trainer.max_grad_norm=0")
    precompute = ("--override=reference.precompute=true",)
    regional = ("--override=trainer.compile=regional",)
    adafactor = ("--override=trainer/optimizer=adafactor",)

    def sized(model: str, resolution: int, pairs: int, checkpointing: bool = False) -> tuple[str, ...]:
        if not gpu:
            tiny = "tiny_sdxl" if model == "sdxl" else "tiny_sd15"
            return ("--models", tiny, "--resolution", "32", "--batch-size", "2", "--precision", "no", "--steps", "1",
                    "--warmup", "1", "--cache", "on")
        return ("--models", model, f"--override=model.adapter.path={models / model}", "--resolution", str(resolution),
                "--batch-size", str(pairs), "--precision", "bf16", "--steps", "10", "--warmup", "3", "--cache", "on",
                *(("--override=trainer.gradient_checkpointing=true",) if checkpointing else ()))

    def row(check: str, name: str, mode: str, size: tuple[str, ...], *extra: str, timeout: int = 240) -> Command:
        return Command(check, name, (str(BENCH / "bench_train.py"), "--modes", mode, *size, *extra), timeout)

    sd15, sdxl = sized("sd15", 512, 8), sized("sdxl", 1024, 4, checkpointing=True)
    rows = [
        row("lora", "eager", "dpo_lora", sd15),
        row("lora", "precompute", "dpo_lora", sd15, *precompute),
        row("lora", "mapo", "mapo_lora", sd15),
    ]
    if compile_rows:
        rows += [row("lora", "regional", "dpo_lora", sd15, *regional, timeout=420),
                 row("lora", "regional-precompute", "dpo_lora", sd15, *regional, *precompute, timeout=420),
                 row("lora", "regional-precompute-checkpointing", "dpo_lora", sd15, *regional, *precompute,
                     "--override=trainer.gradient_checkpointing=true", timeout=420),
                 row("lora", "regional-precompute-cudagraphs", "dpo_lora", sd15, *regional, *precompute,
                     "--override=trainer.compile_options.mode=reduce-overhead", timeout=420),
                 row("lora", "regional-precompute-channels-last", "dpo_lora", sd15, *regional, *precompute,
                     "--override=trainer.channels_last=true", timeout=420)]
    rows += [
        row("full", "frozen-copy", "dpo_full", sd15),
        row("full", "precompute-fused", "dpo_full", sd15, *precompute, *fused),
        row("full", "adafactor-frozen-copy", "dpo_full", sd15, *adafactor),
        row("full", "adafactor-precompute-fused", "dpo_full", sd15, *adafactor, *precompute, *fused),
        row("sdxl", "eager", "dpo_lora", sdxl, timeout=420),
    ]
    if compile_rows:
        rows.append(row("sdxl", "regional", "dpo_lora", sdxl, *regional, timeout=600))
    return rows


def plan(preset: str, only: list[str], models: Path, checkout: str | None) -> list[Command]:
    """Every command to run, in order: the full-size models first (GPU preset), then each check's rows."""
    commands = []
    if preset == "gpu":
        if {"lora", "full"} & set(only):
            commands.append(Command("build", "sd15", (str(BENCH / "full_size_model.py"), "sd15", str(models / "sd15"),
                                                      "--resolution", "512"), 300))
        if "sdxl" in only:
            commands.append(Command("build", "sdxl", (str(BENCH / "full_size_model.py"), "sdxl", str(models / "sdxl"),
                                                      "--resolution", "1024"), 420))
    rows = train_rows(preset, models)
    for check in CHECKS:
        if check not in only:
            continue
        if check == "peer":
            if checkout:
                argv = ("--preset", "gpu", "--cache", "on") if preset == "gpu" else ("--preset", "smoke", "--cache", "on")
                commands.append(Command("peer", "side-by-side", (str(BENCH / "bench_peer.py"), *argv,
                                                                 "--diffusers-checkout", checkout), 540))
            continue
        commands += [c for c in rows if c.check == check]
    return commands


def table_lines(output: str) -> list[str]:
    """What to keep of a command's output in the summary: its table, without progress bars or the JSON line."""
    keep = []
    for line in output.splitlines():
        line = line.rstrip()
        if not line or line.startswith("{") or "it/s]" in line or "s/it]" in line or "batch/s]" in line:
            continue
        if line.startswith((" ", "settings:", "note:", "Loading", "There are", "[")):
            continue
        keep.append(line)
    return keep[-12:]


def run(commands: list[Command], out: Path) -> list[tuple[Command, int]]:
    """Run each command (the same Python), its output to ``out/<check>-<row>.log``; the summary rewritten after each
    (a lease cut short keeps what was measured). Returns each command's exit status."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    results, blocks = [], []
    for command in commands:
        started = time.time()
        try:
            done = subprocess.run([sys.executable, *command.argv], capture_output=True, text=True, env=env,
                                  timeout=command.timeout_s)
            status, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired as expired:
            status = 124
            output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
        seconds = time.time() - started
        (out / f"{command.check}-{command.row}.log").write_text(output)
        results.append((command, status))
        blocks.append(summary_block(command, status, seconds, output))
        (out / "summary.txt").write_text("\n\n".join(blocks) + "\n")
        print(f"{command.check}/{command.row}: exit {status} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return results


def summary_block(command: Command, status: int, seconds: float, output: str) -> str:
    """A command's part of ``summary.txt``: its exit status and time, the command, and its table (or, failed, the
    end of its output)."""
    lines = table_lines(output) if status == 0 else output.strip().splitlines()[-8:]
    return "\n".join([f"## {command.check}/{command.row}: exit {status} after {seconds:.0f} s",
                      "$ python " + " ".join(command.argv), *lines])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="logs and summary.txt (on the lent machine: $OUT)")
    parser.add_argument("--preset", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--models", type=Path, help="where the full-size models are written (default: a temp dir)")
    parser.add_argument("--diffusers-checkout", default=os.environ.get("DIFFALIGN_DIFFUSERS_CHECKOUT"),
                        help="diffusers working tree holding the DPO script, for the peer check")
    parser.add_argument("--list", action="store_true", help="print the commands and their time limits, run nothing")
    args = parser.parse_args(argv)
    if args.preset == "gpu" and not args.list:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--preset gpu needs a CUDA device; --preset cpu runs the same commands tiny on a CPU")
    models = args.models or Path(os.environ.get("TMPDIR", "/tmp")) / "diffalign-gpu-checks-models"
    commands = plan(args.preset, args.only, models, args.diffusers_checkout)
    if args.list:
        total = sum(c.timeout_s for c in commands)
        for c in commands:
            print(f"{c.check}/{c.row} (at most {c.timeout_s} s): python {' '.join(c.argv)}")
        print(f"{len(commands)} commands, at most {total / 60:.0f} min in all")
        return
    results = run(commands, args.out)
    failed = [f"{c.check}/{c.row}" for c, status in results if status != 0]
    print((args.out / "summary.txt").read_text())
    if failed:
        raise SystemExit(f"failed or timed out: {', '.join(failed)} (logs in {args.out})")


if __name__ == "__main__":
    main()
