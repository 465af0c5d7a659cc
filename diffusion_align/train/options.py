"""Checks of the ``trainer`` config section that hydra cannot make.

Hydra refuses ``trainer.max_step=10`` on the command line (the key is not in the composed config), but a key
appended with ``+`` or written in an experiment or user YAML file is merged in silently, and a misspelt
hyperparameter would then simply not be used. :func:`check_trainer_config` refuses every key that the packaged
``conf/trainer/default.yaml`` does not define, naming it and the closest known key.
"""

from __future__ import annotations

import difflib
from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from diffusion_align.config import ConfigError
from diffusion_align.train.compile import compile_mode
from diffusion_align.train.fused import check_fused_backward

NONFINITE_POLICIES = ("skip", "stop")


def default_trainer_config() -> DictConfig:
    """The packaged ``conf/trainer/default.yaml`` (its ``defaults`` list names the trainer's sub-groups)."""
    return OmegaConf.create((files("diffusion_align.conf") / "trainer" / "default.yaml").read_text())


def known_keys(defaults: DictConfig) -> dict[str, object]:
    """Key -> default value; a sub-group of the ``defaults`` list (``optimizer``) maps to ``None`` (any keys)."""
    known: dict[str, object] = {k: v for k, v in defaults.items() if k != "defaults"}
    for entry in defaults.get("defaults", []):
        if isinstance(entry, DictConfig):
            known.update({str(group): None for group in entry if str(group) != "_self_"})
    return known


def unknown_keys(node: DictConfig, defaults: dict[str, object], prefix: str) -> list[str]:
    """Dotted keys of ``node`` absent from ``defaults``, recursing into sections whose default is a non-empty
    mapping (an empty default mapping, such as ``validation.pipeline_kwargs``, takes any keys)."""
    found = []
    for key, value in node.items():
        if key not in defaults:
            close = difflib.get_close_matches(str(key), [str(k) for k in defaults], n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            found.append(f"'{prefix}{key}'{hint}")
            continue
        default = defaults[key]
        if isinstance(default, DictConfig) and len(default) and isinstance(value, DictConfig):
            found.extend(unknown_keys(value, dict(default.items()), f"{prefix}{key}."))
    return found


def check_trainer_config(trainer: DictConfig) -> None:
    """Raise :class:`ConfigError` for an unknown ``trainer`` key, ``trainer.compile`` mode,
    ``trainer.on_nonfinite`` policy, or a ``trainer.fused_backward`` that the other keys rule out."""
    unknown = unknown_keys(trainer, known_keys(default_trainer_config()), "trainer.")
    if unknown:
        raise ConfigError(f"unknown trainer key(s) {', '.join(unknown)}: see conf/trainer/default.yaml for the "
                          "keys the training loop reads")
    compile_mode(trainer.compile)
    if trainer.on_nonfinite not in NONFINITE_POLICIES:
        raise ConfigError(f"trainer.on_nonfinite '{trainer.on_nonfinite}': expected one of "
                          f"{', '.join(NONFINITE_POLICIES)}")
    check_fused_backward(trainer)
