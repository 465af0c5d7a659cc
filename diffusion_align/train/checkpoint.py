"""Atomic, resumable training checkpoints.

A checkpoint is a directory ``checkpoint-<step>`` holding the trainable parameters (safetensors), the optimizer and
LR-scheduler states, the loop position and any extra state (an EMA reference). It is written into a temporary
directory and renamed into place, so a kill at any moment leaves every complete checkpoint loadable and never a
half-written one under a checkpoint name; a checkpoint being replaced or pruned is first renamed to a hidden name,
so it never lingers half-deleted under its real name either. Hidden leftovers of a killed save are removed by the
next save. Resuming validates what it loads: ``latest`` skips (with a warning) a newer checkpoint that is incomplete
or unreadable for the previous good one, and refuses to start over when none is good. Loading uses safetensors and
``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from diffusion_align.train.sharding import copy_whole_into, inner_optimizer, whole_trainable

log = logging.getLogger(__name__)

PREFIX = "checkpoint-"
FILES = ("trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json")


class CheckpointError(ValueError):
    """A checkpoint directory cannot be resumed from (corrupt, truncated, or of another model); names the file."""


@dataclass
class LoopState:
    """Where the loop is: optimizer steps done, current epoch, batches of that epoch already consumed."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    skipped_nonfinite: int = 0


def save_checkpoint(
    root: str | Path,
    state: LoopState,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    extra: dict[str, torch.Tensor] | None = None,
    keep_last: int | None = None,
    trainable: dict[str, torch.Tensor] | None = None,
    optimizer_state: dict | None = None,
    staging: Path | None = None,
) -> Path:
    """Write ``root/checkpoint-<step>`` atomically and prune all but the ``keep_last`` newest.

    The trainable parameters (LoRA layers, or every weight of a full fine-tune) and the optimizer state are read from
    ``model`` and ``optimizer`` unless given (``trainable`` by name, ``optimizer_state`` as ``optimizer.state_dict()``
    lays it out): a sharded run gathers them on every process first (:mod:`~diffusion_align.train.sharding`).
    ``staging``: the temporary directory (from :func:`staging_dir`) into which other processes already wrote their
    part (DeepSpeed's partitions); it becomes the checkpoint with the rest.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    remove_hidden_leftovers(root, keep=staging)
    final = root / f"{PREFIX}{state.step}"
    tmp = staging_dir(root, state.step) if staging is None else staging
    trainable = whole_trainable(model) if trainable is None else trainable
    save_file(trainable, tmp / "trainable.safetensors", metadata={"optimizer": optimizer_name(optimizer)})
    if extra:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in extra.items()}, tmp / "extra.safetensors")
    torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state)))
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    replaced = hide(final) if final.exists() else None
    os.replace(tmp, final)
    if replaced is not None:
        shutil.rmtree(replaced)
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(hide(old))
    return final


def hide(path: Path) -> Path:
    """Rename ``path`` to a hidden sibling (which :func:`list_checkpoints` ignores) and return the new path."""
    hidden = path.with_name(f".{path.name}.removing-{os.getpid()}")
    os.replace(path, hidden)
    return hidden


def staging_dir(root: str | Path, step: int) -> Path:
    """A new hidden temporary directory in ``root`` for the checkpoint of ``step`` (renamed into place when done)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{PREFIX}{step}.", dir=root))


def remove_hidden_leftovers(root: Path, keep: Path | None = None) -> None:
    """Delete the hidden ``.checkpoint-*`` directories a killed save or prune left in ``root`` (except ``keep``)."""
    for leftover in root.glob(f".{PREFIX}*"):
        if leftover.is_dir() and leftover != keep:
            shutil.rmtree(leftover)


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are not listed)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_checkpoint(root: str | Path, request: str | None) -> Path | None:
    """``None`` → no resume; ``"latest"`` → newest good checkpoint in ``root`` (or None); else a path.

    Raises:
        FileNotFoundError: a requested path is not a directory, or is missing files.
        CheckpointError: a requested path is unreadable; or ``latest`` finds checkpoints and none of them is good
            (starting over would silently discard the run).
    """
    if request is None:
        return None
    if request == "latest":
        return latest_good_checkpoint(root)
    path = Path(request)
    if not path.is_dir():
        raise FileNotFoundError(f"trainer.resume_from_checkpoint: no checkpoint directory at {path}")
    validate_checkpoint(path)
    return path


def latest_good_checkpoint(root: str | Path) -> Path | None:
    """The newest checkpoint that passes :func:`validate_checkpoint`; newer bad ones are skipped with a warning."""
    found, problems = list_checkpoints(root), []
    for path in reversed(found):
        try:
            validate_checkpoint(path)
        except (FileNotFoundError, CheckpointError) as error:
            log.warning("not resuming from %s: %s", path, error)
            problems.append(str(error))
            continue
        return path
    if found:
        raise CheckpointError(f"no checkpoint in {root} can be resumed from; remove them to start over:\n  "
                              + "\n  ".join(problems))
    return None


