"""The latent + text-embedding cache: encode every image and caption once, not at every step.

The official scripts run the VAE on both images of every pair at every step. The cache stores, per item, the
**unscaled VAE posterior** (``mean``, ``std``: each step still draws a fresh latent ``mean + std·ε``, as the scripts
sample ``latent_dist``), the caption's text conditioning, and the item's metadata. With ``hflip`` on, both
orientations of every candidate are encoded, and the flip the source dataset would draw for
``(seed, epoch, index)`` is picked at read time, so caching keeps the augmentation. The empty prompt's
embedding is stored too, for prompt dropout.

Layout of ``out_dir``::

    manifest.json               format, encoder_id, content fingerprint, sampling settings, batch_size, complete
    empty_prompt.safetensors    prompt_embeds.<name>: [1, ...]
    shard-00000.safetensors     latent_mean / latent_std [n, O, K, ...], prompt_embeds.<name> [n, ...],
                                meta.<name> [n, ...], index [n]; metadata "prompts": JSON list of n captions

Every file is written to a temporary name, flushed to disk and renamed (:func:`diffusion_align.io.write_atomic`,
``durable=True``), so a killed build or a machine crash leaves only whole files. The next ``build_cache`` call
deletes the temporaries a killed build left, checks the header of every shard already written (a truncated or
damaged one is re-encoded, with a warning) and resumes at the first missing shard. A cache built from other data
(files, sizes, mtimes), another resolution, transform or encoder raises :class:`StaleCacheError` naming what
differs; a damaged file met while reading raises :class:`CorruptCacheError` naming it.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffusion_align.data.datasets import PreferenceDataset
from diffusion_align.data.transforms import SamplingSettings
from diffusion_align.data.unpaired import UnpairedDataset
from diffusion_align.io import write_atomic

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
MANIFEST = "manifest.json"
EMPTY_PROMPT = "empty_prompt.safetensors"
SHARD_KEYS = ("latent_mean", "latent_std", "index")  # tensors every shard holds (besides prompt_embeds.*, meta.*)
MANIFEST_KEYS = ("format", "encoder_id", "content", "sampling", "batch_size", "num_items", "complete")
REBUILD = "delete it (or the whole cache directory) and run build_cache again to rebuild it"

EncodePosterior = Callable[[Tensor], tuple[Tensor, Tensor]]
EncodePrompts = Callable[[list[str]], dict[str, Tensor]]


class StaleCacheError(RuntimeError):
    """The cache on disk was built from other data, transforms or encoder than the ones asked for."""


class CorruptCacheError(StaleCacheError):
    """A file of the cache on disk is truncated, empty or not what ``build_cache`` writes (its message names it)."""


def shard_path(out_dir: Path, shard: int) -> Path:
    return out_dir / f"shard-{shard:05d}.safetensors"


def _save_atomically(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda temporary: save_file(contiguous, str(temporary), metadata=metadata), durable=True)


def _write_json_atomically(obj: dict, path: Path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True)
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), durable=True)


def _remove_temporaries(out: Path) -> None:
    """Delete the temporaries a killed build left (``.<file>.<host>.<pid>.tmp``; older builds: ``.<file>.tmp-<pid>``)."""
    for pattern in (".shard-*.safetensors.*", f".{EMPTY_PROMPT}.*", f".{MANIFEST}.*"):
        for temporary in out.glob(pattern):
            if temporary.name.endswith(".tmp") or ".tmp-" in temporary.name:
                temporary.unlink(missing_ok=True)


def read_manifest(out_dir: str | Path) -> dict | None:
    """The cache's manifest, or ``None`` when there is none.

    Raises:
        CorruptCacheError: ``manifest.json`` is not a JSON object with every key ``build_cache`` writes.
    """
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _corrupt(path, f"not valid JSON ({exc})") from exc
    missing = [key for key in MANIFEST_KEYS if key not in manifest] if isinstance(manifest, dict) else MANIFEST_KEYS
    if missing:
        raise _corrupt(path, f"expected a JSON object with the keys {list(MANIFEST_KEYS)}, missing {list(missing)}")
    return manifest


def _damage(path: Path, num_items: int | None = None) -> str | None:
    """What is wrong with the safetensors file at ``path`` (``None``: nothing found). Reads the header only.

    Args:
        num_items: for a shard, the items it must hold (its tensors, item count and captions are checked too).
    """
    try:
        handle = safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as exc:
        return f"not a readable safetensors file ({exc})"
    if num_items is None:
        return None
    missing = [key for key in SHARD_KEYS if key not in handle.keys()]
    if missing:
        return f"no tensor(s) {missing}"
    rows = handle.get_slice("index").get_shape()[0]
    try:
        prompts = json.loads((handle.metadata() or {})["prompts"])
    except (KeyError, json.JSONDecodeError):
        prompts = None
    if not isinstance(prompts, list):
        return "no 'prompts' metadata holding a JSON list of captions"
    if rows != num_items or len(prompts) != num_items:
        return f"{rows} items and {len(prompts)} prompts, expected {num_items}"
    return None


def _corrupt(path: Path, problem: str) -> CorruptCacheError:
    return CorruptCacheError(f"latent cache file {path}: {problem}; {REBUILD}")


def differences(cached: object, current: object, key: str = "") -> list[str]:
    """Human-readable ``key: cache has X, now Y`` lines for every leaf where two JSON trees differ."""
    if isinstance(cached, dict) and isinstance(current, dict):
        keys = sorted(set(cached) | set(current))
        return [
            d
            for k in keys
            for d in differences(
                cached.get(k, "<absent>"), current.get(k, "<absent>"), f"{key}.{k}" if key else k
            )
        ]
    if isinstance(cached, list) and isinstance(current, list) and len(cached) == len(current):
        return [d for i, (a, b) in enumerate(zip(cached, current)) for d in differences(a, b, f"{key}[{i}]")]
    return [] if cached == current else [f"{key}: cache has {cached!r}, now {current!r}"]


def _stale(out_dir: Path, found: list[str]) -> StaleCacheError:
    lines = "\n  ".join(found)
    return StaleCacheError(
        f"latent cache {out_dir} was built for other data or encoder:\n  {lines}\n"
        "delete the directory (or choose another cache.dir) to rebuild it"
    )


def _identity(dataset: PreferenceDataset, encoder_id: str) -> dict:
    content = json.loads(json.dumps(dataset.content_fingerprint()))
    return {"format": CACHE_FORMAT, "encoder_id": encoder_id, "content": content}


class _CacheSources(Dataset):
    """``dataset.cache_source(i)`` as a dataset, so a DataLoader can decode shards in worker processes."""

    def __init__(self, dataset: PreferenceDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[str, Tensor, dict[str, Tensor]]:
        return self.dataset.cache_source(index)


def _encode_shard(
    entries: list[tuple[str, Tensor, dict[str, Tensor]]],
    start: int,
    encode_posterior: EncodePosterior,
    encode_prompts: EncodePrompts,
    batch_size: int,
) -> dict[str, Tensor]:
    """Encode the ``cache_source`` entries of items ``start, start+1, ...``: ``batch_size`` images per call."""
    pixels = torch.stack([p for _, p, _ in entries])  # [n, O, K, ...]
    posterior = [encode_posterior(chunk) for chunk in pixels.flatten(0, 2).split(batch_size)]
    mean = torch.cat([m.detach().cpu() for m, _ in posterior]).unflatten(0, pixels.shape[:3])
    std = torch.cat([s.detach().cpu() for _, s in posterior]).unflatten(0, pixels.shape[:3])
    if mean.shape != std.shape:
        raise ValueError(
            f"encode_posterior returned mean {list(mean.shape)} and std {list(std.shape)}: expected equal"
        )
    tensors = {"latent_mean": mean, "latent_std": std, "index": torch.arange(start, start + len(entries))}
    for name, value in encode_prompts([prompt for prompt, _, _ in entries]).items():
        if value.shape[0] != len(entries):
            raise ValueError(f"encode_prompts: '{name}' has {value.shape[0]} rows for {len(entries)} prompts")
        tensors[f"prompt_embeds.{name}"] = value.detach().cpu()
    for name in entries[0][2]:
        tensors[f"meta.{name}"] = torch.stack([meta[name] for _, _, meta in entries])
    return tensors


def _start_or_resume(out: Path, dataset: PreferenceDataset, identity: dict, batch_size: int) -> dict:
    """The manifest of a new build, or of a matching earlier one (stale: :class:`StaleCacheError`)."""
    manifest = read_manifest(out)
    if manifest is None:
        manifest = {
            **identity,
            "sampling": dataset.sampling.as_dict(),
            "batch_size": batch_size,
            "num_items": len(dataset),
            "complete": False,
        }
        _write_json_atomically(manifest, out / MANIFEST)
    found = differences({k: manifest[k] for k in identity}, identity)
    if found:
        raise _stale(out, found)
    if not manifest["complete"] and manifest["batch_size"] != batch_size:
        raise ValueError(
            f"cache {out} is being built with batch_size {manifest['batch_size']}: resume with that "
            f"batch_size, not {batch_size}"
        )
    return manifest


def build_cache(
    dataset: PreferenceDataset,
    encode_posterior: EncodePosterior,
    encode_prompts: EncodePrompts,
    out_dir: str | Path,
    batch_size: int = 8,
    *,
    encoder_id: str,
    num_workers: int = 0,
) -> CachedPreferenceDataset | UnpairedDataset:
    """Encode ``dataset`` into ``out_dir`` (resuming a partial build; a no-op on a complete matching cache).

    Run it in one process (e.g. under accelerate's ``main_process_first``): concurrent builds of one directory
    would encode the same shards twice.

    Args:
        dataset: a :class:`PreferenceDataset` with center crops (``random_crop=False``), or an
            :class:`UnpairedDataset` over one.
        encode_posterior: ``pixels [N, 3, H, W]`` (video ``[N, F, 3, H, W]``) in [-1, 1] -> unscaled VAE posterior
            ``(mean, std)``, float tensors ``[N, ...]`` (the adapter's ``vae_posterior``).
        encode_prompts: ``prompts`` -> name -> ``[N, ...]`` (the adapter's ``encode_prompts``).
        out_dir: the cache directory (created).
        batch_size: items per shard, and images per ``encode_posterior`` call.
        encoder_id: identifies the encoders (model path, revision, VAE, dtype); a different one makes the cache
            stale.
        num_workers: DataLoader worker processes decoding and transforming images while the encoders run.

    Returns:
        the :class:`CachedPreferenceDataset` over the cache, with ``dataset``'s sampling settings (for an
        :class:`UnpairedDataset`: the unpaired view of its cached source pairs).

    Raises:
        StaleCacheError: ``out_dir`` holds a cache of other data, transforms or encoder.
        CorruptCacheError: its ``manifest.json`` is corrupt (damaged shards are encoded again, with a warning).
        ValueError: resuming with another ``batch_size``, or encoder outputs of inconsistent shapes.
    """
    if isinstance(dataset, UnpairedDataset):  # a view: cache the pairs it shows
        pairs = build_cache(
            dataset.source,
            encode_posterior,
            encode_prompts,
            out_dir,
            batch_size,
            encoder_id=encoder_id,
            num_workers=num_workers,
        )
        return dataset.over(pairs)
    if not isinstance(dataset, PreferenceDataset):
        raise TypeError(f"build_cache: expected a PreferenceDataset, got {type(dataset).__name__}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _start_or_resume(out, dataset, _identity(dataset, encoder_id), batch_size)
    if not manifest["complete"]:
        _remove_temporaries(out)
        shards = [
            s
            for s in range(math.ceil(len(dataset) / batch_size))
            if not _reusable(shard_path(out, s), min(batch_size, len(dataset) - s * batch_size))
        ]
        batches = [list(range(s * batch_size, min(len(dataset), (s + 1) * batch_size))) for s in shards]
        loader = DataLoader(
            _CacheSources(dataset), batch_sampler=batches, num_workers=num_workers, collate_fn=list
        )
        with torch.no_grad():
            if not _reusable(out / EMPTY_PROMPT):
                empty = {f"prompt_embeds.{k}": v.detach().cpu() for k, v in encode_prompts([""]).items()}
                _save_atomically(empty, out / EMPTY_PROMPT)
            for shard, entries in zip(shards, loader):
                tensors = _encode_shard(
                    entries, shard * batch_size, encode_posterior, encode_prompts, batch_size
                )
                prompts = json.dumps([prompt for prompt, _, _ in entries])
                _save_atomically(tensors, shard_path(out, shard), metadata={"prompts": prompts})
        _write_json_atomically({**manifest, "complete": True}, out / MANIFEST)
    return CachedPreferenceDataset(out, source=dataset, encoder_id=encoder_id)


def _reusable(path: Path, num_items: int | None = None) -> bool:
    """Whether a resumed build can keep the file at ``path`` (a damaged one is logged, then encoded again)."""
    if not path.exists():
        return False
    problem = _damage(path, num_items)
    if problem is not None:
        log.warning("latent cache file %s: %s; encoding it again", path, problem)
    return problem is None


class CachedPreferenceDataset(Dataset):
    """Items of the source dataset with ``latent_mean``/``latent_std``/``prompt_embeds`` instead of pixels.

    For item ``index`` in epoch ``e`` the flips and the prompt dropout are the ones the source dataset draws, so an
    item equals the source's item encoded on the fly: ``latent_mean [K, ...]``, ``latent_std [K, ...]``,
    ``prompt_embeds`` name -> ``[...]`` (the empty prompt's when dropped), plus the source's metadata.

    Args:
        out_dir: a complete cache.
        source: the dataset the cache must match (its sampling settings are used: seed, dropout, same flip); by
            default the settings recorded at build time are used and the recorded data files that still exist
            must be unchanged (the cache is self-contained: the files may be deleted).
        encoder_id: when given, must equal the one the cache was built with.

    Raises:
        CorruptCacheError: the manifest, the empty prompt's file or (when first read) a shard is truncated or
            damaged; the message names the file.
    """

    def __init__(
        self, out_dir: str | Path, source: PreferenceDataset | None = None, encoder_id: str | None = None
    ):
        self.out_dir = Path(out_dir)
        manifest = read_manifest(self.out_dir)
        if manifest is None:
            raise FileNotFoundError(
                f"no latent cache at {self.out_dir} ({MANIFEST} missing): run build_cache"
            )
        if not manifest["complete"]:
            raise RuntimeError(
                f"latent cache {self.out_dir} is incomplete: run build_cache again to resume it"
            )
        found = [] if encoder_id is None else differences(manifest["encoder_id"], encoder_id, "encoder_id")
        if source is not None:
            found += differences(
                manifest["content"], _identity(source, encoder_id or "")["content"], "content"
            )
        else:
            found += self._changed_files(manifest["content"]["files"])
        if found:
            raise _stale(self.out_dir, found)
        self.sampling = source.sampling if source is not None else SamplingSettings(**manifest["sampling"])
        self.manifest = manifest
        empty_path = self.out_dir / EMPTY_PROMPT
        if (problem := _damage(empty_path)) is not None:
            raise _corrupt(empty_path, problem)
        empty = load_file(str(empty_path))
        self.empty_prompt_embeds = {k.removeprefix("prompt_embeds."): v[0] for k, v in empty.items()}
        self.epoch = 0
        self._handles: dict[int, tuple[object, list[str]]] = {}

    @staticmethod
    def _changed_files(files: list[dict]) -> list[str]:
        found = []
        for i, recorded in enumerate(files):
            path = Path(recorded["path"])
            if path.exists():
                stat = path.stat()
                now = {"path": recorded["path"], "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
                found += differences(recorded, now, f"content.files[{i}]")
        return found

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return self.manifest["num_items"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _shard(self, shard: int) -> tuple[object, list[str]]:
        """The open shard and its captions (a damaged shard: :class:`CorruptCacheError` naming it)."""
        if shard not in self._handles:
            path = shard_path(self.out_dir, shard)
            batch_size, num_items = self.manifest["batch_size"], self.manifest["num_items"]
            if (problem := _damage(path, min(batch_size, num_items - shard * batch_size))) is not None:
                raise _corrupt(path, problem)
            handle = safe_open(str(path), framework="pt")
            self._handles[shard] = (handle, json.loads(handle.metadata()["prompts"]))
        return self._handles[shard]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0 .. {len(self) - 1}")
        shard, offset = divmod(index, self.manifest["batch_size"])
        handle, prompts = self._shard(shard)
        mean, std = (
            handle.get_slice("latent_mean")[offset],
            handle.get_slice("latent_std")[offset],
        )  # [O, K, ...]
        k = mean.shape[1]
        orientation = torch.tensor([int(flip) for flip in self.sampling.flips(self.epoch, index, k)])
        item = {
            "index": index,
            "latent_mean": mean[orientation, torch.arange(k)],
            "latent_std": std[orientation, torch.arange(k)],
        }
        names = handle.keys()
        if self.sampling.drop_prompt(self.epoch, index):
            item.update(prompt="", prompt_embeds=dict(self.empty_prompt_embeds))
        else:
            embeds = {
                n.removeprefix("prompt_embeds."): handle.get_slice(n)[offset]
                for n in names
                if n.startswith("prompt_embeds.")
            }
            item.update(prompt=prompts[offset], prompt_embeds=embeds)
        item.update(
            {n.removeprefix("meta."): handle.get_slice(n)[offset] for n in names if n.startswith("meta.")}
        )
        return item
