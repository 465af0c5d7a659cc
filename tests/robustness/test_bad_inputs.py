"""Bad input through ``diffalign train``: one error naming the file, row, field or key and what was expected, and
nothing an earlier run wrote into the output directory changes. The same bad rows with ``on_bad_row=skip`` train,
and the skipped rows are counted in a logged report.

Each failing run goes into a copy of a finished run (checkpoints, LoRA, model card) and must leave it as it was.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hydra.errors import ConfigCompositionException, InstantiationException, MissingConfigException

from diffusion_align.config import ConfigError
from diffusion_align.data import DataFormatError
from robustness.helpers import (
    captured_logs,
    copy_run,
    good_row,
    png_bytes,
    png_claiming_size,
    snapshot,
    train_logged,
    write_rows,
)


def rows_with(changes: dict[int, dict], n: int = 8) -> list[dict]:
    return [good_row(i, **changes.get(i, {})) for i in range(n)]


def renamed_column(old: str, new: str):
    def write(path: Path) -> Path:
        table = pa.Table.from_pylist(rows_with({}))
        pq.write_table(table.rename_columns([new if c == old else c for c in table.column_names]), path)
        return path

    return write


def label_as_text(path: Path) -> Path:
    rows = [{**row, "label_0": str(row["label_0"])} for row in rows_with({})]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def not_parquet(path: Path) -> Path:
    path.write_text("caption,jpg_0,jpg_1,label_0\na cat,,,1\n")
    return path


def image_struct_without_bytes(path: Path) -> Path:
    rows = rows_with({})
    rows[1]["jpg_0"] = {"bytes": None, "path": "../../../etc/passwd"}
    for row in rows[:1] + rows[2:]:
        row["jpg_0"] = {"bytes": row["jpg_0"], "path": None}
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def bad_rows(changes: dict[int, dict], n: int = 8):
    return lambda path: write_rows(path, rows_with(changes, n))


TRUNCATED = png_bytes()[:60]
FILE = "{file}"
# id -> (writer of the dataset file, expected error type, message pattern; {file} is the dataset file)
BAD_DATA = {
    "corrupt_image": (bad_rows({2: {"jpg_1": b"\x89PNG\r\n\x1a\nnot really"}}), DataFormatError,
                      FILE + r" row 2 field 'jpg_1': expected JPEG, PNG or WebP bytes, got 18 bytes that do not decode"),
    "truncated_image": (bad_rows({1: {"jpg_0": TRUNCATED}}), DataFormatError,
                        FILE + r" row 1 field 'jpg_0': expected JPEG, PNG or WebP bytes, got 60 bytes"),
    "image_claiming_9000x9000": (bad_rows({3: {"jpg_0": png_claiming_size(9000, 9000)}}), DataFormatError,
                                 FILE + r" row 3 field 'jpg_0': .*image size 9000x9000 outside 1 \.\. 67108864"),
    "empty_image_bytes": (bad_rows({0: {"jpg_1": b""}}), DataFormatError,
                          FILE + r" row 0 field 'jpg_1': expected encoded bytes, got empty"),
    "struct_path_is_not_read": (image_struct_without_bytes, DataFormatError,
                                FILE + r" row 1 field 'jpg_0': expected encoded bytes, got null"),
    "missing_column": (renamed_column("label_0", "label"), DataFormatError,
                       FILE + r": missing column 'label_0' \(required: caption, jpg_0, jpg_1, label_0, ps_score_0, "
                       r"ps_score_1; present: caption, jpg_0, jpg_1, label, "),
    "misnamed_caption": (renamed_column("caption", "prompt"), DataFormatError,
                         FILE + r": missing column 'caption' .*present: prompt, "),
    "label_as_text": (label_as_text, DataFormatError,
                      FILE + r" field 'label_0': expected a float or integer column, got string"),
    "label_0.7": (bad_rows({3: {"label_0": 0.7, "label_1": 0.3}}), DataFormatError,
                  FILE + r" row 3 field 'label_0': expected 0, 0.5 or 1, got 0.7"),
    "label_2": (bad_rows({5: {"label_0": 2.0, "label_1": -1.0}}), DataFormatError,
                FILE + r" row 5 field 'label_0': expected 0, 0.5 or 1, got 2.0"),
    "label_nan": (bad_rows({4: {"label_0": math.nan}}), DataFormatError,
                  FILE + r" row 4 field 'label_0': expected 0, 0.5 or 1, got NaN"),
    "label_1_disagrees": (bad_rows({2: {"label_1": 1.0}}), DataFormatError,
                          FILE + r" row 2 field 'label_1': expected 1 - label_0 = 0.0, got 1.0"),
    "null_caption": (bad_rows({0: {"caption": None}}), DataFormatError,
                     FILE + r" row 0 field 'caption': expected a string \(empty allowed\), got null"),
    "score_nan": (bad_rows({1: {"ps_score_0": math.nan}}), DataFormatError,
                  FILE + r" row 1 field 'ps_score_0': expected a finite number, got nan"),
    "score_inf": (bad_rows({6: {"ps_score_1": -math.inf}}), DataFormatError,
                  FILE + r" row 6 field 'ps_score_1': expected a finite number, got -inf"),
    "score_beyond_float32": (bad_rows({2: {"ps_score_0": 1e300}}), DataFormatError,
                             FILE + r" row 2 field 'ps_score_0': expected a finite number, got 1e\+300 \(beyond float32"),
    "not_parquet": (not_parquet, DataFormatError, FILE + r": is not readable Parquet \(ArrowInvalid: .*magic bytes"),
    "smaller_than_a_batch": (bad_rows({}, n=1), ConfigError,
                             r"data.loader.batch_size=2 but the dataset has only 1 usable rows"),
    "only_ties": (bad_rows({0: {"label_0": 0.5, "label_1": 0.5}, 1: {"label_0": 0.5, "label_1": 0.5}}, n=2),
                  ConfigError, r"data.loader.batch_size=2 but the dataset has only 0 usable rows"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_named_and_leaves_outputs_unchanged(case, finished_run, run_train, tmp_path):
    write, error, pattern = BAD_DATA[case]
    data = write(tmp_path / "bad.parquet")
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(error, match=pattern.replace(FILE, re.escape(str(data)))):
        run_train(out, f"data.dataset.paths={data}", "trainer.max_steps=4", "trainer.checkpoint_every=1")
    assert snapshot(out) == before


def test_missing_dataset_file_is_named(finished_run, run_train, tmp_path):
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    missing = tmp_path / "nowhere" / "train.parquet"
    with pytest.raises(FileNotFoundError, match=f"dataset file '{re.escape(str(missing))}' does not exist"):
        run_train(out, f"data.dataset.paths={missing}", "trainer.max_steps=4")
    assert snapshot(out) == before


BAD_CONFIG = {
    "unknown_method": (["method=dpo_typo"], MissingConfigException,
                       r"Could not find 'method/dpo_typo'\n+Available options in 'method':\n(\t\w+\n)*\tdpo\n"),
    "unknown_model": (["model=sd16"], MissingConfigException,
                      r"Could not find 'model/sd16'\n+Available options in 'model':\n(.|\n)*\tsd15\n"),
    "unknown_key": (["trainer.max_step=4"], ConfigCompositionException,
                    r"Could not override 'trainer.max_step'"),
    "unknown_appended_key": (["+trainer.max_step=4"], ConfigError,
                             r"unknown trainer key\(s\) 'trainer.max_step' \(did you mean 'trainer.max_steps'\?\)"),
    "unknown_nested_key": (["+trainer.ema.dacay=0.5"], ConfigError,
                           r"'trainer.ema.dacay' \(did you mean 'trainer.ema.decay'\?\)"),
    "unknown_nonfinite_policy": (["trainer.on_nonfinite=ignore"], ConfigError,
                                 r"trainer.on_nonfinite 'ignore': expected one of skip, stop"),
    "unknown_bad_row_policy": (["data.dataset.on_bad_row=drop"], InstantiationException,
                               r"on_bad_row 'drop': expected one of error, skip(.|\n)*full_key: data.dataset"),
    "unknown_finetune_mode": (["model.finetune.mode=half", "reference=frozen_copy"], ConfigError,
                              r"model.finetune.mode 'half': expected lora or full"),
    "target_outside_allow_list": (["method.loss._target_=os.system"], ConfigError,
                                  r"config key 'method.loss': _target_ 'os.system' is not allowed"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIG))
def test_bad_config_names_the_key_and_leaves_outputs_unchanged(case, finished_run, tiny_pairs, run_train, tmp_path):
    overrides, error, pattern = BAD_CONFIG[case]
    out = copy_run(finished_run, tmp_path / "run")
    before = snapshot(out)
    with pytest.raises(error, match=pattern) as raised:
        run_train(out, f"data.dataset.paths={tiny_pairs}", "trainer.max_steps=4", *overrides)
    if case == "unknown_key":  # hydra names the key twice: in its message and in omegaconf's cause
        assert "Key 'max_step' is not in struct" in str(raised.value.__cause__)
    assert snapshot(out) == before


def test_skip_mode_trains_past_bad_rows_and_reports_them(tmp_path):
    changes = {1: {"jpg_1": TRUNCATED}, 3: {"label_0": 0.7, "label_1": 0.3}, 4: {"ps_score_0": math.nan},
               6: {"caption": None}}
    data = write_rows(tmp_path / "mixed.parquet", rows_with(changes))
    log = train_logged(tmp_path / "run", f"data.dataset.paths={data}", "data.dataset.on_bad_row=skip")
    assert "2 optimizer steps" in (tmp_path / "run" / "README.md").read_text()
    assert "data.dataset.on_bad_row=skip: 4 rows skipped" in log
    for reason in ("jpg_1: undecodable image", "label_0: not in {0, 0.5, 1}", "ps_score_0: not finite",
                   "caption: null"):
        assert re.search(rf"\n\s+1\s+{re.escape(reason)}\n", log), reason
    assert f"{data} row 1 field 'jpg_1'" in log


def test_image_modes_and_sizes_are_converted_not_refused(run_train, tmp_path):
    """Grayscale, palette, alpha, CMYK, 16-bit and 1-bit images of any size become RGB at the training size."""
    import io

    import numpy as np
    from PIL import Image

    from diffusion_align.data import PairwiseParquetDataset

    def encoded(mode: str, size: tuple[int, int], fmt: str) -> bytes:
        buffer = io.BytesIO()
        Image.new(mode, size, color=1 if mode == "1" else None).save(buffer, format=fmt)
        return buffer.getvalue()

    images = [encoded("L", (40, 32), "PNG"), encoded("P", (1, 1), "PNG"), encoded("RGBA", (3, 200), "WEBP"),
              encoded("LA", (200, 3), "PNG"), encoded("CMYK", (33, 33), "JPEG"), encoded("I;16", (64, 48), "PNG"),
              encoded("1", (31, 17), "PNG"), encoded("RGB", (32, 32), "JPEG")]
    rows = [good_row(i, jpg_0=images[i], jpg_1=images[-1 - i]) for i in range(8)]
    data = write_rows(tmp_path / "modes.parquet", rows)
    dataset = PairwiseParquetDataset(data, resolution=32, check_images=True)
    for index in range(len(dataset)):
        pixels = dataset[index]["pixel_values"]
        assert pixels.shape == (2, 3, 32, 32) and bool(np.isfinite(pixels.numpy()).all())
        assert float(pixels.min()) >= -1.0 and float(pixels.max()) <= 1.0
    out = run_train(tmp_path / "run", f"data.dataset.paths={data}", "trainer.max_steps=1")
    assert "1 optimizer steps" in (out / "README.md").read_text()


def test_empty_and_over_long_captions_train_long_ones_truncated_with_a_warning(tmp_path):
    """Decision (documented in data/formats.py): an empty caption is the unconditional prompt; a caption beyond
    the text encoder's 77 tokens is truncated by the pipeline's encode_prompt, which warns quoting the dropped
    words, as the official scripts and diffusers' pipelines at inference do."""
    long_caption = " ".join(f"word{i}" for i in range(90))
    rows = [good_row(i, caption="" if i % 2 else long_caption) for i in range(8)]
    data = write_rows(tmp_path / "captions.parquet", rows)
    with captured_logs("diffusers") as logged:
        train_logged(tmp_path / "run", f"data.dataset.paths={data}", "trainer.max_steps=2",
                        "data.loader.batch_size=4")
    assert "2 optimizer steps" in (tmp_path / "run" / "README.md").read_text()
    truncations = [m for m in logged if "truncated because CLIP can only handle" in m]
    assert truncations and "8 9" in truncations[0]  # the BPE pieces of the last word, word89