def validate_checkpoint(path: str | Path) -> LoopState:
    """Check a checkpoint without loading its tensors: every file present, ``state.json`` a loop state whose step
    is the directory's, safetensors headers and ``torch.save`` archives readable. Returns the loop state.

    Raises:
        FileNotFoundError: a file is missing.
        CheckpointError: a file is truncated or corrupt, or the state disagrees with the directory name.
    """
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    state = read_state(path / "state.json")
    suffix = path.name[len(PREFIX) :]
    if path.name.startswith(PREFIX) and suffix.isdigit() and int(suffix) != state.step:
        raise CheckpointError(f"{path / 'state.json'}: step {state.step}, but the directory is step {suffix}")
    for name in ("trainable.safetensors", "extra.safetensors"):
        if name == "trainable.safetensors" or (path / name).is_file():
            try:
                with safe_open(path / name, framework="pt") as handle:
                    handle.keys()  # opening parses the header; listing it proves the header is whole
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{path / name}: not a readable safetensors file ({exc})") from exc
    for name in ("optimizer.pt", "scheduler.pt"):
        if not zipfile.is_zipfile(path / name):
            raise CheckpointError(f"{path / name}: not a complete torch.save archive (truncated or corrupt)")
    return state


def read_state(file: Path) -> LoopState:
    """``state.json`` as a :class:`LoopState` (every field an integer)."""
    try:
        values = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
    expected = {f.name for f in fields(LoopState)}
    if not isinstance(values, dict) or set(values) != expected or not all(type(v) is int for v in values.values()):
        raise CheckpointError(f"{file}: expected integer fields {sorted(expected)}, got {values!r}")
    return LoopState(**values)


def read_torch_file(file: Path) -> dict:
    """A ``torch.save`` file read with ``weights_only=True`` (no code runs); damage raises :class:`CheckpointError`.

    Memory-mapped: every process of a sharded run reads the whole file, and only the pages it copies from are loaded.
    """
    try:
        return torch.load(file, weights_only=True, map_location="cpu", mmap=True)
    except Exception as exc:  # zipfile, pickle and torch each report a damaged or hostile archive their own way
        raise CheckpointError(f"{file}: cannot be read ({exc})") from exc


def restore_state(file: Path, into, saved: dict, load=None) -> None:
    """``into.load_state_dict(saved)`` (or ``load(saved)``), errors naming the file."""
    try:
        (into.load_state_dict if load is None else load)(saved)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{file} does not fit this run's {type(into).__name__} ({exc}): was it saved with "
                              "another trainer.optimizer, lr_scheduler or set of trainable parameters?") from exc


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The optimizer's class (inside accelerate's wrapper and DeepSpeed's ZeRO optimizer), recorded in each
    checkpoint."""
    return type(inner_optimizer(optimizer)).__name__


def check_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """A checkpoint's optimizer state fits only the same optimizer: ``load_state_dict`` would take another one's
    state silently (it replaces the parameter groups wholesale) and fail at its first step."""
    with safe_open(path / "trainable.safetensors", framework="pt") as handle:
        saved = (handle.metadata() or {}).get("optimizer")
    if saved is not None and saved != optimizer_name(optimizer):
        raise CheckpointError(f"checkpoint {path} was written with optimizer {saved}; this run's trainer.optimizer is "
                              f"{optimizer_name(optimizer)}: resume with the same optimizer, or use a new output_dir")


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, load_optimizer=None
) -> tuple[LoopState, dict[str, torch.Tensor]]:
    """Restore ``model``'s trainable parameters, optimizer and scheduler; return the loop state and extra tensors.

    The files hold whole tensors; a sharded model keeps its own shards of them, and ``load_optimizer`` (called with
    the ``optimizer.state_dict()``-layout state; default ``optimizer.load_state_dict``) does the same for the
    optimizer (:func:`~diffusion_align.train.sharding.load_optimizer_state`).

    Validates the checkpoint first (:func:`validate_checkpoint`), and the trainable parameter names and shapes
    against the model's (a checkpoint from another model or LoRA rank is refused with the mismatching names).
    """
    path = Path(path)
    state = validate_checkpoint(path)
    saved = load_file(path / "trainable.safetensors")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    wrong = sorted(set(saved) ^ set(params)) + sorted(n for n in saved if n in params and saved[n].shape != params[n].shape)
    if wrong:
        raise CheckpointError(f"checkpoint {path} does not match the model's trainable parameters: {wrong[:5]}")
    check_optimizer(path, optimizer)
    optimizer_state = read_torch_file(path / "optimizer.pt")
    scheduler_state = read_torch_file(path / "scheduler.pt")
    with torch.no_grad():  # every check passed: only now is anything of the run changed
        for name, value in saved.items():
            copy_whole_into(params[name], value)
    restore_state(path / "optimizer.pt", optimizer, optimizer_state, load=load_optimizer)
    restore_state(path / "scheduler.pt", scheduler, scheduler_state)
    extra_file = path / "extra.safetensors"
    return state, (load_file(extra_file) if extra_file.is_file() else {})
