"""Inherited checks every reward model must pass: a test class declares its model and gets them all.

Usage (pytest collects the ``test_contract_*`` methods through the subclass)::

    class TestPickScore(RewardModelContract):
        reference_preprocessing = OPENAI_CLIP_REFERENCE

        @pytest.fixture()
        def reward_model(self, pickscore_model):
            return pickscore_model

Needs the ``reward_images`` (four PIL images of one size) and ``reward_prompts`` fixtures of the conftest.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from reward_models import ClipPreprocessing, RewardModel
from reward_models.preprocessing import pil_to_pixels

# The published preprocessing of every backbone here (preprocessor_config.json of laion/CLIP-ViT-H-14-laion2B-s32B-b79K
# and openai/clip-vit-large-patch14: size 224, crop_size 224, resample 3 = bicubic, OpenAI mean/std; open_clip's
# ViT-H-14 preprocess_val: Resize(224, bicubic), CenterCrop(224), Normalize(OpenAI mean/std)).
REFERENCE_MEAN = (0.48145466, 0.4578275, 0.40821073)
REFERENCE_STD = (0.26862954, 0.26130258, 0.27577711)
HF_CLIP_REFERENCE = ClipPreprocessing(224, 224, "bicubic", REFERENCE_MEAN, REFERENCE_STD, crop_offset="floor")
OPEN_CLIP_REFERENCE = ClipPreprocessing(224, 224, "bicubic", REFERENCE_MEAN, REFERENCE_STD, crop_offset="round")
# open_clip's preprocess_val at the Shapes proxy's 64 px (image and per-frame video proxy): shortest side 64 (bicubic),
# centre crop 64, OpenAI mean/std.
SHAPES_PROXY_REFERENCE = ClipPreprocessing(64, 64, "bicubic", REFERENCE_MEAN, REFERENCE_STD, crop_offset="round")


def make_images(n: int, height: int = 240, width: int = 300, seed: int = 0) -> list[Image.Image]:
    """``n`` seeded RGB images: smooth random colour fields (8×10 noise upsampled) plus mild pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 10, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    pixels = (smooth + 0.05 * torch.randn(n, 3, height, width, generator=generator)).clamp(0, 1)
    array = (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(image) for image in array]


def assert_scores_close(actual: torch.Tensor, expected: torch.Tensor, relative: float) -> None:
    """``|actual - expected| <= relative × max|expected|`` elementwise (scores of one scale)."""
    tolerance = relative * float(expected.abs().max().clamp_min(1e-6))
    torch.testing.assert_close(actual, expected, rtol=0.0, atol=tolerance)


