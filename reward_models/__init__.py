"""Reward models behind one interface: ``score(images, prompts) -> Tensor[N]`` with a documented ``scale``.

=================  ==========================================  ===============================================
class              model                                       scale
=================  ==========================================  ===============================================
PickScoreReward    PickScore_v1 (CLIP-H/14, transformers)      logit_scale × cosine (≈ 20-23)
HPSReward          HPSv2 / HPSv2.1 (open_clip ViT-H-14)        raw cosine (≈ 0.25-0.35), ×100 option
ClipScoreReward    CLIP ViT-L/14 (transformers)                max(100 × cosine, 0)
AestheticReward    LAION aesthetic v2 MLP over CLIP-L/14       AVA 1-10
RewardEnsemble     any of the above                            mean of per-model z-scores or ranks
ShapesReward       Shapes world, measured from pixels (exact)  mean of per-attribute soft scores, 0-1
ShapesProxyReward  tiny open_clip CLIP trained on Shapes        logit_scale × cosine (learned scale)
MovingShapesReward Moving Shapes clips, from pixels (exact)    mean of per-attribute and motion scores, 0-1
MovingShapesFrame- the Shapes proxy on each frame of a clip,   the Shapes proxy's
  ProxyReward      prompted without the motion words
=================  ==========================================  ===============================================

Configs: ``conf/reward/*.yaml``; command: ``diffalign score`` (:func:`reward_models.scoring.run`).
"""

from reward_models.aesthetic import AestheticMLP, AestheticReward
from reward_models.base import ClipRewardModel, RewardModel
from reward_models.clip_score import ClipScoreReward
from reward_models.ensemble import RewardEnsemble, normalized_ranks, zscore
from reward_models.hps import HPSReward
from reward_models.loading import WeightLoadingError
from reward_models.moving_shapes import MovingShapesReward
from reward_models.moving_shapes_proxy import MovingShapesFrameProxyReward
from reward_models.pickscore import PickScoreReward
from reward_models.preprocessing import ClipPreprocessing
from reward_models.shapes import ShapesReward
from reward_models.shapes_proxy import ShapesProxyReward
from reward_models.video import VideoScores

__all__ = [
    "AestheticMLP",
    "AestheticReward",
    "ClipPreprocessing",
    "ClipRewardModel",
    "ClipScoreReward",
    "HPSReward",
    "MovingShapesFrameProxyReward",
    "MovingShapesReward",
    "PickScoreReward",
    "RewardEnsemble",
    "RewardModel",
    "ShapesProxyReward",
    "ShapesReward",
    "VideoScores",
    "WeightLoadingError",
    "normalized_ranks",
    "zscore",
]
