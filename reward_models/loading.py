"""Loading reward-model weights from a Hub id or a local path, safely and with errors that name the file.

Rules: weights are read only from safetensors or with ``torch.load(weights_only=True)``; remote code is never
trusted; a weight file that does not fit the architecture (missing, unexpected or wrongly shaped keys) is an
error listing a few of the offending keys, never a silently half-initialised model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers import AutoConfig, AutoProcessor, CLIPModel, CLIPProcessor

HUB_ID_PATTERN = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
HF_PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
HF_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
KEYS_SHOWN = 5  # how many offending keys an error lists per kind


class WeightLoadingError(ValueError):
    """Weights at a path do not fit the architecture they are loaded into; the message names path and keys."""


def is_local_source(source: str | Path) -> bool:
    """True when ``source`` is a local path: it exists, or it is spelled as one (absolute, ``./``, ``../``, ``~``).

    Anything else must look like a Hub id (``org/name`` or ``name``).
    """
    text = str(source)
    if isinstance(source, Path) or Path(text).expanduser().exists() or text.startswith(("/", "./", "../", "~")):
        return True
    if not HUB_ID_PATTERN.match(text):
        raise FileNotFoundError(f"{text}: neither an existing local path nor a Hub id of the form 'org/name'")
    return False


def require_file(directory: Path, candidates: Iterable[str], what: str) -> Path:
    """The first of ``candidates`` present in ``directory``; ``FileNotFoundError`` naming them all otherwise."""
    names = tuple(candidates)
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"{directory}: no {what} file; expected one of {', '.join(names)}")


def require_local_dir(source: str | Path, what: str) -> Path:
    """``source`` as an existing directory, or ``FileNotFoundError`` naming it and what it should hold."""
    directory = Path(source).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: {what} directory not found")
    return directory


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from ``.safetensors`` (safetensors) or any other suffix (``torch.load(weights_only=True)``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weight file not found")
    if path.suffix == ".safetensors":
        return load_file(path)
    return torch.load(path, map_location="cpu", weights_only=True)


def describe_key_mismatch(
    missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[tuple[str, tuple, tuple]]
) -> str:
    """One line per non-empty kind, each listing at most :data:`KEYS_SHOWN` keys and the total count."""

    def listed(items: list[str]) -> str:
        more = f", ... ({len(items)} in all)" if len(items) > KEYS_SHOWN else ""
        return ", ".join(items[:KEYS_SHOWN]) + more

    parts = []
    if missing := sorted(missing):
        parts.append(f"missing keys: {listed(missing)}")
    if unexpected := sorted(unexpected):
        parts.append(f"unexpected keys: {listed(unexpected)}")
    if mismatched := sorted(mismatched):
        shapes = [f"{key} (file {tuple(file_shape)} vs model {tuple(model_shape)})" for key, file_shape, model_shape in mismatched]
        parts.append(f"wrong shapes: {listed(shapes)}")
    return "; ".join(parts)


def load_state_dict_strict(module: nn.Module, state_dict: Mapping[str, Tensor], source: str | Path) -> None:
    """Load ``state_dict`` into ``module`` after checking every key and shape; ``WeightLoadingError`` names ``source``."""
    expected = module.state_dict()
    missing = expected.keys() - state_dict.keys()
    unexpected = state_dict.keys() - expected.keys()
    mismatched = [
        (key, tuple(state_dict[key].shape), tuple(expected[key].shape))
        for key in expected.keys() & state_dict.keys()
        if state_dict[key].shape != expected[key].shape
    ]
    if missing or unexpected or mismatched:
        details = describe_key_mismatch(missing, unexpected, mismatched)
        raise WeightLoadingError(f"{source}: weights do not fit {type(module).__name__}: {details}")
    module.load_state_dict(state_dict, strict=True)


def load_clip_model(source: str | Path) -> CLIPModel:
    """A transformers ``CLIPModel`` from a Hub id or a local ``from_pretrained`` directory, every weight checked.

    Raises:
        FileNotFoundError: the directory, its ``config.json`` or its weight file is missing (the path is named).
        WeightLoadingError: the config is not a CLIP config, or the weights do not fit it.
    """
    if is_local_source(source):
        directory = require_local_dir(source, "CLIP model")
        require_file(directory, ["config.json"], "config")
        require_file(directory, HF_WEIGHT_FILES, "weight")
    config = AutoConfig.from_pretrained(str(source), trust_remote_code=False)
    if config.model_type != "clip":
        raise WeightLoadingError(f"{source}: expected a CLIP model (model_type 'clip'), found model_type '{config.model_type}'")
    model, info = CLIPModel.from_pretrained(
        str(source), config=config, output_loading_info=True, ignore_mismatched_sizes=True, weights_only=True
    )
    details = describe_key_mismatch(info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"])
    if details:
        raise WeightLoadingError(f"{source}: weights do not fit its CLIP config: {details}")
    return model.eval()


def load_clip_processor(source: str | Path) -> CLIPProcessor:
    """A transformers ``CLIPProcessor`` (image processor + tokenizer) from a Hub id or a local directory."""
    if is_local_source(source):
        directory = require_local_dir(source, "CLIP processor")
        require_file(directory, HF_PROCESSOR_FILES, "image-processor config")
        require_file(directory, HF_TOKENIZER_FILES, "tokenizer")
    processor = AutoProcessor.from_pretrained(str(source), trust_remote_code=False)
    if not isinstance(processor, CLIPProcessor):
        raise WeightLoadingError(f"{source}: expected a CLIPProcessor, loaded {type(processor).__name__}")
    return processor


def read_json(path: str | Path) -> dict:
    """A JSON object from ``path``; ``FileNotFoundError`` naming the path when it is missing."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: JSON file not found")
    return json.loads(path.read_text())
