"""LPO's Latent Reward Model (LRM): a noise-aware reward on *noisy latents*, built from the diffusion UNet itself.

Zhang et al., NeurIPS 2025, "Diffusion Model as a Noise-Aware Latent Reward Model" (``Kwai-Kolors/LPO``,
``lpo/preference_models/models/sd15_preference_model.py``). The UNet that is being aligned already understands noisy
latents at every timestep, so its encoder half is a reward backbone that needs no VAE decoding:

* the UNet's **down blocks and mid block** run on the noisy latent ``x_t`` at timestep ``t`` with the prompt's
  conditioning (the up blocks are never run);
* each down block's last feature map before its downsampler (SD1.5: the residuals at indices 2, 5, 8, 11, with
  320, 640, 1280, 1280 channels) and the mid block's output are global-average-pooled and concatenated (4,800 for
  SD1.5), then projected by ``Linear(→ projection_dim, bias=False)``;
* classifier-free guidance (7.5) is applied to the **pooled mid feature only**: ``u + w·(c - u)``;
* the text side is the text encoder's pooled output through ``text_projection`` (no bias);
* ``score = exp(logit_scale) · cos(image_feature, text_feature)`` (PickScore's form, so PickScore's pairwise
  cross-entropy trains it and its scale suits SPO/LPO's softmax thresholds).

Scoring convention (LPO): a candidate ``x_{t-1}`` sampled from ``x_t`` is scored at timestep ``t``.
The training recipe on pairwise data is :func:`diffusion_align.lrm.train_lrm` (``diffalign train-lrm``).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

CONFIG_NAME = "lrm_config.json"
HEADS_NAME = "heads.safetensors"


class LatentRewardModel(nn.Module):
    """A reward on noisy latents from a UNet's encoder half (module docstring).

    Args:
        unet: the backbone (a copy of the diffusion UNet is trained; the caller's module is never modified).
        text_encoder: a CLIP text encoder whose pooled output embeds the prompt for the text side (frozen).
        tokenizer: its tokenizer.
        encode_prompts: ``prompts -> {name: tensor}`` conditioning of the UNet (the diffusion adapter's
            ``encode_prompts``); its ``prompt_embeds`` become ``encoder_hidden_states``.
        unet_kwargs: ``(cond, n) -> kwargs`` for the UNet besides the sample and timestep (the adapter's: SDXL adds
            ``added_cond_kwargs``); default: ``encoder_hidden_states`` only.
        projection_dim: width of the shared embedding (768 in LPO, CLIP-L's).
        guidance: CFG scale on the pooled mid feature (7.5 in LPO; 1 disables the unconditional pass).
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: nn.Module,
        tokenizer,
        encode_prompts,
        unet_kwargs=None,
        projection_dim: int = 768,
        guidance: float = 7.5,
        copy_unet: bool = True,
    ) -> None:
        super().__init__()
        self.unet = copy.deepcopy(unet) if copy_unet else unet
        self.text_encoder = [text_encoder.requires_grad_(False)]  # in a list: frozen, not a submodule
        self.tokenizer = tokenizer
        self.encode_prompts = encode_prompts
        self.unet_kwargs = unet_kwargs or (lambda cond, n: {"encoder_hidden_states": cond["prompt_embeds"]})
        self.guidance = guidance
        self.projection_dim = projection_dim
        feature_dim = sum(self.feature_channels())
        text_dim = text_encoder.config.hidden_size
        self.visual_projection = nn.Linear(feature_dim, projection_dim, bias=False)
        self.text_projection = nn.Linear(text_dim, projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def feature_channels(self) -> list[int]:
        """Channels of the pooled features: each down block's output, then the mid block."""
        channels = list(self.unet.config.block_out_channels)
        return [*channels, channels[-1]]

    @property
    def device(self) -> torch.device:
        return self.logit_scale.device

    def unet_features(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor]) -> tuple[list[Tensor], Tensor]:
        """Pooled down-block features ``[N, c_i]`` and the pooled mid feature ``[N, c_mid]``.

        The UNet's forward up to its mid block, as diffusers writes it (time and added embeddings, conv_in, down
        blocks with cross-attention where they have it, mid block).
        """
        unet = self.unet
        kwargs = self.unet_kwargs(cond, latents.shape[0])
        hidden = kwargs["encoder_hidden_states"].to(unet.dtype)
        added = kwargs.get("added_cond_kwargs") or {}
        t_emb = unet.get_time_embed(sample=latents, timestep=timesteps)
        emb = unet.time_embedding(t_emb, None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=hidden, added_cond_kwargs=added)
        if aug is not None:
            emb = emb + aug
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        hidden = unet.process_encoder_hidden_states(encoder_hidden_states=hidden, added_cond_kwargs=added)
        sample = unet.conv_in(latents.to(unet.dtype))
        pooled = []
        for block in unet.down_blocks:
            if getattr(block, "has_cross_attention", False):
                sample, residuals = block(hidden_states=sample, temb=emb, encoder_hidden_states=hidden)
            else:
                sample, residuals = block(hidden_states=sample, temb=emb)
            # the block's last feature map before its downsampler (LPO's indices 2, 5, 8, 11 on SD1.5)
            last = residuals[-2] if block.downsamplers is not None else residuals[-1]
            pooled.append(last.float().mean(dim=(-2, -1)))
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                sample = unet.mid_block(sample, emb, encoder_hidden_states=hidden)
            else:
                sample = unet.mid_block(sample, emb)
        return pooled, sample.float().mean(dim=(-2, -1))

    def image_features(self, latents: Tensor, timesteps: Tensor, cond: dict[str, Tensor],
                       uncond: dict[str, Tensor] | None) -> Tensor:
        """L2-normalised latent embeddings ``[N, projection_dim]`` (CFG on the pooled mid feature)."""
        n = latents.shape[0]
        if uncond is not None and self.guidance != 1.0:
            both = {name: torch.cat([uncond[name].expand_as(value), value]) for name, value in cond.items()}
            down, mid = self.unet_features(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), both)
            down = [feature[n:] for feature in down]
            mid_u, mid_c = mid[:n], mid[n:]
            mid = mid_u + self.guidance * (mid_c - mid_u)
        else:
            down, mid = self.unet_features(latents, timesteps, cond)
        features = self.visual_projection(torch.cat([*down, mid], dim=-1))
        return nn.functional.normalize(features, dim=-1)

    def text_features(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``[N, projection_dim]`` from the pooled text-encoder output."""
        encoder = self.text_encoder[0]
        ids = self.tokenizer(list(prompts), padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            output = encoder(ids.to(encoder.device))
        pooled = output.text_embeds if hasattr(output, "text_embeds") else output.pooler_output
        return nn.functional.normalize(self.text_projection(pooled.float().to(self.device)), dim=-1)

    def conditioning(self, prompts: Sequence[str]) -> tuple[dict[str, Tensor], dict[str, Tensor] | None]:
        """The UNet's conditioning for ``prompts`` and for the empty prompt (``None`` without guidance)."""
        cond = {k: v.to(self.device) for k, v in self.encode_prompts(list(prompts)).items()}
        if self.guidance == 1.0:
            return cond, None
        uncond = {k: v.to(self.device) for k, v in self.encode_prompts([""]).items()}
        return cond, uncond

    def forward(self, latents: Tensor, timesteps: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores ``[N]`` = ``exp(logit_scale) · cos`` of noisy latents at ``timesteps`` against their prompts."""
        if len(prompts) != latents.shape[0]:
            raise ValueError(f"LatentRewardModel: {latents.shape[0]} latents but {len(prompts)} prompts")
        cond, uncond = self.conditioning(prompts)
        image = self.image_features(latents.to(self.device), timesteps.to(self.device), cond, uncond)
        text = self.text_features(prompts)
        return self.logit_scale.exp() * (image * text).sum(dim=-1)

    @torch.no_grad()
    def score_latents(self, latents: Tensor, timesteps: Tensor, prompts: Sequence[str], batch_size: int = 64) -> Tensor:
        """Scores ``[N]`` float32 on CPU, without gradients, in batches."""
        out = []
        for start in range(0, latents.shape[0], batch_size):
            stop = start + batch_size
            out.append(self(latents[start:stop], timesteps[start:stop], prompts[start:stop]).float().cpu())
        return torch.cat(out)

    # -- saving and loading ------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """``unet/`` (encoder half), ``text_encoder/``, ``tokenizer/``, heads and config: loadable on its own."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(directory / "unet")
        self.text_encoder[0].save_pretrained(directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        heads = {name: p.detach().contiguous().cpu() for name, p in self.named_parameters() if not name.startswith("unet.")}
        save_file(heads, directory / HEADS_NAME)
        config = {"projection_dim": self.projection_dim, "guidance": self.guidance}
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=1) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, encode_prompts=None, unet_kwargs=None) -> LatentRewardModel:
        """Load a saved LRM. ``encode_prompts`` (the UNet's conditioning) defaults to the saved text encoder's
        last hidden states, which is what SD1.x/2.x UNets read; SDXL needs its adapter's ``encode_prompts`` and
        ``unet_kwargs``."""
        directory = Path(directory)
        config_path = directory / CONFIG_NAME
        if not config_path.is_file():
            raise FileNotFoundError(f"{directory}: not a latent reward model directory (no {CONFIG_NAME})")
        config = json.loads(config_path.read_text())
        unet = UNet2DConditionModel.from_pretrained(directory / "unet")
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        try:
            text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
        except (OSError, ValueError):
            text_encoder = CLIPTextModelWithProjection.from_pretrained(directory / "text_encoder")
        if encode_prompts is None:
            encode_prompts = clip_hidden_states(text_encoder, tokenizer)
        model = cls(unet, text_encoder, tokenizer, encode_prompts, unet_kwargs, copy_unet=False, **config)
        missing = model.load_state_dict(load_file(directory / HEADS_NAME), strict=False)
        if missing.unexpected_keys or [k for k in missing.missing_keys if not k.startswith("unet.")]:
            raise ValueError(f"{directory / HEADS_NAME}: heads do not match the model ({missing})")
        return model.eval()


def clip_hidden_states(text_encoder: nn.Module, tokenizer):
    """``prompts -> {"prompt_embeds": last hidden states}``: Stable Diffusion 1.x/2.x's UNet conditioning."""

    @torch.no_grad()
    def encode(prompts: list[str]) -> dict[str, Tensor]:
        ids = tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                        return_tensors="pt").input_ids
        return {"prompt_embeds": text_encoder(ids.to(text_encoder.device))[0]}

    return encode


def from_adapter(adapter, projection_dim: int = 768, guidance: float = 7.5) -> LatentRewardModel:
    """A new LRM on a diffusion adapter's UNet (copied), its first text encoder and its conditioning."""
    pipeline = adapter.pipeline
    return LatentRewardModel(adapter.denoiser, pipeline.text_encoder, pipeline.tokenizer, adapter.encode_prompts,
                             adapter.unet_kwargs, projection_dim=projection_dim, guidance=guidance)
