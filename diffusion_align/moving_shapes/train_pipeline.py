"""Train the Moving Shapes world's tiny text-to-video pipeline (Wan 2.1 architecture) from rendered clips.

    python -m diffusion_align.moving_shapes.train_pipeline --out diffusion_align/moving_shapes/assets/pipeline

Three stages, all seeded, mirroring :mod:`diffusion_align.shapes.train_pipeline`:

1. a tiny ``AutoencoderKLWan`` (Wan's causal 3D VAE) trained for reconstruction of 9-frame 32 x 32 clips, with
   2x spatial and 2x temporal compression (``[3, 9, 32, 32]`` pixels <-> ``[8, 5, 16, 16]`` latents); its
   ``latents_mean`` / ``latents_std`` are set per channel from the training latents, as Wan's are; optionally
   object pixels weighted (``--vae-object-weight``), continued from a saved autoencoder (``--vae-init``, e.g. the
   ``OUT.vae-partial`` it saves as it goes), and followed by a decoder-only stage that keeps the latents
   (``--decoder-steps``);
2. a tiny ``WanTransformer3DModel`` and ``UMT5EncoderModel`` trained jointly with Wan's rectified-flow objective
   (``x_σ = (1-σ)·x0 + σ·ε``, target ``ε - x0``, timestep ``σ·1000``, σ drawn uniformly and shifted as the
   sampler's ``shift`` does), prompts embedded exactly as ``WanPipeline.encode_prompt`` does (UMT5 states, zero
   past each prompt's length, padded to 512 tokens), 10% of prompts dropped for classifier-free guidance, an EMA
   of the weights saved;
3. a stock ``WanPipeline`` directory (flow-matching Euler sampler) that loads with ``WanPipeline.from_pretrained``.

Training clips are rendered from the train split only and encoded once. Every stage runs on ``--device`` (``cpu``
or ``cuda``); clips are rendered on the CPU, by ``--workers`` data-loader processes when that is above 0 (on a GPU
the renderer, ~1.3 ms per clip on one core, would otherwise be the bottleneck). Measured on one H200 with
``--device cuda --workers 12``: 0.11 s per autoencoder step of 32 clips, 0.037 s per transformer step of 128 clips
(0.041 at 256), the 21,600 training clips rendered and encoded in 5 s; on 2 CPU cores 0.57 s per transformer step of 32.
A new transformer can start from a saved pipeline's text encoder (``--text-from``; ``--init-from`` continues both), and
``--autocast bf16`` runs stage 2's forwards in bfloat16 (float32 weights): on 2 CPU cores with AVX512-BF16 a 2 x 2-patch
step of 32 clips takes 1.1 s against 1.5 s in float32 (the 21,600 clips are rendered and encoded in 200 s there).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from diffusers.training_utils import EMAModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

from diffusion_align.moving_shapes.render import render_clips
from diffusion_align.moving_shapes.world import FRAME_SIZE, FRAMES, MovingShapesPrompt, split_prompts
from diffusion_align.shapes.train_pipeline import (
    continued_record,
    parse_training_args,
    save_averaged,
    save_pipeline,
    update,
    warmup_cosine,
)
from diffusion_align.testing.tiny_text import t5_tokenizer

LATENT_CHANNELS = 8
TEXT_WIDTH = 32
TEXT_TOKENS = 32  # the longest grammar prompt is under 30 T5 tokens with EOS; states past it are zeros anyway
PIPELINE_TEXT_LENGTH = 512  # WanPipeline's max_sequence_length: training pads the embeddings to it, as sampling does
FLOW_SHIFT = 3.0  # the sampler's shift (Wan 2.1 480p's); training draws σ with the same shift


@dataclass
class VideoTrainConfig:
    """Budget and optimiser settings of the three stages."""

    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 8
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    vae_object_weight: float = 1.0  # stage 1: weight of the object's pixels against the background's (1: plain MSE)
    vae_init: str = ""  # stage 1 starts from this saved autoencoder instead of random weights
    vae_save_every: int = 250  # stage 1 saves OUT.vae-partial this often (continue from it with --vae-init)
    renders_per_prompt: int = 4
    steps: int = 4000
    batch: int = 32
    lr: float = 1e-3
    prompt_dropout: float = 0.1
    ema_decay: float = 0.999  # the checkpoints hold the exponential moving average of the weights (0: raw weights)
    save_every: int = 250
    threads: int = 1
    decoder_steps: int = 0  # stage 1b: fine-tune the decoder alone (the encoder, hence the latents, unchanged)
    decoder_batch: int = 8
    decoder_lr: float = 5e-4
    object_weight: float = 10.0  # stage 1b: weight of the object's pixels against the background's
    vae_from: str = ""  # a saved autoencoder directory: skip stage 1
    init_from: str = ""  # a saved Moving Shapes pipeline: stage 2 continues its transformer and text encoder (and
    #                      training_config.json its lineage, this run added as a stage)
    text_from: str = ""  # a saved Moving Shapes pipeline whose text encoder starts a new transformer's training
    max_prompts: int = 0  # train on an evenly spaced subset of this many training prompts (0: all 5,400)
    transformer_layers: int = 4  # a new transformer's blocks (with init_from: the continued one's, as recorded)
    transformer_heads: int = 4  # its attention heads of 32 channels: width = 32 x heads
    patch: int = 4  # its spatial patch side in latent pixels; width must be >= patch x patch x 8
    device: str = "cpu"  # cpu | cuda (float32 weights; TF32 matmuls on a GPU)
    autocast: str = ""  # "bf16": stage 2's forwards under bfloat16 autocast (CPUs with AVX512-BF16: ~1.3x faster)
    workers: int = 0  # data-loader processes rendering clips (0: rendered in the training process)


def build_vae() -> AutoencoderKLWan:
    """Wan's causal 3D VAE, 2 levels (16, 32 channels): 2x in space, 2x in time, 8 latent channels.

    Wan's encoder reads the first frame alone, then 4 frames at a time; one temporal downsampling turns each
    chunk of 4 into 2 latent frames, so 9 frames give 5. ``scale_factor_*`` tell ``WanPipeline`` the compression.
    2x in space, not Wan's 8x: the objects are 6 to 13 px wide, and a 4x autoencoder of this size still
    reconstructed clips with a mean squared error of 0.089 after 800 steps (0.063 after 300 steps at 2x).
    The posterior log-variance starts at -10 so reconstructions from samples are informative from the first step.
    """
    vae = AutoencoderKLWan(
        base_dim=16,
        z_dim=LATENT_CHANNELS,
        dim_mult=[1, 2],
        num_res_blocks=1,
        temperal_downsample=[True],
        latents_mean=[0.0] * LATENT_CHANNELS,
        latents_std=[1.0] * LATENT_CHANNELS,
        scale_factor_temporal=2,
        scale_factor_spatial=2,
    )
    with torch.no_grad():
        vae.quant_conv.weight[LATENT_CHANNELS:] = 0.0
        vae.quant_conv.bias[LATENT_CHANNELS:] = -10.0
    return vae


def build_text_encoder(tokenizer: T5Tokenizer) -> UMT5EncoderModel:
    """Wan's UMT5 encoder in miniature: 2 layers, width 32, over the offline T5 vocabulary."""
    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=TEXT_WIDTH,
        d_kv=8,
        d_ff=4 * TEXT_WIDTH,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        is_encoder_decoder=False,
    )
    return UMT5EncoderModel(config)


