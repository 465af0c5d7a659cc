"""The stable reference update of "Rethinking DPO in Diffusion Models" (Kang, Lim, Baek, Shim; arXiv 2505.18736).

The reference model is relaxed toward the policy instead of staying frozen, while a regulariser anchors it to the
initial model::

    ref ← ref + α·(policy - ref)              # EMA toward the policy
    ref ← ref - λ·(ref - init)                # pull back toward the initial model

[paper-recalled] The authors' code (``kaist-cvml/RethinkingDPO_Diffusion_Models``) could not be read. The EMA form
``π_ref ← (1-α)·π_ref + α·π_θ`` is what the paper summaries state; the regulariser is described only as "anchoring
the reference to the initial model" (a KL to the initial model in one summary). Here it is one gradient step of
``½·λ·||ref - init||²`` in parameter space, which is OUR choice, as are the defaults α = 0.01 and λ = 0.01.

With fixed policy weights the update converges to ``ref* = c·policy + (1 - c)·init`` with
``c = (1-λ)·α / (α + λ - α·λ)``: c ≈ 0.4975 at the defaults, so the reference settles about half way between the
initial model and the policy; λ = 0 gives a plain EMA (c = 1), α = 0 a frozen reference (c = 0).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


@torch.no_grad()
def stable_reference_update(
    ref_params: Iterable[Tensor],
    policy_params: Iterable[Tensor],
    initial_params: Iterable[Tensor],
    *,
    alpha: float = 0.01,
    anchor: float = 0.01,
) -> None:
    """Move every reference tensor toward the policy, then back toward the initial model, in place.

    Per tensor: ``ema = ref + α·(policy - ref)``; ``ref ← ema - λ·(ema - init)``, computed in float32 and written
    back in the reference's dtype.

    Example: ``ref = 0``, ``policy = 1``, ``init = 0``, α = 0.5, λ = 0.2: ``ema = 0.5``, ``ref ← 0.5 - 0.2·0.5 = 0.4``.

    Args:
        ref_params: the reference parameters (updated in place).
        policy_params: the policy parameters, in the same order and shapes.
        initial_params: the reference's parameters at step 0, in the same order and shapes.
        alpha: α ∈ [0, 1], step of the EMA toward the policy (0.01, assumed).
        anchor: λ ∈ [0, 1], step of the pull back to the initial model (0.01, assumed).

    Raises:
        ValueError: α or λ outside [0, 1]; the three lists differ in length; a pair of tensors differs in shape.
    """
    for name, value in (("alpha", alpha), ("anchor", anchor)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"stable_reference_update: {name} must be in [0, 1], got {value}")
    refs, policies, initials = list(ref_params), list(policy_params), list(initial_params)
    if not len(refs) == len(policies) == len(initials):
        raise ValueError(
            f"stable_reference_update: {len(refs)} reference, {len(policies)} policy and {len(initials)} initial "
            "tensors; the three lists must match one to one"
        )
    for index, (ref, policy, initial) in enumerate(zip(refs, policies, initials)):
        if not ref.shape == policy.shape == initial.shape:
            raise ValueError(
                f"stable_reference_update: tensor {index} has shapes ref {tuple(ref.shape)}, policy "
                f"{tuple(policy.shape)}, initial {tuple(initial.shape)}"
            )
        current = ref.float()
        ema = current + alpha * (policy.to(current.device).float() - current)
        ref.copy_(ema - anchor * (ema - initial.to(current.device).float()))