class RewardModelContract:
    """Shared checks of the :class:`RewardModel` interface.

    Subclasses provide a ``reward_model`` fixture and set:
        reference_preprocessing: the constants the model must preprocess with (``None``: not a single CLIP).
        has_image_embeddings: whether ``temporal_consistency`` is available.
        tensor_path_tolerance: allowed gap between ``score_tensor`` and ``score``, as a fraction of the spread of
            the scores between images (the reference rounds resized images to uint8; the differentiable path does
            not). 1% keeps every ranking of images that are not near-ties.
    """

    reference_preprocessing: ClipPreprocessing | None = None
    has_image_embeddings: bool = True
    tensor_path_tolerance: float = 1e-2

    @pytest.fixture()
    def reward_model(self) -> RewardModel:
        raise TypeError(f"{type(self).__name__} must override the reward_model fixture")

    def test_contract_documents_name_and_scale(self, reward_model):
        assert isinstance(type(reward_model).name, str) and type(reward_model).name
        assert isinstance(type(reward_model).scale, str) and len(type(reward_model).scale) > 10

    def test_contract_score_is_float32_cpu_one_per_image(self, reward_model, reward_images, reward_prompts):
        scores = reward_model.score(reward_images, reward_prompts)
        assert scores.shape == (len(reward_images),)
        assert scores.dtype == torch.float32 and scores.device.type == "cpu"
        assert torch.isfinite(scores).all()
        assert not scores.requires_grad

    def test_contract_score_is_deterministic(self, reward_model, reward_images, reward_prompts):
        first = reward_model.score(reward_images, reward_prompts)
        torch.testing.assert_close(reward_model.score(reward_images, reward_prompts), first, rtol=0, atol=0)

    def test_contract_batch_size_does_not_change_scores(self, reward_model, reward_images, reward_prompts):
        one_by_one = reward_model.score(reward_images, reward_prompts, batch_size=1)
        all_at_once = reward_model.score(reward_images, reward_prompts, batch_size=4)
        assert_scores_close(one_by_one, all_at_once, relative=1e-5)

    def test_contract_tensor_input_equals_pil_input(self, reward_model, reward_images, reward_prompts):
        from_pil = reward_model.score(reward_images, reward_prompts)
        from_tensor = reward_model.score(pil_to_pixels(reward_images), reward_prompts)
        torch.testing.assert_close(from_tensor, from_pil, rtol=0, atol=0)

    def test_contract_score_tensor_matches_score(self, reward_model, reward_images, reward_prompts):
        reference = reward_model.score(reward_images, reward_prompts)
        differentiable = reward_model.score_tensor(pil_to_pixels(reward_images), reward_prompts)
        assert differentiable.shape == reference.shape and differentiable.dtype == torch.float32
        gap = (differentiable.detach().cpu() - reference).abs().max()
        spread = reference.max() - reference.min()
        assert gap <= self.tensor_path_tolerance * spread, f"gap {gap:.3g} vs spread {spread:.3g} between images"

    def test_contract_score_tensor_gives_pixel_gradients_only(self, reward_model, reward_images, reward_prompts):
        pixels = pil_to_pixels(reward_images).requires_grad_(True)
        scores = reward_model.score_tensor(pixels, reward_prompts)
        # a weighted sum: the plain sum of batch-normalised scores (ensembles) is constant
        (scores * torch.arange(1.0, len(scores) + 1, device=scores.device)).sum().backward()
        assert torch.isfinite(pixels.grad).all() and pixels.grad.abs().sum() > 0
        assert all(not p.requires_grad for p in reward_model.parameters())

    def test_contract_prompts_are_checked(self, reward_model, reward_images, reward_prompts):
        with pytest.raises(ValueError, match="one prompt per image"):
            reward_model.score(reward_images, reward_prompts[:-1])
        if reward_model.uses_prompts:
            with pytest.raises(ValueError, match="prompts must be given"):
                reward_model.score(reward_images, None)

    def test_contract_pixels_outside_unit_range_are_refused(self, reward_model, reward_prompts):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            reward_model.score(torch.full((4, 3, 32, 32), 1.5), reward_prompts)
        with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
            reward_model.score_tensor(torch.rand(4, 32, 32), reward_prompts)

    def test_contract_video_scores_every_frame_with_its_prompt(self, reward_model, reward_images, reward_prompts):
        frames = pil_to_pixels(reward_images).view(2, 2, 3, *pil_to_pixels(reward_images).shape[-2:])
        prompts = reward_prompts[:2]
        result = reward_model.score_video(frames, prompts, aggregate="mean")
        assert result.scores.shape == (2,) and result.per_frame.shape == (2, 2)
        flat = reward_model.score(frames.flatten(0, 1), [prompts[0], prompts[0], prompts[1], prompts[1]])
        assert_scores_close(result.per_frame, flat.view(2, 2), relative=1e-5)
        torch.testing.assert_close(result.scores, result.per_frame.mean(dim=1))
        worst = reward_model.score_video(frames, prompts, aggregate="min")
        torch.testing.assert_close(worst.scores, worst.per_frame.min(dim=1).values)

    def test_contract_temporal_consistency(self, reward_model, reward_images, reward_prompts):
        static = pil_to_pixels(reward_images[:1]).expand(3, -1, -1, -1)[None]  # one video, one frame thrice
        if not self.has_image_embeddings:
            with pytest.raises(TypeError, match="no image embeddings"):
                reward_model.score_video(static, reward_prompts[:1], aggregate="temporal_consistency")
            return
        result = reward_model.score_video(static, reward_prompts[:1], aggregate="temporal_consistency")
        torch.testing.assert_close(result.scores, torch.ones(1), rtol=0, atol=1e-5)
        changing = pil_to_pixels(reward_images[:3])[None]
        assert reward_model.score_video(changing, reward_prompts[:1], "temporal_consistency").scores[0] < 1 - 1e-4

    def test_contract_preprocessing_equals_reference(self, reward_model):
        if self.reference_preprocessing is None:
            pytest.skip(f"{type(reward_model).__name__} has no single CLIP preprocessing")
        assert reward_model.preprocessing == self.reference_preprocessing
