"""Scoring stored samples: reward naming, clips aggregated over frames, ensembles combined over all rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffusion_align.evaluate.media import save_sample
from diffusion_align.evaluate.results import EvaluationResults
from diffusion_align.evaluate.scoring import as_rewards, raw_scores, reward_record, score_results


def clip_table(tmp_path, n_clips: int = 3, n_frames: int = 4) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_clips):
        path = tmp_path / f"clip{i}.png"
        save_sample(rng.integers(0, 256, size=(n_frames, 16, 16, 3), dtype=np.uint8), path)
        rows.append({"model": "m", "prompt_index": i, "sample_index": 0, "prompt": f"clip {i}", "category": None,
                     "seed": i, "image": str(path), "num_frames": n_frames})
    return pd.DataFrame(rows)


def test_rewards_are_named_by_key_or_by_their_name(clip_reward):
    assert as_rewards(clip_reward) == {clip_reward.name: clip_reward}
    assert as_rewards({"mine": clip_reward}) == {"mine": clip_reward}
    with pytest.raises(ValueError, match="reward name 'a/b'"):
        as_rewards({"a/b": clip_reward})
    with pytest.raises(TypeError, match=r"rewards\['x'\]: expected a reward_models.RewardModel"):
        as_rewards({"x": object()})


@pytest.mark.parametrize("aggregate", ["mean", "min"])
def test_clips_are_scored_frame_by_frame_then_aggregated(clip_reward, tmp_path, aggregate):
    from diffusion_align.evaluate.media import load_frames

    table = clip_table(tmp_path)
    scores = raw_scores(clip_reward, table, batch_size=2, video_aggregate=aggregate)
    for row, score in zip(table.itertuples(), scores):
        per_frame = clip_reward.score(load_frames(row.image, row.num_frames), [row.prompt] * row.num_frames).numpy()
        assert score == pytest.approx(getattr(np, aggregate)(per_frame), rel=1e-5)


def test_ensemble_members_are_kept_and_recorded(ensemble_reward, tmp_path):
    table = clip_table(tmp_path)
    results = EvaluationResults(table, {"m": {"pipeline": "p"}})
    scored = score_results(results, {"ens": ensemble_reward}, batch_size=2)
    assert {"score/ens", "score/ens/clip", "score/ens/aesthetic"} <= set(scored.table.columns)
    assert scored.rewards["ens"] == reward_record(ensemble_reward)
    assert scored.rewards["ens"]["members"] == ["clip", "aesthetic"]
