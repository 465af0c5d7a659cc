"""``AdapterContract``: the checks every model adapter passes, inherited by one test class per adapter.

A test class names its tiny pipeline family and its ``conf/model`` file, declares the family's shapes, and
computes the forward process and target from the formulas themselves (never through the adapter); the contract
builds the adapter from ``conf/model/tiny_<conf_name>.yaml`` (on the session's tiny pipeline) and checks:
shapes, formulas, agreement with the pipeline's own denoiser call at inference, gradients, LoRA (disabled ==
base, saved file == trained weights in a fresh pipeline) and the references at step 0.
"""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from torch import Tensor, nn

from diffusion_align.adapters.base import DiffusionAdapter
from diffusion_align.adapters.lora import LORA_WEIGHT_NAME, add_lora, save_lora
from diffusion_align.config import build
from diffusion_align.losses import diffusion_dpo_loss
from diffusion_align.reference import FrozenReference, LoraDisabledReference
from diffusion_align.timesteps import sample_timesteps
from diffusion_align.train.step import StepInputs, preference_step
from diffusion_align.types import PreferenceBatch

PROMPTS = ["a red cube on a wooden table", "two blue spheres"]


def compose_model_config(conf_name: str, pipeline_path: Path) -> DictConfig:
    """``conf/model/<conf_name>.yaml`` composed as the ``model`` group, its path set to ``pipeline_path``."""
    with initialize_config_module("diffusion_align.conf", version_base="1.3"):
        cfg = compose(overrides=[f"+model={conf_name}", f"model.adapter.path='{pipeline_path}'"])
    return cfg.model


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``[N]`` -> ``[N, 1, ...]`` broadcastable against ``like``."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


def flow_noisy(x0: Tensor, eps: Tensor, sigma: Tensor) -> Tensor:
    """Rectified flow: ``x_σ = (1-σ)·x0 + σ·ε``."""
    s = per_sample(sigma, x0)
    return (1 - s) * x0 + s * eps


