"""Video preference pairs (Flow-DPO, DenseDPO): two clips per caption, optional per-segment labels.

Cells hold ``.npz`` archives of uint8 frames ``[F, H, W, 3]`` (:func:`diffusion_align.data.formats.encode_video`).
Items carry ``pixel_values`` ``[2, F, 3, H, W]`` (one crop and one flip per clip, the same for all its frames) and,
when the file has ``segment_label_0``, ``segment_label`` ``[S]`` oriented like the pair (1: the first clip, i.e. the
overall winner, is better in that segment; 0: the second; 0.5: tie).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from torch import Tensor

from diffusion_align.data.datasets import PairwiseParquetDataset
from diffusion_align.data.formats import (
    VIDEO_PAIR_COLUMNS,
    DataFormatError,
    cell_bytes,
    check_segment_labels,
    decode_video,
)


class VideoPairDataset(PairwiseParquetDataset):
    """Pairs of clips in the video-pair layout, winner first.

    Args:
        paths, resolution, tie_policy, label_smoothing, random_crop, hflip, same_flip_for_pair,
            proportion_empty_prompts, seed, on_bad_row, max_rows, check_images, row_group_cache: as
            :class:`PairwiseParquetDataset` (``check_images`` decodes every clip).
        num_frames: every clip must have exactly this many frames (``None``: the two clips of a pair must agree).
    """

    media_columns = ("video_0", "video_1")
    required_columns = VIDEO_PAIR_COLUMNS

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        resolution: int,
        num_frames: int | None = None,
        tie_policy: str = "drop",
        label_smoothing: float = 0.0,
        random_crop: bool = False,
        hflip: bool = True,
        same_flip_for_pair: bool = False,
        proportion_empty_prompts: float = 0.0,
        seed: int = 0,
        on_bad_row: str = "error",
        max_rows: int | None = None,
        check_images: bool = False,
        row_group_cache: int = 4,
    ) -> None:
        self.num_frames = num_frames
        self._num_segments: int | None = None
        self._first_file_segments: tuple[Path, bool] | None = None  # the first file, and whether it has them
        super().__init__(
            paths,
            resolution,
            tie_policy=tie_policy,
            label_smoothing=label_smoothing,
            random_crop=random_crop,
            hflip=hflip,
            same_flip_for_pair=same_flip_for_pair,
            proportion_empty_prompts=proportion_empty_prompts,
            seed=seed,
            on_bad_row=on_bad_row,
            max_rows=max_rows,
            check_images=check_images,
            row_group_cache=row_group_cache,
        )

    def content_options(self) -> dict:
        return {**super().content_options(), "num_frames": self.num_frames}

    def optional_columns(self) -> dict[str, str]:
        return {**super().optional_columns(), "segment_label_0": "number_list"}

    def check_schema(
        self, path: Path, schema: pa.Schema, required: dict[str, str], optional: dict[str, str]
    ) -> None:
        """The pairwise checks plus: every file has ``segment_label_0``, or none does."""
        super().check_schema(path, schema, required, optional)
        has_segments = "segment_label_0" in schema.names
        if self._first_file_segments is None:
            self._first_file_segments = (path, has_segments)
        first, first_has = self._first_file_segments
        if has_segments != first_has:
            found, other = ("has", "lacks") if has_segments else ("lacks", "has")
            raise DataFormatError(
                path,
                f"{found} column 'segment_label_0', which {first} {other}: expected every file of the dataset to "
                "have per-segment labels, or none",
                field="segment_label_0",
                reason="segment_label_0: in some files only",
            )

    def parse_row(self, file_index: int, row: int, values: dict) -> dict:
        """The pairwise checks plus ``segment_label_0``: same number of segments in every row."""
        parsed = super().parse_row(file_index, row, values)
        if "segment_label_0" in values:
            path = self.files.paths[file_index]
            segments = check_segment_labels(values["segment_label_0"], path, row)
            if self._num_segments is not None and len(segments) != self._num_segments:
                raise DataFormatError(
                    path,
                    f"expected {self._num_segments} segments like the first row, got {len(segments)}",
                    row=row,
                    field="segment_label_0",
                    reason="segment_label_0: segment count",
                )
            self._num_segments = len(segments)
            parsed["segment_label"] = segments
        return parsed

    def decode_media(self, file_index: int, row: int, cells: dict) -> list[np.ndarray]:
        """Both clips as uint8 ``[F, H, W, 3]``, with the frame-count checks."""
        path = self.files.paths[file_index]
        clips = [decode_video(cell_bytes(cells[n], path, row, n), path, row, n) for n in self.media_columns]
        wanted = self.num_frames if self.num_frames is not None else len(clips[0])
        for name, clip in zip(self.media_columns, clips):
            if len(clip) != wanted:
                like = "" if self.num_frames is not None else f" like {self.media_columns[0]}"
                raise DataFormatError(
                    path,
                    f"expected {wanted} frames{like}, got {len(clip)}",
                    row=row,
                    field=name,
                    reason=f"{name}: frame count",
                )
        return clips

    def candidate_pixels(self, candidate: np.ndarray, flip: bool, rng) -> Tensor:
        return self.transform.video(candidate, flip, rng)
