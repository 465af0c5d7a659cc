"""Every conf/method/*.yaml composes, instantiates through build(), and runs on random inputs of its kind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffusion_align.config import build
from diffusion_align.types import LossOutput

METHOD_DIR = Path(__file__).resolve().parents[2] / "conf" / "method"
METHOD_FILES = sorted(METHOD_DIR.glob("*.yaml"))
REQUIRED_KEYS = {"name", "inputs", "needs_reference", "tie_policy", "label_smoothing", "noising", "loss"}
B, K, S = 4, 3, 3


def test_method_folder_has_the_expected_files():
    # Adding or removing a method must be noticed here (and in the README's method table).
    assert len(METHOD_FILES) == 13, [p.stem for p in METHOD_FILES]


def compose_method(name: str):
    with initialize_config_dir(config_dir=str(METHOD_DIR.parent), version_base=None):
        return compose(overrides=[f"+method={name}"]).method


def random_call(method, loss_fn):
    """Call ``loss_fn`` the way the trainer does for ``method.inputs``, on random errors near the reference."""
    g = torch.Generator().manual_seed(0)
    near = lambda ref: ref + 2e-4 * torch.randn(ref.shape, generator=g)  # noqa: E731
    if method.inputs == "pairwise":
        ref = 0.05 + 0.2 * torch.rand(2, B, generator=g)
        refs = (ref[0], ref[1]) if method.needs_reference else (None, None)
        label = torch.ones(B)
        if method.get("label_fn") is not None:
            label = build(method.label_fn)(0.2 + 0.05 * torch.rand(B, generator=g), torch.full((B,), 0.2))
        return loss_fn(near(ref[0]), near(ref[1]), *refs, label=label, weights=torch.ones(B))
    if method.inputs == "segments":
        segments = 3  # S comes from the data's segment labels
        ref = 0.05 + 0.2 * torch.rand(2, B, segments, generator=g)
        seg = torch.tensor([1.0, 0.0, 0.5]).repeat(B, 1)
        return loss_fn(near(ref[0]), near(ref[1]), ref[0], ref[1], segment_label=seg, weights=torch.ones(B))
    if method.inputs == "ranked":
        ref = 0.05 + 0.2 * torch.rand(B, K, generator=g)
        return loss_fn(near(ref), ref, torch.rand(B, K, generator=g), weights=torch.ones(B))
    if method.inputs == "unpaired":
        ref = 0.05 + 0.2 * torch.rand(B, generator=g)
        return loss_fn(near(ref), ref, torch.tensor([True, False] * (B // 2)), weights=torch.ones(B))
    if method.inputs == "step":
        ref = -1.0 - torch.rand(2, B, generator=g)
        logp = ref + 0.05 * torch.randn(2, B, generator=g)
        return loss_fn(logp[0], logp[1], ref[0], ref[1], weights=torch.ones(B))
    raise AssertionError(f"unknown inputs kind '{method.inputs}'")


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.stem)
def test_method_composes_instantiates_and_runs(path):
    method = compose_method(path.stem)
    assert REQUIRED_KEYS <= set(method), f"{path.name}: missing {REQUIRED_KEYS - set(method)}"
    assert method.name == path.stem
    assert method.inputs in ("pairwise", "ranked", "unpaired", "segments", "step")
    assert method.tie_policy in ("drop", "half", "smooth")
    assert method.noising in ("forward", "renoise_inversion", "ddim_inversion")
    assert method.loss._partial_ is True
    out = random_call(method, build(method.loss))
    assert isinstance(out, LossOutput) and torch.isfinite(out.loss)
    assert out.losses.shape == (B,)


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.stem)
def test_every_hyperparameter_has_a_comment(path):
    loss_keys = [k for k in OmegaConf.load(path).loss if not k.startswith("_")]
    lines = path.read_text().splitlines()
    for key in loss_keys:
        line = next(line for line in lines if re.match(rf"\s+{key}:", line))
        assert "#" in line, f"{path.name}: loss.{key} has no trailing comment (meaning, scale, source)"


def test_reference_free_methods_say_so():
    free = {p.stem for p in METHOD_FILES if not OmegaConf.load(p).needs_reference}
    assert free == {"mapo", "sft"}


# The authors' values (../shared/reference/METHODS.md), pinned so that a default cannot drift unnoticed: for methods
# whose launchers differ by model, the SD1.5 launcher's (the default model), in the pairing the authors used.
AUTHORS_DEFAULTS = {
    "dpo": {"loss.beta": 5000, "loss.loss_type": "sigmoid"},  # §1a Salesforce launchers, -0.5·β
    "mapo": {"loss.beta": 0.1, "loss.snr_value": 0.5},  # §2 args.py --beta_mapo, --snr_value
    "smpo": {"loss.beta": 2000, "inversion_steps": 5},  # §3 SD1.5 launcher: β 2000 with N = 5
    "inpo": {"loss.beta": 2000, "inversion_steps": 10, "inversion_eta": 0.1},  # §3 InPO: N = 10, 0.1 noise
    "kto": {"loss.beta": 1000, "loss.lambda_desirable": 1.0, "loss.lambda_undesirable": 1.0},
    "spo": {"loss.beta": 10, "loss.clip": 0.1, "online.candidates": 4, "online.guidance": 5.0,
            "online.num_steps": 20, "online.threshold.value": 0.3},  # §4 SPO SD1.5 config
    "lpo": {"loss.beta": 500, "loss.clip": 0.1},  # §4 LPO configs
    "rankdpo": {"shared_noise": False},  # §6 Alg. 2: ε_i per image
}


@pytest.mark.parametrize("name", sorted(AUTHORS_DEFAULTS))
def test_method_defaults_are_the_authors(name):
    method = compose_method(name)
    for key, value in AUTHORS_DEFAULTS[name].items():
        assert OmegaConf.select(method, key) == value, f"conf/method/{name}.yaml {key}"
