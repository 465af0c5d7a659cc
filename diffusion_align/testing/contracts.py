"""Inherited test contracts: a new loss's test class declares its function and inputs and gets the shared checks.

Usage (pytest collects the ``test_contract_*`` methods through the subclass)::

    class TestDpo(LossContract):
        loss_fn = diffusion_dpo_loss
        differentiable = ("err_w", "err_l")

        def make_inputs(self, dtype, generator):
            return pairwise_inputs(self.batch_size, dtype, generator)

        def swap_chosen_rejected(self, inputs):
            return {**inputs, "err_w": inputs["err_l"], "err_l": inputs["err_w"], ...}
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from diffusion_align.types import LossOutput

SHARED_REWARD_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
SHARED_POLICY_MSE_KEYS = ("mse/policy_chosen", "mse/policy_rejected")
SHARED_REF_MSE_KEYS = ("mse/ref_chosen", "mse/ref_rejected")
DPO_FAMILY_KEYS = SHARED_REWARD_KEYS + SHARED_POLICY_MSE_KEYS + SHARED_REF_MSE_KEYS


def pairwise_inputs(
    batch_size: int, dtype: torch.dtype, generator: torch.Generator, spread: float = 2e-4
) -> dict[str, Tensor]:
    """Random per-sample errors for a pairwise loss: ``err_w, err_l, ref_err_w, ref_err_l`` ``[B]``.

    Reference errors are uniform in [0.05, 0.25] (typical ε-prediction MSEs); policy errors differ from them by
    ``spread·N(0, 1)``, the scale at which β = 5000 gives inside terms of order 1 (unsaturated, as in training).
    """
    ref = 0.05 + 0.2 * torch.rand(2, batch_size, generator=generator)
    err = ref + spread * torch.randn(2, batch_size, generator=generator)
    return {
        "err_w": err[0].to(dtype),
        "err_l": err[1].to(dtype),
        "ref_err_w": ref[0].to(dtype),
        "ref_err_l": ref[1].to(dtype),
    }


def swap_pairwise(inputs: dict[str, Tensor]) -> dict[str, Tensor]:
    """Exchange the first and second sample of a pairwise call (errors and reference errors)."""
    return {
        **inputs,
        "err_w": inputs["err_l"],
        "err_l": inputs["err_w"],
        "ref_err_w": inputs["ref_err_l"],
        "ref_err_l": inputs["ref_err_w"],
    }


class LossContract:
    """Shared checks for a loss function returning :class:`LossOutput`.

    Subclasses set ``loss_fn`` (a plain function), ``differentiable`` (input names that carry gradients), and
    implement :meth:`make_inputs` and, when ``has_margin``, :meth:`swap_chosen_rejected`.
    """

    loss_fn: Callable[..., LossOutput]
    differentiable: tuple[str, ...] = ("err_w", "err_l")
    batch_size: int = 4
    metric_keys: tuple[str, ...] = DPO_FAMILY_KEYS
    has_margin: bool = True
    loss_is_mean_of_losses: bool = True

    def make_inputs(self, dtype: torch.dtype, generator: torch.Generator) -> dict[str, Tensor]:
        """Keyword inputs for one call; floating tensors in ``dtype``."""
        raise TypeError(f"{type(self).__name__} must define make_inputs(dtype, generator)")

    def swap_chosen_rejected(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        """The same inputs with the chosen and rejected roles exchanged."""
        raise TypeError(f"{type(self).__name__} has has_margin=True but no swap_chosen_rejected(inputs)")

    def call(self, inputs: dict[str, Tensor]) -> LossOutput:
        return type(self).loss_fn(**inputs)

    def inputs(self, dtype: torch.dtype = torch.float32, requires_grad: bool = False) -> dict[str, Tensor]:
        made = self.make_inputs(dtype, torch.Generator().manual_seed(0))
        if requires_grad:
            for name in self.differentiable:
                made[name] = made[name].detach().requires_grad_(True)
        return made

    def test_contract_output_types_and_shapes(self):
        out = self.call(self.inputs())
        assert isinstance(out, LossOutput)
        assert out.loss.ndim == 0 and out.loss.dtype == torch.float32
        assert out.losses.shape == (self.batch_size,) and out.losses.dtype == torch.float32
        if self.loss_is_mean_of_losses:
            torch.testing.assert_close(out.loss, out.losses.mean())

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
    def test_contract_finite_gradients(self, dtype):
        inputs = self.inputs(dtype, requires_grad=True)
        out = self.call(inputs)
        assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
        out.loss.backward()
        grads = [inputs[name].grad for name in self.differentiable]
        assert all(g is not None and torch.isfinite(g.float()).all() for g in grads)
        assert any(bool((g != 0).any()) for g in grads), "the loss has no gradient with respect to its inputs"

    def test_contract_metric_keys(self):
        out = self.call(self.inputs(requires_grad=True))
        missing = [k for k in self.metric_keys if k not in out.metrics]
        assert not missing, f"missing metrics {missing}"
        for name, value in out.metrics.items():
            assert value.ndim == 0 and value.dtype == torch.float32, name
            assert not value.requires_grad, f"metric {name} is not detached"

    def test_contract_swap_flips_margin(self):
        inputs = self.inputs()
        if not self.has_margin:
            assert "rewards/margins" not in self.call(inputs).metrics, (
                "a loss without a margin must not log one"
            )
            return
        margin = self.call(inputs).metrics["rewards/margins"]
        swapped = self.call(self.swap_chosen_rejected(inputs)).metrics["rewards/margins"]
        assert margin != 0
        torch.testing.assert_close(swapped, -margin)

    def test_contract_weights_scale_losses(self):
        inputs = self.inputs()
        plain = self.call(inputs)
        doubled = self.call({**inputs, "weights": torch.full((self.batch_size,), 2.0)})
        torch.testing.assert_close(doubled.losses, 2.0 * plain.losses)
        torch.testing.assert_close(doubled.loss, 2.0 * plain.loss)

    def test_contract_no_host_sync_by_item(self, monkeypatch):
        def refuse(*args, **kwargs):
            raise AssertionError("a loss called .item()")

        monkeypatch.setattr(torch.Tensor, "item", refuse)
        self.call(self.inputs())
