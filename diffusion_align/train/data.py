"""The training data loader: dataset from ``conf/data``, the optional latent + text-embedding cache, seeded order."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from diffusion_align.config import ConfigError, build
from diffusion_align.data import (
    DataFormatError,
    PreferenceDataset,
    UnpairedDataset,
    build_cache,
    collate_preference,
)
from diffusion_align.train.sampler import EpochPermutationSampler

log = logging.getLogger(__name__)


def make_dataset(cfg: DictConfig, adapter):
    """``cfg.data.dataset``, read through the cache when ``cfg.data.cache.enabled``.

    The cache is built on first use (a killed build resumes; a cache of other data, resolution or encoder is refused
    as stale). Under several processes it is built by the main process first, the others then read it.
    """
    dataset = build_dataset(cfg)
    check_unpaired(cfg, dataset)
    report_bad_rows(dataset)
    cache = cfg.data.cache
    if not cache.enabled:
        return dataset
    cache_dir = Path(cache.dir) if cache.dir else Path(cfg.output_dir) / "cache"
    return build_cache(
        dataset,
        encode_posterior=adapter.vae_posterior,
        encode_prompts=adapter.encode_prompts,
        out_dir=cache_dir,
        batch_size=cache.batch_size,
        encoder_id=f"{adapter.family}:{cfg.model.adapter.path}:{cfg.model.resolution}",
    )


def build_dataset(cfg: DictConfig):
    """``cfg.data.dataset``; a data problem surfaces as itself (a :class:`DataFormatError` naming file, row and
    field, or the missing file), not wrapped in hydra's ``InstantiationException`` as a quoted repr."""
    try:
        return build(cfg.data.dataset)
    except InstantiationException as error:
        if isinstance(error.__cause__, (DataFormatError, FileNotFoundError)):
            raise error.__cause__ from None
        raise


def check_unpaired(cfg: DictConfig, dataset) -> None:
    """A method of ``inputs: unpaired`` (Diffusion-KTO) takes single images with a desirable flag, the others take
    pairs or lists: a mismatch is refused here, naming the data config to use."""
    method = cfg.get("method")
    if method is None or method.get("inputs") is None:  # a config without a training method (train-lrm) reads any
        return
    unpaired = isinstance(dataset, UnpairedDataset)
    if method.inputs == "unpaired" and not unpaired:
        raise ConfigError(f"method {method.name} trains on single images marked desirable or not: use "
                          "data=unpaired with data.dataset.source.paths=<Pick-a-Pic-format files> (the pairs' winners "
                          f"desirable, losers not), not the {type(dataset).__name__} of data.dataset")
    if unpaired and method.inputs not in ("unpaired", "step"):
        raise ConfigError(f"data=unpaired gives single images, but method {method.name} takes "
                          f"{method.inputs} inputs: use data=pickapic (or the data config of your format)")


def report_bad_rows(dataset) -> None:
    """Log what ``on_bad_row=skip`` left out (rows per reason and the first messages), if anything."""
    source = dataset.source if isinstance(dataset, UnpairedDataset) else dataset
    if isinstance(source, PreferenceDataset) and source.bad_rows.total:
        examples = "\n".join(f"  {e}" for e in source.bad_rows.examples)
        log.warning("data.dataset.on_bad_row=skip: %s\nfirst skipped rows:\n%s", source.bad_rows, examples)


def make_loader(cfg: DictConfig, adapter) -> DataLoader:
    """A loader over the dataset in a seeded per-epoch order; full batches only (static shapes).

    Workers are not persistent: each epoch's workers start from the dataset's current epoch (its augmentation and
    prompt dropout are fixed by (seed, epoch, row)).
    """
    dataset = make_dataset(cfg, adapter)
    loader_cfg = cfg.data.loader
    if len(dataset) < loader_cfg.batch_size:
        raise ConfigError(
            f"data.loader.batch_size={loader_cfg.batch_size} but the dataset has only {len(dataset)} usable rows "
            f"(after the tie policy and skipped rows)"
        )
    return DataLoader(
        dataset,
        batch_size=loader_cfg.batch_size,
        sampler=EpochPermutationSampler(len(dataset), seed=cfg.seed),
        collate_fn=collate_preference,
        num_workers=loader_cfg.num_workers,
        pin_memory=loader_cfg.pin_memory,
        drop_last=True,
    )


def epoch_batches(accelerator, loader: DataLoader, epoch: int, skip: int = 0):
    """The (prepared) loader's batches of ``epoch``: the sampler's seeded order and the dataset's augmentation and
    prompt dropout for that epoch, the first ``skip`` batches left out (a resume). Training and the reference's
    precompute pass walk the data through this one function, so they see the same batches."""
    loader.set_epoch(epoch)
    loader.dataset.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip) if skip else loader
