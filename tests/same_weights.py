"""Weights of two training runs that must agree (one process against several: DDP, FSDP).

Several processes sum gradients in another order than one process; Adam divides by the root of the squared gradient,
so on parameters whose gradients are tiny a last-bit difference becomes ~1e-6 after a few steps (seen on LoRA_A
entries). The tolerance is set above that, and :func:`largest_change` lets a test show that training moved the
weights far past it, so agreement is not that of untrained weights.
"""

import torch

ATOL = 1e-5


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=ATOL, msg=key)


def largest_change(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def lora_b_change(weights: dict[str, torch.Tensor]) -> float:
    """How far the LoRA_B matrices moved: they start at zero."""
    return max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k)
