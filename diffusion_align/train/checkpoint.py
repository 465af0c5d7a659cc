"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``checkpoint-<step>`` holding the trainable parameters (safetensors), the optimizer and
LR-scheduler states, the loop position and any extra state (an EMA reference). It is written into a temporary
directory and renamed into place, so a kill at any moment leaves every complete checkpoint loadable and never a
half-written one under a checkpoint name. Loading uses safetensors and ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

PREFIX = "checkpoint-"
FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json")


@dataclass
class LoopState:
    """Where the loop is: optimizer steps done, current epoch, batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_nonfinite: int = 0


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (LoRA layers, or every weight in a full fine-tune), contiguous CPU copies."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    root: str | Path,
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    extra: dict[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
) -> Path:
    """Write ``root/checkpoint-<step>`` atomically and prune all but the ``keep_last`` newest."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    if extra:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in extra.items()}, tmp / "extra.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_checkpoint(root: str | Path, request: str | None) -> Path | None:
    """``None`` → no resume; ``"latest"`` → newest complete checkpoint in ``root`` (or None); else a path."""
    if request is None:
        return None
    if request == "latest":
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(request)
    if not path.is_dir():
        raise FileNotFoundError(f"trainer.resume_from_checkpoint: no checkpoint directory at {path}")
    return path


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler
) -> tuple[LoopState, dict[str, torch.Tensor]]:
    """Restore ``model``'s trainable parameters, optimizer and scheduler; return the loop state and extra tensors.

    Validates the checkpoint first: every file present, and the trainable parameter names and shapes equal to the
    model's (a checkpoint from another model or LoRA rank is refused with the mismatching names).
    """
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    saved = load_file(path / "trainable.safetensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wrong = sorted(set(saved) ^ set(params)) + sorted(n for n in saved if n in params and saved[n].shape != params[n].shape)
    if wrong:
        raise ValueError(f"checkpoint {path} does not match the model's trainable parameters: {wrong[:5]}")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True, map_location="cpu"))
    state = LoopState(**json.loads((path / "state.json").read_text()))
    extra_file = path / "extra.safetensors"
    return state, (load_file(extra_file) if extra_file.is_file() else {})
