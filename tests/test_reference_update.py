"""The stable reference update: EMA toward the policy plus an anchor to the initial model."""

from __future__ import annotations

import pytest
import torch

from diffusion_align.reference_update import stable_reference_update


def test_hand_example():
    ref = [torch.zeros(3)]
    stable_reference_update(ref, [torch.ones(3)], [torch.zeros(3)], alpha=0.5, anchor=0.2)
    torch.testing.assert_close(ref[0], torch.full((3,), 0.4))


def test_limits_frozen_and_plain_ema():
    ref, policy, init = [torch.tensor([2.0])], [torch.tensor([4.0])], [torch.tensor([2.0])]
    stable_reference_update(ref, policy, init, alpha=0.0, anchor=0.0)
    assert ref[0].item() == 2.0
    stable_reference_update(ref, policy, init, alpha=0.25, anchor=0.0)
    assert ref[0].item() == 2.5
    stable_reference_update(ref, policy, init, alpha=1.0, anchor=0.0)
    assert ref[0].item() == 4.0


def test_converges_to_the_documented_fixed_point():
    alpha, anchor = 0.1, 0.05
    ref, policy, init = [torch.zeros(2)], [torch.ones(2)], [torch.zeros(2)]
    for _ in range(500):
        stable_reference_update(ref, policy, init, alpha=alpha, anchor=anchor)
    c = (1 - anchor) * alpha / (alpha + anchor - alpha * anchor)
    torch.testing.assert_close(ref[0], torch.full((2,), c))


def test_in_place_under_no_grad_keeping_dtype_and_parameters():
    module = torch.nn.Linear(3, 2).to(torch.bfloat16)
    params = list(module.parameters())
    storage = [p.data_ptr() for p in params]
    policy = [torch.ones_like(p, dtype=torch.float32, requires_grad=True) for p in params]
    stable_reference_update(params, policy, [p.detach().clone() for p in params], alpha=0.5, anchor=0.0)
    assert [p.data_ptr() for p in params] == storage
    assert all(p.dtype == torch.bfloat16 and p.grad_fn is None for p in params)


def test_accepts_generators():
    module = torch.nn.Linear(2, 2)
    stable_reference_update(
        module.parameters(),
        (torch.zeros_like(p) for p in module.parameters()),
        [torch.zeros_like(p) for p in module.parameters()],
        alpha=1.0,
        anchor=0.0,
    )
    assert all((p == 0).all() for p in module.parameters())


def test_mismatches_raise():
    with pytest.raises(ValueError, match="1 reference, 2 policy and 1 initial"):
        stable_reference_update([torch.zeros(1)], [torch.zeros(1), torch.zeros(1)], [torch.zeros(1)])
    with pytest.raises(ValueError, match=r"tensor 0 has shapes ref \(2,\), policy \(3,\)"):
        stable_reference_update([torch.zeros(2)], [torch.zeros(3)], [torch.zeros(2)])
    with pytest.raises(ValueError, match="alpha must be in"):
        stable_reference_update([torch.zeros(1)], [torch.zeros(1)], [torch.zeros(1)], alpha=1.5)