def build_transformer(layers: int = 4, heads: int = 4, patch: int = 4) -> WanTransformer3DModel:
    """``WanTransformer3DModel``: by default 4 blocks of width 128 (4 heads x 32), patch 1 x 4 x 4 -> 5 x 4 x 4 = 80
    tokens.

    Patches of 4 x 4 latent pixels (8 x 8 px of two frames), not Wan's 2 x 2: 320 tokens made a training step
    3.5x slower on a CPU core (1.5 s against 0.43 s for 32 clips). The width must be at least a patch's 4 x 4 x 8 =
    128 latent values: at width 64 the output projection has rank 64, half of each patch's noise cannot be passed
    through, and 2,000 steps left the velocity loss at 0.74 even at sigma 0.2 and the samples grainy, without objects.
    At width 128 and 8,500 steps of 128-256 clips on a GPU, samples are still incoherent over time and score 0.40
    under the exact reward. With ``patch=2`` (320 tokens of 32 values, so the width-128 stream is not spent carrying
    the noise through) 4,500 steps of 32 clips on 2 CPU cores reach 0.45, and 4,000 more (``--init-from``, lr 5e-4)
    0.64 (the shipped model, README): direction now mostly follows the prompt, shape seldom; ``layers`` and longer
    training are the knobs to try next.

    Raises:
        ValueError: the width ``32 x heads`` is below a patch's ``patch x patch x 8`` latent values.
    """
    width, values = 32 * heads, patch * patch * LATENT_CHANNELS
    if width < values:
        raise ValueError(f"--transformer-heads {heads} (width {width}) with --patch {patch}: a token carries {values} "
                         f"latent values, so the width must be at least {values} ({values // 32} heads)")
    return WanTransformer3DModel(
        patch_size=(1, patch, patch),
        num_attention_heads=heads,
        attention_head_dim=32,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        text_dim=TEXT_WIDTH,
        freq_dim=64,
        ffn_dim=4 * width,
        num_layers=layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        rope_max_seq_len=64,
    )


