"""The usual files people train LoRAs on, offered in the models screen and
``loratui models download --list``. Sizes are what the Hub showed when this list
was made (a guide for the eye); the download asks the Hub for the real size.
Gated repos need their terms accepted on the Hub and its token (``HF_TOKEN`` or
``hf auth login``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KnownFile:
    repo: str
    filename: str
    kind: str  # checkpoint | vae | text_encoder
    label: str
    size: int  # bytes, approximately
    gated: bool = False


GB = 1_000_000_000
MB = 1_000_000
KNOWN_FILES: tuple[KnownFile, ...] = (
    KnownFile("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors", "checkpoint",
              "SD 1.5 (fp32, EMA weights)", int(4.27 * GB)),
    KnownFile("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly-fp16.safetensors", "checkpoint",
              "SD 1.5 (fp16)", int(2.13 * GB)),
    KnownFile("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors", "vae",
              "SD 1.x VAE ft-MSE", 335 * MB),
    KnownFile("stabilityai/stable-diffusion-xl-base-1.0", "sd_xl_base_1.0.safetensors", "checkpoint",
              "SDXL base 1.0", int(6.94 * GB)),
    KnownFile("madebyollin/sdxl-vae-fp16-fix", "sdxl_vae.safetensors", "vae", "SDXL VAE fp16-fix", 335 * MB),
    KnownFile("stabilityai/stable-diffusion-3.5-medium", "sd3.5_medium.safetensors", "checkpoint",
              "SD 3.5 Medium", int(5.11 * GB), gated=True),
    KnownFile("stabilityai/stable-diffusion-3.5-large", "sd3.5_large.safetensors", "checkpoint",
              "SD 3.5 Large", int(16.5 * GB), gated=True),
    KnownFile("black-forest-labs/FLUX.1-dev", "flux1-dev.safetensors", "checkpoint", "FLUX.1 dev", int(23.8 * GB),
              gated=True),
    KnownFile("black-forest-labs/FLUX.1-dev", "ae.safetensors", "vae", "FLUX.1 VAE (ae)", 335 * MB, gated=True),
    KnownFile("black-forest-labs/FLUX.1-schnell", "flux1-schnell.safetensors", "checkpoint", "FLUX.1 schnell",
              int(23.8 * GB)),
    KnownFile("comfyanonymous/flux_text_encoders", "clip_l.safetensors", "text_encoder", "CLIP-L (FLUX, SD3)",
              246 * MB),
    KnownFile("comfyanonymous/flux_text_encoders", "t5xxl_fp16.safetensors", "text_encoder", "T5-XXL fp16",
              int(9.79 * GB)),
    KnownFile("comfyanonymous/flux_text_encoders", "t5xxl_fp8_e4m3fn.safetensors", "text_encoder", "T5-XXL fp8",
              int(4.89 * GB)),
)


def known(repo: str, filename: str | None = None) -> KnownFile | None:
    """The catalogue entry of ``repo`` (its first file when ``filename`` is None)."""
    for f in KNOWN_FILES:
        if f.repo.lower() == repo.lower() and (filename is None or f.filename == filename):
            return f
    return None
