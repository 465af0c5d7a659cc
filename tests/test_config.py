"""config.build: the allow-list of _target_s, and the tiny-model resolver."""

from __future__ import annotations

import functools
import re

import pytest
from omegaconf import OmegaConf

from diffusion_align.config import ALLOWED_TARGET_PREFIXES, ConfigError, build, check_targets, iter_targets


def test_iter_targets_walks_nested_dicts_and_lists():
    tree = {"a": {"_target_": "x.A", "b": [{"_target_": "x.B"}, 3]}, "c": {"d": {"_target_": "x.D"}}}
    assert list(iter_targets(tree)) == [("a", "x.A"), ("a.b[0]", "x.B"), ("c.d", "x.D")]


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run", "torch.load", "diffusion_alignx.evil"])
def test_build_refuses_targets_outside_the_allow_list(target):
    cfg = OmegaConf.create({"outer": {"inner": {"_target_": target, "_args_": ["echo pwned"]}}})
    expected = re.escape(f"config key 'outer.inner': _target_ '{target}' is not allowed")
    with pytest.raises(ConfigError, match=expected):
        build(cfg.outer)


def test_interpolated_target_is_checked_by_its_value():
    cfg = OmegaConf.create({"name": "os.system", "node": {"_target_": "${name}"}})
    with pytest.raises(ConfigError, match="os.system"):
        check_targets(cfg)


def test_build_instantiates_allowed_targets_with_runtime_objects():
    import torch

    param = torch.nn.Parameter(torch.zeros(3))
    cfg = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.5})
    optimizer = build(cfg)(params=[param])
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5
    loss = build(OmegaConf.create({"_target_": "diffusion_align.types.LossOutput", "loss": 1, "losses": 2}))
    assert loss.loss == 1 and loss.metrics == {}
    assert isinstance(build(OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True})), functools.partial)


def test_allow_list_is_the_documented_one():
    assert ALLOWED_TARGET_PREFIXES == (
        "diffusion_align.",
        "reward_models.",
        "torch.optim.",
        "diffusers.",
        "transformers.",
        "peft.",
        "bitsandbytes.optim.",
    )
