"""Preference losses: pure functions over per-sample denoising errors; they never see a model.

Every loss returns :class:`diffusion_align.types.LossOutput` and is named by ``_target_`` in ``conf/method/*.yaml``.
Calling conventions (the trainer calls by keyword):

- pairwise: ``fn(err_w, err_l, ref_err_w=None, ref_err_l=None, *, label=None, weights=None, **params)``, ``[B]``
- ranked: ``rank_dpo_loss(errs, ref_errs, scores, *, weights=None, **params)``, ``[B, K]``
- unpaired: ``kto_loss(err, ref_err, desirable, *, weights=None, **params)``, ``[N]``
- segments: ``dense_dpo_loss(err_w, err_l, ref_err_w, ref_err_l, *, segment_label, weights=None, **params)``, ``[B, S]``
- step: ``step_dpo_loss(logp_w, logp_l, ref_logp_w, ref_logp_l, *, weights=None, **params)``, ``[B]``
"""

from diffusion_align.losses.densedpo import dense_dpo_loss
from diffusion_align.losses.dpo import diffusion_dpo_loss, flow_dpo_loss, implicit_rewards
from diffusion_align.losses.errors import per_sample_error
from diffusion_align.losses.kto import kto_loss
from diffusion_align.losses.mapo import mapo_loss, mapo_score
from diffusion_align.losses.rankdpo import rank_dpo_loss
from diffusion_align.losses.sft import sft_loss
from diffusion_align.losses.smpo import smpo_loss, smpo_preference_probability
from diffusion_align.losses.step import step_dpo_loss
from diffusion_align.losses.ties import TieResolution, resolve_ties

__all__ = [
    "TieResolution",
    "dense_dpo_loss",
    "diffusion_dpo_loss",
    "flow_dpo_loss",
    "implicit_rewards",
    "kto_loss",
    "mapo_loss",
    "mapo_score",
    "per_sample_error",
    "rank_dpo_loss",
    "resolve_ties",
    "sft_loss",
    "smpo_loss",
    "smpo_preference_probability",
    "step_dpo_loss",
]
