"""How reference predictions are obtained; the loss never knows which one produced them.

- :class:`LoraDisabledReference`: the policy with its LoRA adapters switched off (diffusers' DPO port): no second
  copy of the network in memory.
- :class:`FrozenReference`: a frozen copy of the initial network (the Salesforce script's ``ref_unet``), optionally
  in lower precision or kept on the CPU between calls.
- :class:`EmaReference`: a frozen copy that follows the policy slowly ("stable reference update").
- :class:`NoReference`: reference-free methods (MaPO, SFT) load none.
- :class:`PrecomputedReference`: the errors of a fixed reference (LoRA-disabled or frozen copy), computed before
  training for every row and epoch the run will train on (``reference.precompute=true``,
  :mod:`diffusion_align.train.precompute`); a step then runs no reference forward, and a frozen copy is released.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributed.tensor import DTensor

from diffusion_align.adapters.base import DiffusionAdapter, adapters_disabled, cast_frozen


class _Stateless:
    """Shared no-op parts of references that hold no state of their own to move, update or checkpoint."""

    def to(self, device: torch.device | str):
        return self

    def update(self, policy: nn.Module) -> None:
        """Nothing moves: the reference stays what it was at step 0."""

    def state_tensors(self) -> dict[str, Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        if tensors:
            raise ValueError(f"{type(self).__name__} keeps no state, but the checkpoint has {sorted(tensors)[:3]}")


class NoReference(_Stateless):
    """For methods whose config says ``needs_reference: false``."""

    def __init__(self, adapter: DiffusionAdapter | None = None) -> None:
        self.adapter = adapter

    def predict(self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor]) -> None:
        return None


@dataclass
class EpochErrors:
    """One epoch's precomputed reference errors: ``values`` ``[M, K(, S)]`` and, per dataset row, its slot in them
    (``slot[row]``, -1 for rows the epoch's pass did not reach)."""

    values: Tensor
    slot: Tensor

    @classmethod
    def build(cls, rows: Tensor, values: Tensor, dataset_size: int) -> EpochErrors:
        """From the pass's rows ``[M]`` and their errors ``[M, ...]`` (a row met twice keeps its last slot: its
        errors are the same, being a function of the row and epoch)."""
        slot = torch.full((dataset_size,), -1, dtype=torch.long)
        slot[rows.long()] = torch.arange(len(rows))
        return cls(values, slot)


class PrecomputedReference(_Stateless):
    """Reference errors looked up by (epoch, dataset row) instead of computed: ``[K]`` or ``[K, S]`` per row, the
    values :func:`diffusion_align.train.step.reference_errors` gave for that row's noise and timestep (which are
    a function of the row, epoch and seed alone).

    Args:
        tables: ``{epoch: EpochErrors}`` (CPU tensors).
        source: what computed them, for messages (``LoraDisabledReference``, ``FrozenReference``).
        summary: figures of the pass, written into the run's ``metrics.json``.
    """

    def __init__(self, tables: dict[int, EpochErrors], source: str, summary: dict | None = None) -> None:
        self.tables = tables
        self.source = source
        self.summary = summary or {}  # how the pass went (rows, micro-batches, seconds, a released copy)

    def lookup(self, index: Tensor, epoch: int, device: torch.device) -> Tensor:
        """``[B, K(, S)]`` errors of the rows ``index`` in ``epoch``, on ``device``."""
        rows = index.cpu().long()
        table = self.tables.get(epoch)
        slots = table.slot[rows] if table is not None and int(rows.max()) < len(table.slot) else None
        if slots is None or bool((slots < 0).any()):
            missing = rows.tolist() if slots is None else rows[slots < 0].tolist()
            raise KeyError(f"no precomputed reference errors for epoch {epoch}, dataset rows {missing[:5]}: the "
                           "pass before training did not reach them (a bug: please report it; reference."
                           "precompute=false computes them in each step)")
        return table.values[slots].to(device)

    def predict(self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor]) -> Tensor:
        raise RuntimeError(f"the {self.source} was replaced by its precomputed errors: it predicts nothing any more")


