"""Checks and helpers shared by the loss files: input validation, float32 casting, weighting, shared metrics.

Validation that only reads shapes never syncs the device. Checks of label *values* (a hard-label loss given a
soft label) read one boolean from the device, and only when a label is passed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_align.types import metric_dict


def check_vector(value: Tensor, name: str, method: str, batch_size: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is 1-D (and has ``batch_size`` entries when given)."""
    if value.ndim != 1:
        raise ValueError(f"{method}: '{name}' must have shape [B], got {tuple(value.shape)}")
    if batch_size is not None and value.shape[0] != batch_size:
        raise ValueError(f"{method}: '{name}' has {value.shape[0]} entries, expected B={batch_size}")


def check_same_shape(method: str, **tensors: Tensor) -> None:
    """Raise ``ValueError`` naming the first tensor whose shape differs from the first one's."""
    names = list(tensors)
    expected = tensors[names[0]].shape
    for name in names[1:]:
        if tensors[name].shape != expected:
            raise ValueError(
                f"{method}: '{name}' has shape {tuple(tensors[name].shape)}, expected {tuple(expected)} "
                f"(the shape of '{names[0]}')"
            )


def require_reference(
    method: str, ref_err_w: Tensor | None, ref_err_l: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Return both reference errors, or raise naming the missing one and the config key that controls it."""
    for name, value in (("ref_err_w", ref_err_w), ("ref_err_l", ref_err_l)):
        if value is None:
            raise ValueError(
                f"{method} needs reference errors but '{name}' is None: the method config must say "
                "needs_reference: true and the run must use a reference (conf/reference/ frozen_copy or lora_disabled)"
            )
    return ref_err_w, ref_err_l


def refuse_reference(method: str, ref_err_w: Tensor | None, ref_err_l: Tensor | None) -> None:
    """Reference-free losses raise when given reference errors rather than silently ignoring them."""
    if ref_err_w is not None or ref_err_l is not None:
        raise ValueError(
            f"{method} is reference-free (its config says needs_reference: false) but reference errors were "
            "passed; use reference=none so no reference forward pass is wasted"
        )


def require_hard_label(method: str, label: Tensor | None) -> None:
    """Raise if ``label`` is given and is not all ones (this loss cannot use soft labels). One device sync."""
    if label is not None and not bool(torch.all(label == 1)):
        raise ValueError(
            f"{method} takes hard labels only (label all ones: the winner first) but got soft labels "
            f"{label.detach().float().cpu().tolist()[:8]}...; use tie_policy: drop with label_smoothing: 0"
        )


def to_float32(*tensors: Tensor | None) -> list[Tensor | None]:
    """Cast every tensor to float32 (the loss math is float32 whatever the input dtype)."""
    return [None if t is None else t.float() for t in tensors]


def apply_weights(losses: Tensor, weights: Tensor | None, method: str) -> Tensor:
    """Per-sample losses times per-sample ``weights`` (``[B]``, e.g. timestep-aware weights); unchanged if None."""
    if weights is None:
        return losses
    check_vector(weights, "weights", method, losses.shape[0])
    return losses * weights.float()


def dpo_family_metrics(
    reward_w: Tensor,
    reward_l: Tensor,
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None,
    ref_err_l: Tensor | None,
) -> dict[str, Tensor]:
    """The shared metric names for a pairwise method with implicit rewards (all detached 0-dim float32).

    ``rewards/margins`` is ``reward_w - reward_l`` and ``rewards/accuracies`` the fraction with a margin strictly
    above zero (a tie counts as wrong, as in the Salesforce script).
    """
    margins = reward_w - reward_l
    values = {
        "rewards/chosen": reward_w,
        "rewards/rejected": reward_l,
        "rewards/margins": margins,
        "rewards/accuracies": (margins > 0).float(),
        "mse/policy_chosen": err_w,
        "mse/policy_rejected": err_l,
    }
    if ref_err_w is not None:
        values.update({"mse/ref_chosen": ref_err_w, "mse/ref_rejected": ref_err_l})
    return metric_dict(**values)


def check_pairwise(
    method: str,
    err_w: Tensor,
    err_l: Tensor,
    ref_err_w: Tensor | None = None,
    ref_err_l: Tensor | None = None,
    label: Tensor | None = None,
) -> None:
    """Shapes of a pairwise call: every per-sample tensor given is ``[B]`` with the same ``B``."""
    check_vector(err_w, "err_w", method)
    given = {"err_w": err_w, "err_l": err_l, "ref_err_w": ref_err_w, "ref_err_l": ref_err_l, "label": label}
    check_same_shape(method, **{k: v for k, v in given.items() if v is not None})


def preference_nll(logits: Tensor, label: Tensor | None) -> Tensor:
    """``-log σ(x)`` per sample; with a soft label p (probability the first is preferred):
    ``-(p·log σ(x) + (1-p)·log σ(-x))``. ``logits`` and ``label`` are float32 ``[...]``."""
    if label is None:
        return -torch.nn.functional.logsigmoid(logits)
    label = label.float()
    logsig = torch.nn.functional.logsigmoid
    return -(label * logsig(logits) + (1.0 - label) * logsig(-logits))