def clip_pixels(prompts: list[MovingShapesPrompt], seed: int) -> torch.Tensor:
    """Rendered clips as ``[N, 3, F, 32, 32]`` floats in [-1, 1] (the VAE's layout: channels before frames)."""
    clips = torch.from_numpy(render_clips(prompts, seed)).permute(0, 4, 1, 2, 3).float()
    return clips / 127.5 - 1.0


def weighted_mse(reconstruction: torch.Tensor, pixels: torch.Tensor, object_weight: float) -> torch.Tensor:
    """Reconstruction MSE where the object's pixels weigh ``object_weight`` (1: the plain MSE).

    The objects cover a few percent of a frame, so the plain MSE can leave them blurred and off-colour while the
    background is exact. Object pixels are those away from the frame's background colour, read at the top-left
    pixel (objects keep :data:`~diffusion_align.moving_shapes.world.EDGE_MARGIN` px from every edge).
    """
    if object_weight == 1.0:
        return F.mse_loss(reconstruction, pixels)
    is_object = (pixels - pixels[..., :1, :1]).abs().amax(dim=1, keepdim=True) > 0.1
    weight = 1.0 + (object_weight - 1.0) * is_object.float()
    return (weight * (reconstruction - pixels).square()).mean()


class RenderedBatches(torch.utils.data.Dataset):
    """Step ``i`` of an autoencoder stage: ``batch`` training prompts drawn and rendered with a generator seeded by
    ``(seed, i)``, so the clips of a step do not depend on which process renders them or on the steps before it."""

    def __init__(self, prompts: list[MovingShapesPrompt], steps: int, batch: int, seed: int) -> None:
        self.prompts, self.steps, self.batch, self.seed = prompts, steps, batch, seed

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, step])
        chosen = [self.prompts[i] for i in rng.integers(0, len(self.prompts), size=self.batch)]
        return clip_pixels(chosen, seed=int(rng.integers(2**62)))