def ddpm_noisy(alphas_cumprod: Tensor, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """DDPM: ``x_t = sqrt(ā_t)·x0 + sqrt(1-ā_t)·ε``."""
    a = per_sample(alphas_cumprod[t], x0)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def velocity(alphas_cumprod: Tensor, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
    """v-prediction target: ``v = sqrt(ā_t)·ε - sqrt(1-ā_t)·x0``."""
    a = per_sample(alphas_cumprod[t], x0)
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def betas_alphas_cumprod(config) -> Tensor:
    """``ā_t = Π(1 - β_s)`` for a scheduler config's ``linear`` or ``scaled_linear`` betas (float64)."""
    start, end, steps = config.beta_start, config.beta_end, config.num_train_timesteps
    if config.beta_schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    elif config.beta_schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, steps, dtype=torch.float64) ** 2
    else:
        raise ValueError(
            f"test helper: beta_schedule {config.beta_schedule!r} is not linear or scaled_linear"
        )
    return torch.cumprod(1 - betas, dim=0)


def perturb_lora(denoiser: nn.Module, seed: int = 0, std: float = 0.1) -> None:
    """Give every LoRA up-projection (zero at init) random values, so the adapter changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in denoiser.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * std)


def private_copy(adapter):
    """A copy of ``adapter`` a test may change: own denoiser (LoRA, gradients), pipeline object, attributes.

    The frozen modules (VAE, text encoders, tokenizers) stay shared: no test changes them, and copying them
    costs more than the tests themselves.
    """
    denoiser = copy.deepcopy(adapter.denoiser)
    pipeline = copy.copy(adapter.pipeline)
    name = next(k for k, module in pipeline.components.items() if module is adapter.denoiser)
    setattr(pipeline, name, denoiser)
    clone = copy.copy(adapter)
    clone.pipeline, clone.denoiser = pipeline, denoiser
    return clone


class AdapterContract:
    """Inherit, set the class attributes and define the family hooks; pytest collects the ``test_*`` methods.

    Hooks every test class defines (computed from the formulas, not through the adapter):

    - ``expected_noisy(adapter, x0, eps, t)``, ``expected_target(adapter, x0, eps, t)``: noising, target;
    - ``expected_scaled(adapter, sample)``: the VAE latent scaling;
    - ``from_inference(adapter, args, kwargs, output) -> (noisy, timesteps, prediction)``: the pipeline's own
      denoiser call read back into the adapter's public layout and timestep convention.

    ``load_saved_lora(pipeline, directory)`` defaults to the pipeline's ``load_lora_weights``.
    """

    adapter_class: type
    family: str  # key of diffusion_align.testing.TINY_BUILDERS
    conf_name: str  # conf/model/<conf_name>.yaml (and tiny_<conf_name>.yaml)
    schedule_kind: str  # "discrete" | "flow"
    timesteps: tuple  # one timestep per prompt: ints (discrete) or σ (flow)
    pixel_shape: tuple[int, ...]  # one sample: [3, H, W], video [F, 3, H, W]
    latent_shape: tuple[int, ...]  # one sample, public layout: [C, h, w], video [C, f, h, w]
    cond_shapes: dict[str, tuple[int, ...]]  # encode_prompts, per prompt
    inference_kwargs: dict  # pipeline __call__ arguments for the tiny model, without classifier-free guidance
    params_without_gradient: frozenset[str] = frozenset()  # parameters the forward pass does not use

    def load_saved_lora(self, pipeline, directory: Path) -> None:
        pipeline.load_lora_weights(directory)

    @pytest.fixture(scope="class", autouse=True)
    def one_intra_op_thread(self):
        """Tiny models gain nothing from intra-op threads, and on a busy shared CPU the thread hand-offs make
        the tests several times slower; restored after the class."""
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield
        torch.set_num_threads(before)

    @pytest.fixture(scope="class")
    def tiny_path(self, tiny_pipeline_path) -> Path:
        return tiny_pipeline_path(self.family)

    @pytest.fixture(scope="class")
    def model_config(self, tiny_path: Path) -> DictConfig:
        return compose_model_config(f"tiny_{self.conf_name}", tiny_path)

    @pytest.fixture(scope="class")
    def pristine_adapter(self, model_config: DictConfig):
        """Built once per class from the config; never mutated (tests get copies)."""
        return build(model_config.adapter)

    @pytest.fixture
    def adapter(self, pristine_adapter):
        return private_copy(pristine_adapter)

    @pytest.fixture
    def inputs(self, adapter) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Seeded ``(x0, ε, timesteps, cond)`` for the two prompts."""
        generator = torch.Generator().manual_seed(0)
        x0 = torch.randn(len(PROMPTS), *self.latent_shape, generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        dtype = torch.float32 if self.schedule_kind == "flow" else torch.int64
        return x0, eps, torch.tensor(self.timesteps, dtype=dtype), adapter.encode_prompts(PROMPTS)

    def add_config_lora(self, adapter, model_config: DictConfig) -> list[nn.Parameter]:
        finetune = model_config.finetune
        return add_lora(
            adapter.denoiser,
            rank=finetune.rank,
            alpha=finetune.alpha,
            target_modules=list(finetune.target_modules),
            init_lora_weights=finetune.init_lora_weights,
        )

    def prediction(self, adapter, inputs) -> Tensor:
        """The adapter's default (policy) prediction on ``inputs``, without grad."""
        x0, eps, t, cond = inputs
        with torch.no_grad():
            return adapter.predict(adapter.add_noise(x0, eps, t), t, cond)

    def test_builds_from_its_config(self, pristine_adapter, model_config: DictConfig) -> None:
        adapter = pristine_adapter
        assert type(adapter) is self.adapter_class
        assert isinstance(adapter, DiffusionAdapter)
        assert adapter.resolution == model_config.resolution == 32
        assert isinstance(adapter.pipeline, adapter.pipeline_class)
        assert adapter.schedule.kind == self.schedule_kind and adapter.schedule.num_train_timesteps == 1000
        assert adapter.device == torch.device("cpu")
        frozen = adapter.frozen_modules
        assert frozen and all(isinstance(m, nn.Module) and m is not adapter.denoiser for m in frozen.values())

    def test_real_config_names_this_adapter(self, model_config: DictConfig) -> None:
        """``conf/model/<conf_name>.yaml``: this adapter, a hub id, a real resolution; tiny shrinks it."""
        with initialize_config_module("diffusion_align.conf", version_base="1.3"):
            real = compose(overrides=[f"+model={self.conf_name}"]).model
        target = f"{self.adapter_class.__module__}.{self.adapter_class.__qualname__}.from_pretrained"
        assert real.adapter._target_ == model_config.adapter._target_ == target
        assert "/" in real.adapter.path and real.resolution >= 480
        # alpha = rank, as the diffusers LoRA examples (the saved file records the LoraConfig either way)
        assert real.finetune == model_config.finetune and real.finetune.alpha == real.finetune.rank

    def test_encode_prompts_shapes(self, adapter) -> None:
        cond = adapter.encode_prompts(PROMPTS)
        assert {k: tuple(v.shape) for k, v in cond.items()} == {
            k: (len(PROMPTS), *shape) for k, shape in self.cond_shapes.items()
        }
        assert all(torch.isfinite(v.float()).all() for v in cond.values())

    def test_vae_posterior_and_scaled_latents(self, adapter) -> None:
        pixels = torch.rand(2, *self.pixel_shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
        mean, std = adapter.vae_posterior(pixels)
        assert tuple(mean.shape) == tuple(std.shape) == (2, *self.latent_shape)
        assert bool((std > 0).all()) and not mean.requires_grad
        scaled = adapter.scale_latents(mean)
        torch.testing.assert_close(scaled, self.expected_scaled(adapter, mean))

    def test_add_noise_is_the_forward_process(self, adapter, inputs) -> None:
        x0, eps, t, _ = inputs
        torch.testing.assert_close(adapter.add_noise(x0, eps, t), self.expected_noisy(adapter, x0, eps, t))

    def test_target_is_the_prediction_type(self, adapter, inputs) -> None:
        x0, eps, t, _ = inputs
        torch.testing.assert_close(adapter.target(x0, eps, t), self.expected_target(adapter, x0, eps, t))

    def test_predict_has_the_target_layout_and_is_finite(self, adapter, inputs) -> None:
        x0, eps, t, _ = inputs
        pred = self.prediction(adapter, inputs)
        assert pred.shape == adapter.target(x0, eps, t).shape == (len(PROMPTS), *self.latent_shape)
        assert bool(torch.isfinite(pred).all())
        torch.testing.assert_close(self.prediction(adapter, inputs), pred, rtol=0, atol=0)

    def test_predict_equals_the_pipelines_own_denoiser_call(self, adapter) -> None:
        calls = []
        hook = adapter.denoiser.register_forward_hook(
            lambda module, args, kwargs, out: calls.append((args, kwargs, out[0])), with_kwargs=True
        )
        generator = torch.Generator().manual_seed(0)
        adapter.pipeline(
            PROMPTS[0],
            num_inference_steps=2,
            output_type="latent",
            generator=generator,
            **self.inference_kwargs,
        )
        hook.remove()
        assert len(calls) == 2, "expected one denoiser call per step (no classifier-free guidance batch)"
        # the second step runs at an intermediate noise level
        noisy, t, expected = self.from_inference(adapter, *calls[-1])
        with torch.no_grad():
            pred = adapter.predict(noisy, t, adapter.encode_prompts(PROMPTS[:1]))
        torch.testing.assert_close(pred, expected, rtol=1e-5, atol=1e-5)

    def test_gradients_reach_every_used_denoiser_parameter(self, adapter, inputs) -> None:
        x0, eps, t, cond = inputs
        adapter.denoiser.requires_grad_(True)
        adapter.predict(adapter.add_noise(x0, eps, t), t, cond).square().mean().backward()
        params = dict(adapter.denoiser.named_parameters())
        assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in params.values())
        without = {name for name, p in params.items() if not bool(p.grad.any())}
        assert without == set(self.params_without_gradient)

    def test_lora_disabled_reference_is_the_base_model(self, adapter, model_config, inputs) -> None:
        base = self.prediction(adapter, inputs)
        self.add_config_lora(adapter, model_config)
        perturb_lora(adapter.denoiser)
        x0, eps, t, cond = inputs
        disabled = LoraDisabledReference(adapter).predict(adapter.add_noise(x0, eps, t), t, cond)
        torch.testing.assert_close(disabled, base, rtol=0, atol=0)
        assert float((self.prediction(adapter, inputs) - base).abs().max()) > 1e-3

    def test_saved_lora_loads_into_a_fresh_pipeline(
        self, adapter, pristine_adapter, model_config, inputs, tmp_path: Path
    ) -> None:
        self.add_config_lora(adapter, model_config)
        perturb_lora(adapter.denoiser)
        path = save_lora(adapter.pipeline, adapter.denoiser, adapter.lora_layers_kwarg, tmp_path)
        assert path == tmp_path / LORA_WEIGHT_NAME and path.is_file()
        fresh = private_copy(pristine_adapter)  # as loaded from the pipeline directory
        call = functools.partial(
            fresh.pipeline,
            PROMPTS[0],
            num_inference_steps=2,
            output_type="latent",
            return_dict=False,
            **self.inference_kwargs,
        )
        before = call(generator=torch.Generator().manual_seed(0))[0]
        self.load_saved_lora(fresh.pipeline, tmp_path)
        after = call(generator=torch.Generator().manual_seed(0))[0]
        assert float((after - before).abs().max()) > 1e-4, (
            "loading the saved LoRA left the pipeline output unchanged"
        )
        torch.testing.assert_close(self.prediction(fresh, inputs), self.prediction(adapter, inputs))

    def test_saved_lora_keeps_an_alpha_other_than_rank(
        self, adapter, pristine_adapter, model_config, inputs, tmp_path: Path
    ) -> None:
        """The saved file carries the LoraConfig, so a reload with alpha = 2·rank predicts exactly as trained."""
        finetune = model_config.finetune
        add_lora(adapter.denoiser, rank=finetune.rank, alpha=2 * finetune.rank,
                 target_modules=list(finetune.target_modules), init_lora_weights=finetune.init_lora_weights)
        perturb_lora(adapter.denoiser)
        save_lora(adapter.pipeline, adapter.denoiser, adapter.lora_layers_kwarg, tmp_path)
        fresh = private_copy(pristine_adapter)
        self.load_saved_lora(fresh.pipeline, tmp_path)
        torch.testing.assert_close(self.prediction(fresh, inputs), self.prediction(adapter, inputs))

    def test_frozen_reference_equals_the_policy_at_step_0(self, adapter, model_config, inputs) -> None:
        base = self.prediction(adapter, inputs)
        reference = FrozenReference(adapter)
        self.add_config_lora(adapter, model_config)
        x0, eps, t, cond = inputs
        frozen = reference.predict(adapter.add_noise(x0, eps, t), t, cond)
        torch.testing.assert_close(frozen, self.prediction(adapter, inputs), rtol=0, atol=0)
        torch.testing.assert_close(frozen, base, rtol=0, atol=0)

    def test_preference_step_runs_end_to_end(self, adapter, model_config) -> None:
        """A DPO step from pixels: at step 0 policy == reference, so the loss is log 2; LoRA gets gradient."""
        params = self.add_config_lora(adapter, model_config)
        pixels = torch.rand(1, 2, *self.pixel_shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
        batch = PreferenceBatch(
            prompts=PROMPTS[:1],
            pixel_values=pixels,
            label=torch.ones(1),
            index=torch.zeros(1, dtype=torch.long),
        )
        method = StepInputs(
            loss_fn=functools.partial(diffusion_dpo_loss, beta=5000.0),
            sample_timesteps=functools.partial(sample_timesteps, schedule=adapter.schedule),
        )
        out = preference_step(adapter, LoraDisabledReference(adapter), method, batch, epoch=0, seed=0)
        assert math.isclose(float(out.loss.detach()), math.log(2.0), rel_tol=1e-5)
        out.loss.backward()
        lora_b = [p for (name, p) in adapter.denoiser.named_parameters() if "lora_B" in name]
        assert len(lora_b) == len(params) // 2 and all(torch.isfinite(p.grad).all() for p in lora_b)
        assert any(bool(p.grad.any()) for p in lora_b)
