"""The one place where configuration becomes objects.

Every object a config describes is built through :func:`build`, which refuses ``_target_``s outside an allow-list:
a config file (a shared sweep preset, a downloaded experiment) must not be able to run arbitrary code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)

ALLOWED_TARGET_PREFIXES: tuple[str, ...] = (
    "diffusion_align.",
    "reward_models.",
    "torch.optim.",
    "diffusers.",
    "transformers.",
    "peft.",
)


class ConfigError(ValueError):
    """A configuration value is missing, unknown or not allowed; the message names the key."""


def iter_targets(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Yield ``(key path, target)`` for every ``_target_`` in a resolved container, depth first."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if target is not None:
            yield (path or "<root>", str(target))
        for key, value in node.items():
            yield from iter_targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from iter_targets(value, f"{path}[{i}]")


def check_targets(cfg: DictConfig | ListConfig | dict | list) -> list[tuple[str, str]]:
    """Raise :class:`ConfigError` for the first ``_target_`` outside :data:`ALLOWED_TARGET_PREFIXES`.

    Interpolations are resolved first, so ``_target_: ${some.key}`` is checked by its value.
    Returns every ``(key path, target)`` found.
    """
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    found = list(iter_targets(container))
    for key, target in found:
        if not target.startswith(ALLOWED_TARGET_PREFIXES):
            allowed = ", ".join(p.rstrip(".") for p in ALLOWED_TARGET_PREFIXES)
            raise ConfigError(f"config key '{key}': _target_ '{target}' is not allowed (allowed packages: {allowed})")
    return found


def build(cfg: DictConfig | dict, **runtime: Any) -> Any:
    """Instantiate ``cfg`` with hydra after checking every ``_target_`` against the allow-list.

    Args:
        cfg: a config node with a ``_target_`` (``_partial_: true`` gives a ``functools.partial``).
        **runtime: objects only known at run time (a model, parameters), passed to the constructor.
    """
    for key, target in check_targets(cfg):
        log.debug("build %s -> %s", key, target)
    return instantiate(cfg, **runtime)
