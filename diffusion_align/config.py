"""The one place where configuration becomes objects.

Every object a config describes is built through :func:`build`, which refuses ``_target_``s outside an allow-list:
a config file (a shared sweep preset, a downloaded experiment) must not be able to run arbitrary code.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import multiprocessing
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


def build_once(final: Path, build, args: tuple, what: str, marker: str = "") -> Path:
    """``final``, built by ``build(tmp, *args)`` into a temporary sibling renamed into place, once across processes.

    ``final / marker`` existing means built (``marker`` empty: ``final`` itself, e.g. a file); ``what`` names the
    thing in errors.

    A file lock beside it makes concurrent processes (``accelerate launch`` on a fresh cache) build it one at a time;
    the later ones find it built. Under an initialized process group the build runs in a fresh child process:
    transformers' ``save_pretrained`` writes weights only on rank 0 of a process group, so a build on any other
    rank (another node's, with its own cache) would lack them. ``build`` must be a module-level function.
    """
    from filelock import FileLock

    built = final / marker if marker else final
    if built.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(final) + ".lock"):
        if built.exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        if torch_distributed_rank() is None:
            build(tmp, *args)
        else:
            child = multiprocessing.get_context("spawn").Process(target=build, args=(tmp, *args))
            child.start()
            child.join()
            if child.exitcode != 0:
                raise RuntimeError(f"{final}: building this tiny {what} failed in a child process "
                                   f"(exit code {child.exitcode}; its error is above)")
        try:
            os.replace(tmp, final)
        except OSError:  # another machine's process won on a shared file system
            if not built.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def torch_distributed_rank() -> int | None:
    """This process's rank in an initialized torch.distributed process group, else ``None``."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None


def resolve_tiny_model(family: str) -> str:
    """OmegaConf resolver ``${tiny_model:sd15}``: the path of a tiny random-weight pipeline, built on first use
    (:func:`build_once`: never half-written under the final name, once across processes)."""
    from diffusion_align.testing import TINY_BUILDERS

    if family not in TINY_BUILDERS:
        raise ConfigError(f"${{tiny_model:{family}}}: unknown family; expected one of {sorted(TINY_BUILDERS)}")
    final = tiny_model_cache() / f"{family}-{_tiny_zoo_version()}"
    return str(build_once(final, _build_tiny_pipeline_into, (family,), "pipeline", marker="model_index.json"))


def _build_tiny_pipeline_into(tmp: Path, family: str) -> None:
    from diffusion_align.testing import build_tiny_pipeline

    build_tiny_pipeline(family, tmp)


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
    return str(build_once(final, writers[kind], (), "dataset"))


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
