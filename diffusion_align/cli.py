"""``diffalign <command> [hydra overrides]``: thin hydra mains; each imports its module and calls ``run(cfg)``.

The config of ``diffalign X`` is ``conf/X.yaml`` (installed as ``pkg://diffusion_align.conf``). Everything hydra offers
works after the command name: ``--help``, ``--cfg job``, ``-m`` sweeps, ``hydra/launcher=...``.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import hydra
from omegaconf import DictConfig

from diffusion_align.cluster import export_distributed_env
from diffusion_align.config import register_resolvers

CONFIG_PACKAGE = "pkg://diffusion_align.conf"


@dataclass(frozen=True)
class Command:
    """One sub-command: what it does and the function it runs (``module:function``)."""

    summary: str
    entry: str


COMMANDS: dict[str, Command] = {
    "train": Command("fine-tune a diffusers model on preference data with any method", "diffusion_align.train.loop:run"),
    "train-lrm": Command("train LPO's latent reward model (noisy-latent reward from the UNet) on pairwise data",
                         "diffusion_align.lrm:run"),
    "generate": Command("generate a ranked preference dataset (Syn-Pic style) as Parquet", "diffusion_align.generate.run:run"),
    "score": Command("score images (folder or Parquet) with reward models", "reward_models.scoring:run"),
    "evaluate": Command("compare models side by side: win rates, grids, HTML report", "diffusion_align.evaluate.run:run"),
    "demo": Command("an embedded world end to end (world=shapes | moving_shapes): generate, rank, align, evaluate",
                    "diffusion_align.demo:run"),
}


def usage() -> str:
    lines = ["usage: diffalign <command> [group=option ...] [key=value ...] [--help] [--cfg job] [-m]", "", "commands:"]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<10} {command.summary}")
    lines.append("")
    lines.append("`diffalign <command> --help` shows its configuration groups and composed config.")
    return "\n".join(lines)


def _task(name: str, command: Command):
    def task(cfg: DictConfig) -> None:
        export_distributed_env()  # a submitit job of several tasks: one accelerate process per task
        module_name, function_name = command.entry.split(":")
        result = getattr(importlib.import_module(module_name), function_name)(cfg)
        if isinstance(result, int) and result != 0:
            raise SystemExit(result)

    task.__name__ = name
    return task


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``diffalign`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage())
        raise SystemExit(0 if args else 2)
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"diffalign: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    register_resolvers()
    sys.argv = [f"diffalign-{name}", *rest]
    hydra.main(config_path=CONFIG_PACKAGE, config_name=name, version_base="1.3")(_task(name, COMMANDS[name]))()


if __name__ == "__main__":
    main()
