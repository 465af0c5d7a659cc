"""Full-size SD1.5 and SDXL architectures with seeded random weights, written as pipeline directories for benchmarks.

No weights can be downloaded here, and speed and memory depend on the architecture, not on trained values: these
pipelines have the real models' configurations (SD1.5: UNet 860M parameters, VAE, CLIP ViT-L/14 text encoder; SDXL:
UNet 2.6B, VAE, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text encoders) over the offline CLIP tokenizer.

    python bench/full_size_model.py sd15 /models/sd15-size --resolution 512
    python bench/full_size_model.py sdxl /models/sdxl-size --resolution 1024
    python bench/bench_train.py --models sdxl --override model.adapter.path=/models/sdxl-size --resolution 1024 \
        --batch-size 4 --precision bf16 --cache on --override trainer.gradient_checkpointing=true

Built on the GPU when there is one (SDXL's fp32 weights are ~10 GB).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

VAE_CONFIG = {  # SD1.5's and SDXL's VAE: four 2x blocks, 4 latent channels
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768}
CLIP_BIG_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
              "projection_dim": 1280, "hidden_act": "gelu"}


def unet_config(arch: str, resolution: int) -> dict[str, Any]:
    """``UNet2DConditionModel`` keyword arguments of the real model (diffusers' published configs)."""
    if arch == "sd15":
        return {"sample_size": resolution // 8, "cross_attention_dim": 768}  # the class defaults are SD1.5's
    if arch == "sdxl":
        return {
            "sample_size": resolution // 8,
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": (5, 10, 20),
            "transformer_layers_per_block": (1, 2, 10),
            "use_linear_projection": True,
            "cross_attention_dim": 2048,  # CLIP-L's 768 + bigG's 1280 penultimate states
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,  # 6 size/crop ids x 256 + bigG's pooled 1280
        }
    raise ValueError(f"arch '{arch}': expected sd15 or sdxl")


def build(arch: str, path: str | Path, resolution: int, seed: int = 0) -> Path:
    """Write the ``arch`` pipeline (``StableDiffusionPipeline`` / ``StableDiffusionXLPipeline``) into ``path``."""
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        EulerDiscreteScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffusion_align.testing.tiny_image import SD_BETAS
    from diffusion_align.testing.tiny_text import CLIP_BOS_ID, CLIP_EOS_ID, clip_tokenizer

    ids = {"bos_token_id": CLIP_BOS_ID, "eos_token_id": CLIP_EOS_ID, "pad_token_id": CLIP_EOS_ID}
    unet_kwargs = unet_config(arch, resolution)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        unet = UNet2DConditionModel(**unet_kwargs).eval()
        scale = 0.18215 if arch == "sd15" else 0.13025
        vae = AutoencoderKL(**VAE_CONFIG, sample_size=resolution, scaling_factor=scale).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L, **ids)).eval()
        if arch == "sdxl":
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_BIG_G, **ids)).eval()
    if arch == "sd15":
        pipeline = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
            scheduler=DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipeline = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(pad_token="!"), unet=unet,
            scheduler=EulerDiscreteScheduler(**SD_BETAS, steps_offset=1), add_watermarker=False,
        )
    pipeline.save_pretrained(path)
    del pipeline, unet, vae, text_encoder
    if arch == "sdxl":
        del text_encoder_2
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # benchmark processes share the GPU with this one
    return Path(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arch", choices=["sd15", "sdxl"])
    parser.add_argument("out", type=Path, help="pipeline directory to write")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: 512 sd15, 1024 sdxl)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    resolution = args.resolution or (512 if args.arch == "sd15" else 1024)
    print(build(args.arch, args.out, resolution, args.seed))


if __name__ == "__main__":
    main()