class RenderedChunks(torch.utils.data.Dataset):
    """Consecutive chunks of ``[prompts[i] for i in index]`` rendered with seed ``seed + start of the chunk``."""

    def __init__(self, prompts: list[MovingShapesPrompt], index: list[int], chunk: int, seed: int) -> None:
        self.prompts, self.index, self.chunk, self.seed = prompts, index, chunk, seed

    def __len__(self) -> int:
        return -(-len(self.index) // self.chunk)

    def __getitem__(self, k: int) -> torch.Tensor:
        start = k * self.chunk
        return clip_pixels([self.prompts[i] for i in self.index[start : start + self.chunk]], self.seed + start)


def rendered(dataset: torch.utils.data.Dataset, cfg: VideoTrainConfig):
    """Iterate ``dataset`` in order, rendered by ``cfg.workers`` processes (pinned memory for a GPU)."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=cfg.workers,
                                       pin_memory=cfg.device != "cpu", prefetch_factor=4 if cfg.workers else None)


def train_vae(cfg: VideoTrainConfig, prompts: list[MovingShapesPrompt], log, checkpoint=None) -> AutoencoderKLWan:
    """Stage 1: reconstruction MSE on pixels (object pixels weighted ``vae_object_weight``) + ``kl_weight`` x KL,
    warmup and cosine decay; from scratch, or from the autoencoder in ``vae_init``. ``checkpoint(vae, step)`` is
    called every ``cfg.vae_save_every`` steps when given (a run of hours on a CPU must survive an interruption)."""
    torch.manual_seed(cfg.seed)
    vae = (AutoencoderKLWan.from_pretrained(cfg.vae_init) if cfg.vae_init else build_vae()).to(cfg.device).train()
    params = list(vae.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.vae_lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, cfg.vae_steps, warmup=50)
    batches = rendered(RenderedBatches(prompts, cfg.vae_steps, cfg.vae_batch, cfg.seed * 1_000_003), cfg)
    for step, pixels in enumerate(batches):
        pixels = pixels.to(cfg.device, non_blocking=True)
        posterior = vae.encode(pixels).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = weighted_mse(reconstruction, pixels, cfg.vae_object_weight) + cfg.kl_weight * posterior.kl().mean()
        update(loss, params, optimizer, schedule, max_grad_norm=None)
        if step % 100 == 0 or step == cfg.vae_steps - 1:
            log(f"vae step {step}: loss {loss.item():.5f}")
        if checkpoint is not None and cfg.vae_save_every and (step + 1) % cfg.vae_save_every == 0:
            checkpoint(vae, step + 1)
    return vae.eval().requires_grad_(False)


def finetune_decoder(cfg: VideoTrainConfig, vae: AutoencoderKLWan, prompts: list[MovingShapesPrompt], log
                     ) -> AutoencoderKLWan:
    """Stage 1b: the decoder alone, on :func:`weighted_mse` with ``object_weight``.

    The encoder stays frozen, so the latents, and a denoiser already trained on them, are unchanged: only what
    they decode to gets sharper.
    """
    torch.manual_seed(cfg.seed + 2)
    vae.requires_grad_(False).train()
    trained = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    for param in trained:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(trained, lr=cfg.decoder_lr, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, cfg.decoder_steps, warmup=20)
    batches = rendered(RenderedBatches(prompts, cfg.decoder_steps, cfg.decoder_batch, cfg.seed * 3_000_017), cfg)
    for step, pixels in enumerate(batches):
        pixels = pixels.to(cfg.device, non_blocking=True)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.mean
        loss = weighted_mse(vae.decode(latents).sample, pixels, cfg.object_weight)
        update(loss, trained, optimizer, schedule, max_grad_norm=None)
        if step % 100 == 0 or step == cfg.decoder_steps - 1:
            log(f"decoder step {step}: weighted loss {loss.item():.5f}")
    return vae.eval().requires_grad_(False)


@torch.no_grad()
def encode_renders(
    vae: AutoencoderKLWan, prompts: list[MovingShapesPrompt], cfg: VideoTrainConfig, seed: int
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Render every prompt ``cfg.renders_per_prompt`` times and encode once, on ``cfg.device``.

    Returns:
        Posterior means and standard deviations ``[N, 8, 5, 16, 16]`` (unnormalised) and each row's prompt index.
    """
    index = [i for i in range(len(prompts)) for _ in range(cfg.renders_per_prompt)]
    means, stds = [], []
    device = next(vae.parameters()).device
    for pixels in rendered(RenderedChunks(prompts, index, 64, seed), cfg):
        posterior = vae.encode(pixels.to(device, non_blocking=True)).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds), index


