"""The tie policy for pairwise preference data (Pick-a-Pic's ``label_0`` ∈ {0, 0.5, 1}), an explicit choice.

What the authors do: Salesforce Diffusion-DPO, SmPO and InPO drop ties (``label_0 ∉ {0, 1}``); MaPO drops
``label_0 == label_1``; diffusers' DPO port keeps them and treats ``jpg_0`` as the winner (not offered here:
it is a bug, not a policy).

- ``drop`` (default): ties removed; decisive pairs get label 1 after the swap.
- ``half``: ties kept with label 0.5 (the loss pushes the two implicit rewards together); decisive pairs label 1.
- ``smooth``: label smoothing ε: decisive pairs get ``1 - ε``, ties 0.5.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

TiePolicy = Literal["drop", "half", "smooth"]


class TieResolution(NamedTuple):
    """What the data pipeline does with a batch of pairs.

    Attributes:
        keep: ``[B]`` bool, False for pairs to drop.
        swap: ``[B]`` bool, True where the second image is the winner: swap so the winner comes first.
        label: ``[B]`` float32 probability that the first image (after the swap) is preferred.
    """

    keep: Tensor
    swap: Tensor
    label: Tensor


def resolve_ties(
    label_0: Tensor, *, policy: TiePolicy = "drop", label_smoothing: float = 0.0
) -> TieResolution:
    """Apply a tie policy to Pick-a-Pic style labels.

    Example: ``label_0 = [1, 0, 0.5]``. ``drop``: keep ``[T, T, F]``, swap ``[F, T, F]``, label ``[1, 1, 1]``.
    ``half``: keep all, label ``[1, 1, 0.5]``. ``smooth`` with ε = 0.1: keep all, label ``[0.9, 0.9, 0.5]``.

    Args:
        label_0: ``[B]`` probability that image 0 is preferred: exactly 0, 0.5 or 1.
        policy: ``drop`` | ``half`` | ``smooth``.
        label_smoothing: ε ∈ [0, 0.5) for ``smooth``; must be 0 for the other policies.

    Returns:
        :class:`TieResolution`.

    Raises:
        ValueError: a label outside {0, 0.5, 1} (the message lists the bad values), an unknown policy, or a
            label smoothing that does not fit the policy.
    """
    if label_0.ndim != 1:
        raise ValueError(f"resolve_ties: label_0 must have shape [B], got {tuple(label_0.shape)}")
    label_0 = label_0.float()
    valid = (label_0 == 0) | (label_0 == 0.5) | (label_0 == 1)
    if not bool(valid.all()):
        bad = torch.unique(label_0[~valid]).cpu().tolist()
        raise ValueError(f"resolve_ties: label_0 values must be 0, 0.5 or 1, got {bad}")
    if policy != "smooth" and label_smoothing != 0.0:
        raise ValueError(
            f"resolve_ties: label_smoothing={label_smoothing} needs policy 'smooth', got '{policy}'"
        )
    tie, swap = label_0 == 0.5, label_0 == 0
    ones = torch.ones_like(label_0)
    if policy == "drop":
        return TieResolution(keep=~tie, swap=swap, label=ones)
    if policy == "half":
        return TieResolution(keep=torch.ones_like(tie), swap=swap, label=torch.where(tie, 0.5 * ones, ones))
    if policy == "smooth":
        if not 0.0 <= label_smoothing < 0.5:
            raise ValueError(f"resolve_ties: label_smoothing must be in [0, 0.5), got {label_smoothing}")
        return TieResolution(
            keep=torch.ones_like(tie), swap=swap, label=torch.where(tie, 0.5 * ones, ones - label_smoothing)
        )
    raise ValueError(f"resolve_ties: policy '{policy}' is not one of 'drop', 'half', 'smooth'")