class LoraDisabledReference(_Stateless):
    """The adapter's own network with its LoRA layers disabled: exactly the base model, at no memory cost.

    Requires LoRA training (a full fine-tune has no adapter to disable).
    """

    def __init__(self, adapter: DiffusionAdapter) -> None:
        self.adapter = adapter

    @torch.no_grad()
    def predict(self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor]) -> Tensor:
        with adapters_disabled(self.adapter.denoiser):
            return self.adapter.predict(noisy, timesteps, cond, denoiser=self.adapter.denoiser)


class FrozenReference(_Stateless):
    """A frozen copy of the network taken at construction time (before any training step).

    Args:
        adapter: the model adapter; its denoiser is copied.
        dtype: storage dtype of the copy (``None`` keeps the policy's; bf16 halves the copy's memory).
        offload: keep the copy on the CPU and move it to the policy's device only for each call.
    """

    def __init__(self, adapter: DiffusionAdapter, dtype: torch.dtype | str | None = None, offload: bool = False) -> None:
        self.adapter = adapter
        self.model = copy.deepcopy(adapter.denoiser).requires_grad_(False).eval()
        if dtype is not None:
            cast_frozen(self.model, getattr(torch, dtype) if isinstance(dtype, str) else dtype)
        self.offload = offload
        if offload:
            self.model.to("cpu")

    def to(self, device: torch.device | str) -> FrozenReference:
        if not self.offload:
            self.model.to(device)
        return self

    @torch.no_grad()
    def predict(self, noisy: Tensor, timesteps: Tensor, cond: dict[str, Tensor]) -> Tensor:
        if self.offload:
            self.model.to(noisy.device)
        dtype = self.model.dtype
        cond = {k: v.to(dtype) if v.is_floating_point() else v for k, v in cond.items()}
        pred = self.adapter.predict(noisy.to(dtype), timesteps, cond, denoiser=self.model)
        if self.offload:
            self.model.to("cpu")
        return pred.float()


class EmaReference(FrozenReference):
    """A reference that moves toward the policy: ``ref ← update_fn(ref, policy, initial)`` every ``every`` steps.

    Args:
        update_fn: the update rule over parameter lists, e.g. ``diffusion_align.reference_update`` 's stable update
            (partial with its α and regulariser), called as ``update_fn(ref_params, policy_params, init_params)``.
        every: update period in optimizer steps.
    """

    def __init__(
        self,
        adapter: DiffusionAdapter,
        update_fn: Callable[[list[Tensor], list[Tensor], list[Tensor]], None],
        every: int = 1,
        dtype: torch.dtype | str | None = None,
        offload: bool = False,
    ) -> None:
        super().__init__(adapter, dtype=dtype, offload=offload)
        self.update_fn = update_fn
        self.every = every
        self.initial = [p.detach().clone() for p in self.model.parameters()]
        self.num_updates = 0

    @torch.no_grad()
    def update(self, policy: nn.Module) -> None:
        self.num_updates += 1
        if self.num_updates % self.every:
            return
        ref_params = list(self.model.parameters())
        policy_params = [p.detach() for p in policy.parameters()]
        if len(policy_params) != len(ref_params):
            raise ValueError(
                f"EmaReference: the policy has {len(policy_params)} parameter tensors, the reference "
                f"{len(ref_params)}; an EMA reference needs a full fine-tune (use lora_disabled or frozen_copy with LoRA)"
            )
        if any(isinstance(p, DTensor) for p in policy_params):
            # a sharded (FSDP2) policy: each tensor gathered whole in turn (every process calls this) and updated on
            # its own, which the per-tensor rules of diffusion_align.reference_update allow
            for ref, pol, init in zip(ref_params, policy_params, self.initial, strict=True):
                self.update_fn([ref], [pol.full_tensor() if isinstance(pol, DTensor) else pol], [init])
            return
        self.update_fn(ref_params, policy_params, self.initial)

    def state_tensors(self) -> dict[str, Tensor]:
        """The moving reference weights: saved with every checkpoint so a resumed run continues the same EMA."""
        state = {f"reference.{n}": p for n, p in self.model.named_parameters()}
        state["reference.num_updates"] = torch.tensor(self.num_updates)
        return state

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        params = dict(self.model.named_parameters())
        names = {k.removeprefix("reference.") for k in tensors} - {"num_updates"}
        if names != set(params):
            raise ValueError(f"checkpoint's EMA reference does not match the model: {sorted(names ^ set(params))[:5]}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(tensors[f"reference.{name}"])
        self.num_updates = int(tensors["reference.num_updates"])
