"""Preference data on disk: Parquet schemas and validation, datasets, transforms, the latent cache, batching.

Layouts (:mod:`~diffusion_align.data.formats`): Pick-a-Pic pairwise, the ranked table, video pairs.
"""

from diffusion_align.data.cache import CachedPreferenceDataset, StaleCacheError, build_cache
from diffusion_align.data.collate import collate_preference
from diffusion_align.data.datasets import (
    PairwiseParquetDataset,
    PreferenceDataset,
    load_pickapic_compatible,
)
from diffusion_align.data.formats import (
    PAIRWISE_SCHEMA,
    RANKED_SCHEMA,
    VIDEO_PAIR_SCHEMA,
    BadRowReport,
    DataFormatError,
    decode_image,
    decode_video,
    encode_video,
)
from diffusion_align.data.ranked import RankedParquetDataset
from diffusion_align.data.transforms import PreferenceTransform, SamplingSettings
from diffusion_align.data.unpaired import UnpairedDataset
from diffusion_align.data.video import VideoPairDataset

__all__ = [
    "PAIRWISE_SCHEMA",
    "RANKED_SCHEMA",
    "VIDEO_PAIR_SCHEMA",
    "BadRowReport",
    "CachedPreferenceDataset",
    "DataFormatError",
    "PairwiseParquetDataset",
    "PreferenceDataset",
    "PreferenceTransform",
    "RankedParquetDataset",
    "SamplingSettings",
    "StaleCacheError",
    "UnpairedDataset",
    "VideoPairDataset",
    "build_cache",
    "collate_preference",
    "decode_image",
    "decode_video",
    "encode_video",
    "load_pickapic_compatible",
]
