"""Train the Shapes world's tiny text-to-image pipeline (Stable Diffusion architecture) from rendered images.

    python -m diffusion_align.shapes.train_pipeline --out diffusion_align/shapes/assets/pipeline

Three stages, all seeded: (1) a tiny ``AutoencoderKL`` (64 x 64 RGB <-> 4 x 16 x 16 latents) trained for
reconstruction with a small KL term; its ``scaling_factor`` is set so the training latents have unit variance,
as SD's is; (2) a tiny ``UNet2DConditionModel`` (cross-attention plus an attention-pooled prompt summary added to the
timestep embedding) and a tiny ``CLIPTextModel`` trained jointly with the v-prediction loss (``--prediction-type``; ``PREDICTION_TYPES`` says why not ε) on DDPM's
linear schedule (``--schedule``; ``SCHEDULES`` says why not SD's scaled-linear one), dropping 10% of prompts so
classifier-free guidance works, with an EMA of the weights saved;
(3) the parts saved as a ``StableDiffusionPipeline`` directory (DDIM sampler, no safety checker) that loads with
``StableDiffusionPipeline.from_pretrained``. Training images are rendered from the train split only (held-out
combinations are never shown) and encoded once. The default budget is 3,000 UNet steps of batch 32 (about an hour
of a 2-core CPU after the autoencoder); save with ``--save-every`` to follow the exact reward as it trains.

The shipped pipeline's history is in its ``training_config.json`` (``lineage``): 5,000 ε-prediction steps (first on
SD's scaled-linear betas, then on the linear ones) left it at a held-out exact reward of 0.38, with prompt-independent
backgrounds; 500 further steps with v-prediction (``--init-from``) brought it to 0.85 (guidance 2, 10 DDIM steps,
48 held-out prompts): backgrounds 1.0, colours 0.79, shapes 0.48. That is where it was stopped, since the Shapes
world wants a model that follows prompts often but imperfectly, with room for alignment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DiffusionPipeline,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.training_utils import EMAModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffusion_align.shapes.render import render_batch
from diffusion_align.shapes.world import IMAGE_SIZE, ShapesPrompt, split_prompts
from diffusion_align.testing.tokenizers import CLIP_VOCAB_SIZE, build_clip_tokenizer

TOKEN_LENGTH = 16  # the longest grammar prompt is 13 CLIP tokens with BOS/EOS
TEXT_WIDTH = 32
# Noise schedules (diffusers beta settings). Stable Diffusion's "scaled_linear" keeps sqrt(alpha_bar) = 0.068 of the
# signal at t = 999 (0.119 at t = 901, where 10 "leading" DDIM steps start). On 16 x 16 latents the mean of each
# latent channel over the image, which is where a flat background's colour lives, is then better measured from the
# noisy input than the mean of the noise (std 1/16): the model learns to read the background from the noise instead of
# the prompt, and at sampling time the random starting noise picks the background. DDPM's "linear" schedule leaves
# 0.0064 of the signal at t = 999 (ten times below the noise's channel mean), so the colour must come from the prompt.
SCHEDULES = {
    "linear": {"beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "num_train_timesteps": 1000},
    "scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000},
}

# What the UNet predicts. With the linear schedule the first sampling step sees sqrt(alpha_bar) = 0.0064, and an
# epsilon model's estimate of the clean latent there is (x_t - sqrt(1 - alpha_bar) eps_hat) / 0.0064: a 1% error in
# eps_hat becomes a 150% error in x0, and the epsilon loss barely penalises it (Lin et al., "Common Diffusion Noise
# Schedules and Sample Steps are Flawed", 2024). That is what the first sampling steps decide here, the background
# colour, so an epsilon model draws saturated, prompt-independent backgrounds. v-prediction
# (v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0) is x0 itself at t = 999, so the loss trains the colour directly.
PREDICTION_TYPES = ("v_prediction", "epsilon")


@dataclass
class TrainConfig:
    """Budget and optimiser settings of the three stages."""

    seed: int = 0
    vae_steps: int = 3000
    vae_batch: int = 16
    vae_crop: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    renders_per_prompt: int = 10
    unet_steps: int = 3000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    prompt_dropout: float = 0.1
    schedule: str = "linear"  # a key of SCHEDULES; the saved pipeline's DDIM sampler uses the same betas
    prediction_type: str = "v_prediction"  # or "epsilon"; see PREDICTION_TYPES
    ema_decay: float = 0.999  # the checkpoints hold the exponential moving average of the weights (0: raw weights)
    save_every: int = 250
    threads: int = 1
    vae_from: str = ""  # a saved autoencoder directory: skip stage 1
    init_from: str = ""  # a saved Shapes pipeline: stage 2 continues from its UNet and text encoder (and
    #                      training_config.json its lineage, this run added as a stage)


def build_vae() -> AutoencoderKL:
    """AutoencoderKL: 3 blocks (16, 32, 32 channels), 4x downsampling, 4 latent channels, no mid-block attention.

    Without attention the autoencoder is purely convolutional, so training on crops teaches it whole images.
    The posterior log-variance starts at -10 (std 0.007) so reconstructions from samples are informative from
    the first step, and the latents the trainers sample stay close to the posterior means.
    """
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        norm_num_groups=4,
        latent_channels=4,
        sample_size=IMAGE_SIZE,
        mid_block_add_attention=False,
    )
    channels = vae.config.latent_channels
    with torch.no_grad():
        vae.quant_conv.weight[channels:] = 0.0
        vae.quant_conv.bias[channels:] = -10.0
    return vae


def build_text_encoder() -> CLIPTextModel:
    """A 2-layer CLIP text transformer, width 32, over the full 49,408-token CLIP vocabulary (seeded by the caller)."""
    config = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKEN_LENGTH,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    model = CLIPTextModel(config)
    # CLIP's initialisation (std 0.02 token, 0.01 position embeddings) leaves every prompt's hidden states nearly
    # identical after the final LayerNorm, and the gradient that reaches them through the UNet is too weak to
    # separate them within a CPU budget: the model then ignores its prompts. Unit-scale token embeddings make
    # prompts distinct from the first step; position embeddings at half that scale keep word order (the grammar
    # names two colours: the object's before "on a", the background's after).
    embeddings = model.embeddings  # transformers v5: no text_model wrapper
    with torch.no_grad():
        embeddings.token_embedding.weight.normal_(0.0, 1.0)
        embeddings.position_embedding.weight.normal_(0.0, 0.5)
    return model


def build_unet() -> UNet2DConditionModel:
    """UNet2DConditionModel on 16 x 16 latents: (32, 64, 64) channels, cross-attention on the two upper levels.

    ``addition_embed_type="text"`` also adds an attention-pooled summary of the prompt to the timestep embedding (as
    unCLIP's decoder does), so every ResNet block sees the prompt's colours and shape, not only the cross-attention
    layers: with a text encoder trained from scratch on a CPU budget this is what makes the model follow prompts.
    The stock ``StableDiffusionPipeline`` needs nothing extra: the pooling reads ``encoder_hidden_states``.
    """
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        norm_num_groups=16,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=8,
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
    )


def _pixels(prompts: list[ShapesPrompt], seed: int) -> torch.Tensor:
    """Rendered images as ``[N, 3, 64, 64]`` floats in [-1, 1]."""
    images = torch.from_numpy(render_batch(prompts, seed)).permute(0, 3, 1, 2).float()
    return images / 127.5 - 1.0


def _sample_prompts(rng: np.random.Generator, prompts: list[ShapesPrompt], n: int) -> list[ShapesPrompt]:
    return [prompts[i] for i in rng.integers(0, len(prompts), size=n)]


def train_vae(cfg: TrainConfig, prompts: list[ShapesPrompt], log) -> AutoencoderKL:
    """Stage 1: reconstruction (MSE on pixels of random ``vae_crop`` crops) + ``kl_weight`` x KL, cosine decay."""
    torch.manual_seed(cfg.seed)
    vae = build_vae().train()
    params = list(vae.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.vae_steps)
    rng = np.random.default_rng(cfg.seed)
    for step in range(cfg.vae_steps):
        pixels = _pixels(_sample_prompts(rng, prompts, cfg.vae_batch), seed=cfg.seed * 1_000_003 + step)
        top, left = rng.integers(0, IMAGE_SIZE - cfg.vae_crop + 1, size=2)
        pixels = pixels[:, :, top : top + cfg.vae_crop, left : left + cfg.vae_crop]
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, pixels) + cfg.kl_weight * posterior.kl().mean()
        update(loss, params, optimizer, schedule, max_grad_norm=None)
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.5f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def set_scaling_factor(vae: AutoencoderKL, prompts: list[ShapesPrompt], seed: int) -> float:
    """Set ``vae.config.scaling_factor`` to 1 / std of posterior samples of 512 training renders."""
    pixels = _pixels(prompts[:: max(1, len(prompts) // 512)][:512], seed)
    latents = torch.cat([vae.encode(chunk).latent_dist.sample() for chunk in pixels.split(64)])
    factor = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKL, seed: int) -> float:
    """Mean squared error (pixels in [-1, 1]) of encoding and decoding 256 renders of held-out prompts."""
    prompts = split_prompts("held_out")
    pixels = _pixels([prompts[i] for i in range(0, len(prompts), max(1, len(prompts) // 256))][:256], seed)
    decoded = torch.cat([vae.decode(vae.encode(chunk).latent_dist.sample()).sample for chunk in pixels.split(64)])
    return float(F.mse_loss(decoded, pixels))


def _encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=TOKEN_LENGTH, truncation=True, return_tensors="pt")
    return text_encoder(ids.input_ids)[0]


@torch.no_grad()
def encode_renders(
    vae: AutoencoderKL, prompts: list[ShapesPrompt], renders_per_prompt: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Render every prompt ``renders_per_prompt`` times and encode once.

    Returns:
        Posterior means and standard deviations ``[N, 4, 16, 16]`` (unscaled) and the prompt index of each row.
    """
    index = [i for i in range(len(prompts)) for _ in range(renders_per_prompt)]
    means, stds = [], []
    for start in range(0, len(index), 256):
        chunk = [prompts[i] for i in index[start : start + 256]]
        posterior = vae.encode(_pixels(chunk, seed=seed + start)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds), index


def train_denoiser(
    cfg: TrainConfig,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    prompts: list[ShapesPrompt],
    log,
    checkpoint=None,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Stage 2: UNet + text encoder, v- (or ε-) prediction MSE at uniform timesteps, prompt dropout for CFG.

    ``checkpoint(unet, text_encoder, step)`` is called every ``cfg.save_every`` steps when given.
    """
    torch.manual_seed(cfg.seed + 1)
    means, stds, prompt_index = encode_renders(vae, prompts, cfg.renders_per_prompt, seed=cfg.seed * 7_000_003)
    log(f"encoded {len(prompt_index)} renders of {len(prompts)} training prompts")
    if cfg.init_from:
        unet = UNet2DConditionModel.from_pretrained(cfg.init_from, subfolder="unet").train()
        text_encoder = CLIPTextModel.from_pretrained(cfg.init_from, subfolder="text_encoder").train()
    else:
        unet, text_encoder = build_unet().train(), build_text_encoder().train()
    scheduler = DDPMScheduler(**SCHEDULES[cfg.schedule], prediction_type=cfg.prediction_type)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=1e-2)
    ema = EMAModel(params, decay=cfg.ema_decay) if cfg.ema_decay else None
    schedule = warmup_cosine(optimizer, cfg.unet_steps)
    rng = np.random.default_rng(cfg.seed + 1)
    scale = vae.config.scaling_factor
    for step in range(cfg.unet_steps):
        rows = torch.from_numpy(rng.integers(0, len(prompt_index), size=cfg.unet_batch))
        latents = (means[rows] + stds[rows] * torch.randn_like(means[rows])) * scale
        texts = ["" if rng.random() < cfg.prompt_dropout else prompts[prompt_index[r]].text for r in rows.tolist()]
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (len(rows),))
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, _encode_prompts(tokenizer, text_encoder, texts)).sample
        target = noise if cfg.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
        loss = F.mse_loss(prediction, target)
        update(loss, params, optimizer, schedule, ema)
        if step % 100 == 0 or step == cfg.unet_steps - 1:
            log(f"unet step {step}: loss {loss.item():.5f}")
        if checkpoint is not None and cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_averaged(checkpoint, (unet, text_encoder), ema, params, step + 1)
    if ema is not None:
        ema.copy_to(params)
    return unet.eval(), text_encoder.eval()


def update(loss: torch.Tensor, params: list, optimizer: torch.optim.Optimizer, schedule, ema: EMAModel | None = None,
           max_grad_norm: float | None = 1.0) -> None:
    """One optimizer step on ``loss``: gradients of ``params`` clipped to ``max_grad_norm`` (None: not clipped, as
    the autoencoder stages train), the LR schedule and the EMA (when given) advanced."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    schedule.step()
    if ema is not None:
        ema.step(params)


def save_averaged(checkpoint, models: tuple, ema: EMAModel | None, params: list, step: int) -> None:
    """``checkpoint(*models, step)`` with the EMA weights swapped in and the models in eval mode, then back to training."""
    with averaged_weights(ema, params):
        checkpoint(*(model.eval() for model in models), step)
    for model in models:
        model.train()


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 200) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``steps`` (``steps`` 0: a stage that is skipped)."""
    total = max(1, steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total)))
    )


@contextlib.contextmanager
def averaged_weights(ema, params):
    """Swap the moving-average weights in for the block (a no-op without EMA), then put the live weights back."""
    if ema is None:
        yield
        return
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


def assemble(
    vae, text_encoder, tokenizer, unet, schedule: str = "linear", prediction_type: str = "v_prediction"
) -> StableDiffusionPipeline:
    """The stock pipeline class with a DDIM sampler on the training schedule and no safety checker.

    "trailing" timestep spacing starts sampling at t = 999, the noise level the model was trained to start from
    (SD's "leading" spacing with 10 steps would start at t = 901).
    """
    scheduler = DDIMScheduler(
        **SCHEDULES[schedule],
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        timestep_spacing="trailing",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def continued_record(source: str | Path, denoiser: str, run: str) -> dict:
    """``training_config.json`` entries of a run continued from the saved pipeline ``source`` (either world): its
    ``lineage`` (one line standing for it when it recorded none) with this run, described by ``run``, as the next
    stage."""
    source = Path(source)
    recorded = source / "training_config.json"
    previous = json.loads(recorded.read_text()) if recorded.is_file() else {}
    done = previous.get(f"{denoiser}_steps_done")
    lineage = list(previous.get("lineage", []))
    if not lineage:
        lineage.append(f"0: {source} ({'an unrecorded number of' if done is None else done} {denoiser} steps; "
                       "no lineage recorded)")
    lineage.append(f"{len(lineage)}: continued from {source} at its {denoiser} step {'?' if done is None else done}: "
                   f"{run}")
    return {"lineage": lineage}


def save_pipeline(pipeline: DiffusionPipeline, out: Path, cfg, step: int, denoiser: str = "unet",
                  record: dict | None = None) -> None:
    """Save into ``out`` atomically: write a sibling temp directory, then swap it in.

    ``training_config.json`` records ``cfg`` (a training-config dataclass of either world),
    ``{denoiser}_steps_done`` and the entries of ``record`` (e.g. the lineage of a continued model)."""
    staging = out.with_name(out.name + ".saving")
    if staging.exists():
        shutil.rmtree(staging)
    pipeline.save_pretrained(staging)
    recorded = {**asdict(cfg), f"{denoiser}_steps_done": step, **(record or {})}
    (staging / "training_config.json").write_text(json.dumps(recorded, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)


def train_pipeline(out: str | Path, cfg: TrainConfig) -> Path:
    """Run all stages and save the pipeline into ``out`` (with ``training_config.json``); returns ``out``."""
    out = Path(out)
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"--schedule {cfg.schedule!r}: expected one of {sorted(SCHEDULES)}")
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"--prediction-type {cfg.prediction_type!r}: expected one of {list(PREDICTION_TYPES)}")
    torch.set_num_threads(cfg.threads)
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    prompts = split_prompts("train")
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        tokenizer = build_clip_tokenizer(tokenizer_dir, model_max_length=TOKEN_LENGTH)
    if cfg.vae_from:
        vae = AutoencoderKL.from_pretrained(cfg.vae_from).eval().requires_grad_(False)
    else:
        vae = train_vae(cfg, prompts, log)
        log(f"vae scaling_factor = {set_scaling_factor(vae, prompts, cfg.seed + 2):.4f}")
        vae.save_pretrained(out.with_name(out.name + ".vae"))
    log(f"vae reconstruction MSE on held-out renders: {reconstruction_error(vae, cfg.seed + 3):.5f}")

    record = continued_record(cfg.init_from, "unet", (
        f"+{cfg.unet_steps} steps of {cfg.unet_batch} images, lr {cfg.unet_lr:g} (warmup + cosine), "
        f"{cfg.prediction_type}, {cfg.schedule} betas, EMA {cfg.ema_decay:g}")) if cfg.init_from else {}

    def checkpoint(unet, text_encoder, step):
        save_pipeline(assemble(vae, text_encoder, tokenizer, unet, cfg.schedule, cfg.prediction_type), out, cfg, step,
                      record=record)
        log(f"saved {out} at unet step {step}")

    unet, text_encoder = train_denoiser(cfg, vae, tokenizer, prompts, log, checkpoint)
    if not cfg.save_every or cfg.unet_steps % cfg.save_every:
        checkpoint(unet, text_encoder, cfg.unet_steps)
    return out


def parse_training_args(config_class, description: str, argv: list[str] | None = None):
    """``--out OUT`` plus one ``--field-name`` option per field of the ``config_class`` dataclass (its defaults).

    Returns:
        ``(out, config)``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", required=True, help="pipeline directory to write (the autoencoder also goes to OUT.vae)")
    for field, default in asdict(config_class()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(default), default=default)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    return out, config_class(**args)


def main(argv: list[str] | None = None) -> None:
    train_pipeline(*parse_training_args(TrainConfig, __doc__.split("\n\n")[0], argv))


if __name__ == "__main__":
    main()