def set_latent_statistics(vae: AutoencoderKLWan, means: torch.Tensor) -> None:
    """Set the VAE's per-channel ``latents_mean`` / ``latents_std`` from training latents ``[N, C, f, h, w]``."""
    per_channel = means.transpose(0, 1).reshape(means.shape[1], -1)
    vae.register_to_config(latents_mean=per_channel.mean(1).tolist(), latents_std=per_channel.std(1).tolist())


def latent_statistics(vae: AutoencoderKLWan, device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel ``latents_mean`` and ``latents_std`` as ``[1, C, 1, 1, 1]`` tensors on ``device``."""
    shape = (1, -1, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean, device=device).view(shape)
    std = torch.tensor(vae.config.latents_std, device=device).view(shape)
    return mean, std


def normalize_latents(latents: torch.Tensor, statistics: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(z - latents_mean) / latents_std`` per channel (``statistics``: :func:`latent_statistics`): what
    ``WanPipeline`` undoes before decoding."""
    mean, std = statistics
    return (latents - mean) / std


def tokenize(tokenizer: T5Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask ``[B, TEXT_TOKENS]`` as ``WanPipeline`` tokenizes (padded, EOS added)."""
    tokens = tokenizer(
        texts, padding="max_length", max_length=TEXT_TOKENS, truncation=True, add_special_tokens=True,
        return_attention_mask=True, return_tensors="pt",
    )
    return tokens.input_ids, tokens.attention_mask


def embed_tokens(text_encoder: UMT5EncoderModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``WanPipeline.encode_prompt``'s embeddings, with gradients: UMT5 states zeroed past each prompt, ``[B, 512, D]``."""
    states = text_encoder(ids, mask).last_hidden_state
    states = states * mask.unsqueeze(-1).to(states.dtype)
    return F.pad(states, (0, 0, 0, PIPELINE_TEXT_LENGTH - TEXT_TOKENS))


def encode_prompts(tokenizer: T5Tokenizer, text_encoder: UMT5EncoderModel, texts: list[str]) -> torch.Tensor:
    """:func:`embed_tokens` of :func:`tokenize`d ``texts`` on the text encoder's device."""
    device = text_encoder.device
    return embed_tokens(text_encoder, *(t.to(device) for t in tokenize(tokenizer, texts)))


def shifted_sigmas(u: torch.Tensor, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """The flow sampler's time shift ``σ = s·u / (1 + (s-1)·u)`` applied to uniform ``u`` in (0, 1)."""
    return shift * u / (1.0 + (shift - 1.0) * u)


def train_denoiser(
    cfg: VideoTrainConfig,
    vae: AutoencoderKLWan,
    tokenizer: T5Tokenizer,
    prompts: list[MovingShapesPrompt],
    encoded: tuple[torch.Tensor, torch.Tensor, list[int]],
    log,
    checkpoint=None,
) -> tuple[WanTransformer3DModel, UMT5EncoderModel]:
    """Stage 2: transformer + text encoder on the rectified-flow velocity MSE, prompt dropout for CFG.

    ``encoded`` is :func:`encode_renders`' output; ``checkpoint(transformer, text_encoder, step)`` is called every
    ``cfg.save_every`` steps when given.
    """
    torch.manual_seed(cfg.seed + 1)
    means, stds, prompt_index = encoded
    if cfg.init_from:
        transformer = WanTransformer3DModel.from_pretrained(cfg.init_from, subfolder="transformer")
        text_encoder = UMT5EncoderModel.from_pretrained(cfg.init_from, subfolder="text_encoder")
    else:
        transformer = build_transformer(cfg.transformer_layers, cfg.transformer_heads, cfg.patch)
        text_encoder = (UMT5EncoderModel.from_pretrained(cfg.text_from, subfolder="text_encoder") if cfg.text_from
                        else build_text_encoder(tokenizer))
    transformer, text_encoder = transformer.to(cfg.device).train(), text_encoder.to(cfg.device).train()
    params = list(transformer.parameters()) + list(text_encoder.parameters())
    on_gpu = cfg.device != "cpu"  # fused AdamW and multi-tensor EMA updates: a few kernels per step, not hundreds
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2, fused=on_gpu or None)
    ema = EMAModel(params, decay=cfg.ema_decay, foreach=on_gpu) if cfg.ema_decay else None
    schedule = warmup_cosine(optimizer, cfg.steps)
    # every prompt tokenized once; row len(prompts) is the empty prompt that prompt dropout puts in
    ids, mask = (t.to(cfg.device) for t in tokenize(tokenizer, [p.text for p in prompts] + [""]))
    prompt_index = torch.tensor(prompt_index, device=cfg.device)
    statistics = latent_statistics(vae, cfg.device)  # once: not two host-to-device copies per step
    rng = np.random.default_rng(cfg.seed + 1)
    autocast = torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")
    for step in range(cfg.steps):
        rows = torch.from_numpy(rng.integers(0, len(prompt_index), size=cfg.batch)).to(cfg.device)
        dropped = torch.from_numpy(rng.random(cfg.batch) < cfg.prompt_dropout).to(cfg.device)
        latents = normalize_latents(means[rows] + stds[rows] * torch.randn_like(means[rows]), statistics)
        texts = torch.where(dropped, len(prompts), prompt_index[rows])
        noise = torch.randn_like(latents)
        sigmas = shifted_sigmas(torch.rand(len(rows), device=cfg.device)).view(-1, 1, 1, 1, 1)
        noisy = (1.0 - sigmas) * latents + sigmas * noise
        with autocast:
            prediction = transformer(
                hidden_states=noisy, timestep=sigmas.flatten() * 1000.0,
                encoder_hidden_states=embed_tokens(text_encoder, ids[texts], mask[texts]), return_dict=False,
            )[0]
        loss = F.mse_loss(prediction.float(), noise - latents)
        update(loss, params, optimizer, schedule, ema)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"transformer step {step}: loss {loss.item():.5f}")
        if checkpoint is not None and cfg.save_every and (step + 1) % cfg.save_every == 0:
            save_averaged(checkpoint, (transformer, text_encoder), ema, params, step + 1)
    if ema is not None:
        ema.copy_to(params)
    return transformer.eval(), text_encoder.eval()


def assemble(vae, text_encoder, tokenizer, transformer) -> WanPipeline:
    """The stock ``WanPipeline`` with the flow-matching Euler sampler at the training shift."""
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=FLOW_SHIFT)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                       transformer=transformer)


