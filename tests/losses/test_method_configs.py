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