def test_lora_of_another_architecture_is_refused_naming_file_and_keys(finished_run, tiny_sdxl_path, tmp_path):
    from diffusers import UNet2DConditionModel

    from diffusion_align.adapters.lora import LORA_WEIGHT_NAME, LoraMismatchError, check_lora_file
    from diffusion_align.config import resolve_tiny_model

    lora = finished_run / LORA_WEIGHT_NAME
    sd15_unet = UNet2DConditionModel.from_pretrained(resolve_tiny_model("sd15"), subfolder="unet")
    sdxl_unet = UNet2DConditionModel.from_pretrained(tiny_sdxl_path, subfolder="unet")
    assert check_lora_file(lora, sd15_unet, prefix="unet") > 0
    with pytest.raises(LoraMismatchError) as raised:
        check_lora_file(lora, sdxl_unet, prefix="unet")
    message = str(raised.value)
    assert message.startswith(f"{lora} does not fit UNet2DConditionModel: ")
    assert re.search(r"unet\.\S+\.lora_[AB]\.weight: (shape \[\d+, \d+\], layer '\S+' (takes|gives) \d+|layer '\S+' is "
                     r"no such module)", message), message
    with pytest.raises(LoraMismatchError, match=r"expected a key 'unet.<layer>.lora_A.weight'"):
        check_lora_file(finished_run / "checkpoints" / "checkpoint-2" / "trainable.safetensors", sd15_unet, "unet")
    truncated = tmp_path / LORA_WEIGHT_NAME
    truncated.write_bytes(lora.read_bytes()[:100])
    with pytest.raises(LoraMismatchError, match=rf"{re.escape(str(truncated))}: not a readable safetensors file"):
        check_lora_file(truncated, sd15_unet, prefix="unet")