@torch.no_grad()
def reconstruction_error(vae: AutoencoderKLWan, seed: int) -> float:
    """Mean squared error (pixels in [-1, 1]) of encoding and decoding 64 clips of held-out prompts."""
    prompts = split_prompts("held_out")
    pixels = clip_pixels(prompts[:: max(1, len(prompts) // 64)][:64], seed).to(next(vae.parameters()).device)
    decoded = torch.cat([vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in pixels.split(16)])
    return float(F.mse_loss(decoded, pixels))


def continuation(cfg: VideoTrainConfig) -> tuple[VideoTrainConfig, dict]:
    """With ``init_from``: ``cfg`` with the continued transformer's own blocks, heads and patch (the options for a new
    one do not apply to it), and the record that carries the source's ``lineage`` forward with this run as its last
    stage; without it, ``cfg`` unchanged and an empty record."""
    if not cfg.init_from:
        return cfg, {}
    source = Path(cfg.init_from)
    architecture = WanTransformer3DModel.load_config(str(source), subfolder="transformer")
    cfg = replace(cfg, transformer_layers=architecture["num_layers"],
                  transformer_heads=architecture["num_attention_heads"], patch=architecture["patch_size"][1])
    return cfg, continued_record(source, "transformer", (
        f"+{cfg.steps} steps of {cfg.batch} clips, lr {cfg.lr:g} (warmup + cosine), EMA {cfg.ema_decay:g}, "
        f"{cfg.renders_per_prompt} renders per training prompt of seed {cfg.seed}"
        f"{', bfloat16 autocast' if cfg.autocast == 'bf16' else ''}"))


def train_pipeline(out: str | Path, cfg: VideoTrainConfig) -> Path:
    """Run all stages and save the pipeline into ``out`` (with ``training_config.json``); returns ``out``."""
    out = Path(out)
    if cfg.autocast not in ("", "bf16"):
        raise ValueError(f"--autocast {cfg.autocast!r}: expected '' (float32) or 'bf16'")
    if cfg.init_from and cfg.text_from:
        raise ValueError(f"--text-from {cfg.text_from!r} with --init-from {cfg.init_from!r}: --init-from continues "
                         "that pipeline's own text encoder; give --text-from only to start a new transformer")
    cfg, record = continuation(cfg)
    torch.set_num_threads(cfg.threads)
    if cfg.device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started = time.time()

    def log(message: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {message}", flush=True)

    log(f"clips of {FRAMES} frames, {FRAME_SIZE} px")
    prompts = split_prompts("train")
    if cfg.max_prompts:
        prompts = prompts[:: max(1, len(prompts) // cfg.max_prompts)][: cfg.max_prompts]
    tokenizer = t5_tokenizer()
    if cfg.vae_from:
        vae = AutoencoderKLWan.from_pretrained(cfg.vae_from).to(cfg.device).eval().requires_grad_(False)
    else:
        def vae_checkpoint(vae: AutoencoderKLWan, step: int) -> None:
            vae.save_pretrained(out.with_name(out.name + ".vae-partial"))
            stats = "the initial autoencoder's latent statistics" if cfg.vae_init else "no latent statistics yet"
            log(f"saved {out.name}.vae-partial at autoencoder step {step} ({stats}; set when stage 1 ends)")

        vae = train_vae(cfg, prompts, log, vae_checkpoint)
    log(f"vae reconstruction MSE on held-out clips: {reconstruction_error(vae, cfg.seed + 3):.5f}")
    if cfg.decoder_steps:
        vae = finetune_decoder(cfg, vae, prompts, log)
        log(f"after decoder fine-tuning: {reconstruction_error(vae, cfg.seed + 3):.5f}")
        vae.save_pretrained(out.with_name(out.name + ".vae"))  # latents_mean/std kept: the encoder is unchanged
    encoded = encode_renders(vae, prompts, cfg, seed=cfg.seed * 7_000_003)
    log(f"encoded {len(encoded[2])} clips of {len(prompts)} training prompts; latents {list(encoded[0].shape[1:])}")
    if not cfg.vae_from:
        set_latent_statistics(vae, encoded[0])
        vae.save_pretrained(out.with_name(out.name + ".vae"))

    def checkpoint(transformer, text_encoder, step):
        save_pipeline(assemble(vae, text_encoder, tokenizer, transformer), out, cfg, step, "transformer", record)
        log(f"saved {out} at transformer step {step}")

    transformer, text_encoder = train_denoiser(cfg, vae, tokenizer, prompts, encoded, log, checkpoint)
    if not cfg.save_every or cfg.steps % cfg.save_every:
        checkpoint(transformer, text_encoder, cfg.steps)
    return out


def main(argv: list[str] | None = None) -> None:
    train_pipeline(*parse_training_args(VideoTrainConfig, __doc__.split("\n\n")[0], argv))


if __name__ == "__main__":
    main()
