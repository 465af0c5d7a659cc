"""The one place where configuration becomes objects.

Every object a config describes is built through :func:`build`, which refuses ``_target_``s outside an allow-list:
a config file (a shared sweep preset, a downloaded experiment) must not be able to run arbitrary code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
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
    "bitsandbytes.optim.",
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

    Interpolations are resolved first, so ``_target_: ${some.key}`` is checked by its value. Key paths are full
    dotted paths from the config root (``method.loss``), whatever node is passed. Returns every ``(key path, target)``.
    """
    if OmegaConf.is_config(cfg):
        found = list(iter_targets(OmegaConf.to_container(cfg, resolve=True), cfg._get_full_key(None)))
    else:
        found = list(iter_targets(cfg))
    for key, target in found:
        if not target.startswith(ALLOWED_TARGET_PREFIXES):
            allowed = ", ".join(p.rstrip(".") for p in ALLOWED_TARGET_PREFIXES)
            raise ConfigError(f"config key '{key}': _target_ '{target}' is not allowed (allowed packages: {allowed})")
    return found


def build(cfg: DictConfig | dict, **runtime: Any) -> Any:
    """Instantiate ``cfg`` with hydra after checking every ``_target_`` against the allow-list.

    Runtime objects (a model, parameters, a noise schedule) never travel through OmegaConf: hydra builds a partial
    of the target from the config and the objects are bound as plain Python keyword arguments. With
    ``_partial_: true`` the result stays a partial (runtime objects bound); otherwise it is called.

    Args:
        cfg: a config node with a ``_target_``.
        **runtime: objects only known at run time, passed to the target.
    """
    for key, target in check_targets(cfg):
        log.debug("build %s -> %s", key, target)
    if not runtime:
        return instantiate(cfg)
    factory = instantiate(cfg, _partial_=True)
    if cfg.get("_partial_", False):
        return functools.partial(factory, **runtime)
    return factory(**runtime)


def tiny_model_cache() -> Path:
    """Where ``${tiny_model:<family>}`` builds tiny pipelines: ``$DIFFALIGN_CACHE/tiny`` or ``~/.cache/diffusion_align``."""
    root = os.environ.get("DIFFALIGN_CACHE") or Path.home() / ".cache" / "diffusion_align"
    return Path(root) / "tiny"


def _tiny_zoo_version() -> str:
    """A digest of the tiny-zoo sources: a changed builder gets a new cache entry instead of a stale one."""
    import diffusion_align.testing as testing

    digest = hashlib.sha256()
    for source in sorted(Path(testing.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    return digest.hexdigest()[:12]


def resolve_tiny_model(family: str) -> str:
    """OmegaConf resolver ``${tiny_model:sd15}``: the path of a tiny random-weight pipeline, built on first use.

    The build goes to a temporary directory renamed into place, so concurrent or interrupted builds never leave a
    half-written pipeline under the final name.
    """
    from diffusion_align.testing import TINY_BUILDERS, build_tiny_pipeline

    if family not in TINY_BUILDERS:
        raise ConfigError(f"${{tiny_model:{family}}}: unknown family; expected one of {sorted(TINY_BUILDERS)}")
    final = tiny_model_cache() / f"{family}-{_tiny_zoo_version()}"
    if not (final / "model_index.json").is_file():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{family}.", dir=final.parent))
        build_tiny_pipeline(family, tmp)
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    return str(final)


def resolve_tiny_data(kind: str) -> str:
    """OmegaConf resolver ``${tiny_data:pairwise}``: a small synthetic Parquet dataset, written on first use.

    Kinds: ``pairwise`` (Pick-a-Pic columns), ``ranked`` (the generator's ranked table), ``video_pairs``.
    """
    from diffusion_align.testing import data as tiny_data

    writers = {
        "pairwise": tiny_data.write_tiny_pairwise_parquet,
        "ranked": tiny_data.write_tiny_ranked_parquet,
        "video_pairs": tiny_data.write_tiny_video_pairs_parquet,
    }
    if kind not in writers:
        raise ConfigError(f"${{tiny_data:{kind}}}: unknown kind; expected one of {sorted(writers)}")
    final = tiny_model_cache().parent / "tiny_data" / f"{kind}-{_tiny_zoo_version()}"
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{kind}.", dir=final.parent))
        writers[kind](tmp)
        if final.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, final)
    return str(final)


def resolve_shapes_model(name: str) -> str:
    """OmegaConf resolver ``${shapes_model:pipeline}`` (the Shapes world's text-to-image pipeline) or
    ``${shapes_model:video_pipeline}`` (the Moving Shapes world's text-to-video one): a shipped model's path."""
    from diffusion_align.moving_shapes import assets as video_assets
    from diffusion_align.shapes import assets

    shipped = {"pipeline": assets.shipped_pipeline_path, "video_pipeline": video_assets.shipped_pipeline_path}
    if name not in shipped:
        raise ConfigError(f"${{shapes_model:{name}}}: unknown shipped model; expected one of {sorted(shipped)}")
    return str(shipped[name]())


def register_resolvers() -> None:
    """Register our OmegaConf resolvers (``tiny_model``, ``tiny_data``, ``shapes_model``); the CLI and tests call it."""
    OmegaConf.register_new_resolver("tiny_model", resolve_tiny_model, replace=True)
    OmegaConf.register_new_resolver("tiny_data", resolve_tiny_data, replace=True)
    OmegaConf.register_new_resolver("shapes_model", resolve_shapes_model, replace=True)
