"""The model and dataset sections of a profile (see :mod:`loratui.engine.schema.sections`).

Imported by the UI before its first frame: no torch, no diffusers.
"""

from __future__ import annotations

from loratui.engine.families import family_names
import loratui.engine.schema.coerce as coerce
from loratui.engine.schema.declare import _Section, choice, setting

FAMILY_CHOICES = ("auto", *family_names())


class ModelSettings(_Section):
    base_model: str = setting(
        "",
        "Base checkpoint: a .safetensors/.ckpt file, a diffusers folder, or a Hugging Face "
        "repo id such as stable-diffusion-v1-5/stable-diffusion-v1-5.",
        kohya="pretrained_model_name_or_path",
        kind="model",
        required=True,
        label="Base model",
    )
    vae: str = setting(
        "",
        "Separate VAE (file, folder or repo id). Empty: the base model's own VAE.",
        kohya="vae",
        kind="model",
        label="VAE",
    )
    family: choice(FAMILY_CHOICES) = setting(  # type: ignore[valid-type]
        "auto",
        "Model family. auto: detected from the weights or the folder (SD 1.x, SD 2.x, SDXL, SD3/3.5, FLUX.1); "
        "set it to choose the family's settings before the model is here.",
        kohya="sdxl/v2",
        sd_scripts=None,
        special=True,
        label="Family",
    )
    v_parameterization: bool = setting(
        False,
        "Train with v-prediction. Needed for SD 2.x 768-v models (stable-diffusion-2-1).",
        kohya="v_parameterization",
        label="V-prediction",
    )
    clip_skip: int = setting(
        1,
        "Use the output of the n-th last text encoder layer. 1 = normal, 2 = common for anime models.",
        kohya="clip_skip",
        ss=True,
        sd_omit=1,
        ge=1,
        le=12,
        label="Clip skip",
    )
    model_config_dir: str = setting(
        "",
        "Diffusers config folder for a single-file model of a non-standard shape. "
        "Empty: the configs bundled for the detected family.",
        kind="dir",
        advanced=True,
        label="Model config dir",
    )
    # -- flux: SD3/3.5 and FLUX.1 components and flow-matching settings (used by the sd3/flux families only;
    # the part files are in sight: a transformer-only file needs them, and other families hide them)
    clip_l: str = setting(
        "", "SD3/FLUX: a separate CLIP-L text encoder file (clip_l.safetensors) for a transformer-only model file.",
        kohya="clip_l", special="export", kind="model", label="CLIP-L",
    )
    clip_g: str = setting(
        "", "SD3: a separate CLIP-G text encoder file (clip_g.safetensors) for a transformer-only model file.",
        kohya="clip_g", special="export", kind="model", label="CLIP-G",
    )
    t5xxl: str = setting(
        "", "SD3/FLUX: a separate T5-XXL text encoder file (t5xxl_fp16.safetensors; fp8 files are read too).",
        kohya="t5xxl", special="export", kind="model", label="T5-XXL",
    )
    ae: str = setting(
        "", "FLUX: the autoencoder file (ae.safetensors) for a transformer-only model file. SD3: use model.vae.",
        kohya="ae", special="export", kind="model", label="AE (FLUX VAE)",
    )
    t5xxl_max_token_length: int = setting(
        0, "SD3/FLUX: T5-XXL tokens per caption. 0 = the family's default (FLUX dev 512, schnell 256, SD3 256).",
        kohya="t5xxl_max_token_length", special="export", sd_omit=0, ge=0, le=1024, advanced=True, label="T5 max tokens",
    )
    apply_t5_attn_mask: bool = setting(
        False, "SD3/FLUX: mask T5-XXL padding tokens (in the encoder and FLUX's attention). Usually off.",
        kohya="apply_t5_attn_mask", special="export", sd_omit=False, advanced=True, label="T5 attention mask",
    )
    timestep_sampling: choice(("sigma", "uniform", "sigmoid", "shift", "flux_shift")) = setting(  # type: ignore[valid-type]
        "sigma", "FLUX: how noise levels are drawn. sigma (sd-scripts default), uniform, sigmoid, shift "
        "(sigmoid shifted by discrete_flow_shift; the kohya guides' choice), flux_shift (by resolution).",
        kohya="timestep_sampling", special="export", advanced=True, label="Timestep sampling",
    )
    sigmoid_scale: float = setting(
        1.0, "FLUX: scale of the normal draw for sigmoid/shift/flux_shift sampling (larger = more uniform).",
        kohya="sigmoid_scale", special="export", gt=0, le=100, advanced=True, label="Sigmoid scale",
    )
    discrete_flow_shift: float = setting(
        3.0, "FLUX: shift of the noise schedule (sigma and shift sampling). 3.0 default; 3.1582 in the kohya guides.",
        kohya="discrete_flow_shift", special="export", gt=0, le=100, advanced=True, label="Discrete flow shift",
    )
    model_prediction_type: choice(("raw", "additive", "sigma_scaled")) = setting(  # type: ignore[valid-type]
        "sigma_scaled", "FLUX: how the prediction is used. raw (the guides' choice), additive (+ noisy input), "
        "sigma_scaled (-sigma x prediction + noisy input, with the weighting scheme's loss weights).",
        kohya="model_prediction_type", special="export", advanced=True, label="Model prediction type",
    )
    guidance_scale: float = setting(
        3.5, "FLUX dev: the guidance value fed to the guidance-distilled model while training (1.0 in the guides).",
        kohya="guidance_scale", special="export", ge=0, le=100, advanced=True, label="Guidance scale",
    )
    weighting_scheme: choice(("none", "uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap")) = setting(  # type: ignore[valid-type]
        "none", "SD3 (and FLUX sigma sampling): timestep density / loss weights. none or uniform, logit_normal "
        "(logit_mean, logit_std), mode (mode_scale), sigma_sqrt, cosmap.",
        kohya="weighting_scheme", special="export", advanced=True, label="Weighting scheme",
    )
    logit_mean: float = setting(0.0, "logit_normal weighting: mean (0.0).", kohya="logit_mean", special="export", ge=-10, le=10,
                                advanced=True, label="Logit mean")
    logit_std: float = setting(1.0, "logit_normal weighting: standard deviation (1.0).", kohya="logit_std", special="export",
                               gt=0, le=10, advanced=True, label="Logit std")
    mode_scale: float = setting(1.29, "mode weighting: scale (1.29).", kohya="mode_scale", special="export", ge=-10, le=10,
                                advanced=True, label="Mode scale")
    training_shift: float = setting(
        1.0, "SD3: shift of the sampled timesteps (>1 noisier: structure; <1 details). 1.0 default.",
        kohya="training_shift", special="export", gt=0, le=100, advanced=True, label="Training shift",
    )

    # -- memory: fp8 base model
    fp8_base: bool = setting(
        False,
        "Store the frozen U-Net/transformer weights in fp8 (float8 e4m3fn) and compute each layer in "
        "bf16/fp16: about half the VRAM of the base model, a little slower. LoRA weights stay full "
        "precision. Common for Flux/SD3 on 12-24 GB cards; rarely needed for SD 1.x.",
        kohya="fp8_base",
        sd_omit=False,  # ss_fp8_base / ss_fp8_base_unet: engine.metadata writes them as sd-scripts does
        advanced=True,
        label="fp8 base model",
    )


class DatasetSettings(_Section):
    train_data_dir: str = setting(
        "",
        "Folder holding one or more <repeats>_<name> concept folders, e.g. images/10_mychar.",
        kohya="train_data_dir",
        sd_dataset=("subsets", "image_dir"),
        required=True,
        kind="dir",
        label="Image folder",
    )
    reg_data_dir: str = setting(
        "",
        "Optional regularization folder, same <repeats>_<name> layout. Empty: none.",
        kohya="reg_data_dir",
        sd_dataset=("subsets", "image_dir"),
        special="export",
        kind="dir",
        label="Reg. folder",
    )
    prior_loss_weight: float = setting(
        1.0, "Loss weight of regularization images.", kohya="prior_loss_weight", ss=True, ge=0, le=10,
        label="Prior loss weight",
    )
    resolution: int = setting(
        512,
        "Training resolution (width; square unless a height is set). SD 1.x 512, SD 2.x 768, SDXL 1024. "
        "With buckets it sets their largest area; without, images are cropped to it.",
        kohya="max_resolution",
        sd_scripts="resolution",
        sd_dataset=("dataset", "resolution"),
        special=True,
        unit="px",
        ge=64,
        le=4096,
        label="Resolution",
    )
    resolution_height: int = setting(
        0,
        "Training height when not square. 0: same as the resolution.",
        kohya="max_resolution",
        sd_scripts="resolution",
        sd_dataset=("dataset", "resolution"),
        special=True,
        unit="px",
        ge=0,
        le=4096,
        advanced=True,
        label="Resolution height",
    )
    enable_bucket: bool = setting(
        True,
        "Aspect-ratio buckets: train images at their own aspect ratio instead of cropping to a square.",
        kohya="enable_bucket",
        ss=True,
        sd_dataset=("dataset", "enable_bucket"),
        label="Enable bucket",
    )
    min_bucket_reso: int = setting(
        256, "Smallest bucket side.", kohya="min_bucket_reso", sd_dataset=("dataset", "min_bucket_reso"), unit="px", ge=64, le=4096,
        label="Min bucket res.",
    )
    max_bucket_reso: int = setting(
        1024, "Largest bucket side.", kohya="max_bucket_reso", sd_dataset=("dataset", "max_bucket_reso"), unit="px", ge=64, le=8192,
        label="Max bucket res.",
    )
    bucket_reso_steps: int = setting(
        64, "Bucket sides are multiples of this (64 usual). Below 8 (kohya_ss presets' 1): buckets as sd-scripts makes "
        "them with that step, each side then cut to the VAE's 8-pixel blocks.", kohya="bucket_reso_steps",
        sd_dataset=("dataset", "bucket_reso_steps"), unit="px", ge=1, le=512,
        label="Bucket step",
    )
    bucket_no_upscale: bool = setting(
        False,
        "Never upscale an image to fit a bucket; small images get smaller buckets.",
        kohya="bucket_no_upscale",
        sd_dataset=("dataset", "bucket_no_upscale"),
        label="No bucket upscale",
    )
    caption_extension: str = setting(
        ".txt",
        "Caption files are <image name><this>.",
        kohya="caption_extension",
        sd_dataset=("general", "caption_extension"),
        convert=coerce.caption_extension,
        kohya_blank="empty: loratui reads .txt captions (sd-scripts would look for .caption files)",
        label="Caption extension",
    )
    shuffle_caption: bool = setting(
        False,
        "Shuffle comma-separated tags each step (after the first keep_tokens).",
        kohya="shuffle_caption",
        ss=True,
        sd_dataset=("general", "shuffle_caption"),
        label="Shuffle caption",
    )
    keep_tokens: int = setting(
        0,
        "Number of leading tags never shuffled or dropped (your trigger word).",
        kohya="keep_tokens",
        ss=True,
        sd_dataset=("general", "keep_tokens"),
        ge=0,
        le=75,
        label="Keep tokens",
    )
    caption_dropout_rate: float = setting(
        0.0,
        "Chance of training a step with an empty caption.",
        kohya="caption_dropout_rate",
        ss=True,
        sd_dataset=("general", "caption_dropout_rate"),
        ge=0,
        le=1,
        label="Caption dropout",
    )
    flip_aug: bool = setting(
        False,
        "Randomly mirror images left-right. Off for asymmetric subjects (text, logos, hair parts).",
        kohya="flip_aug",
        ss=True,
        sd_dataset=("general", "flip_aug"),
        label="Flip augment",
    )
    cache_latents: choice(("memory", "disk", "off")) = setting(  # type: ignore[valid-type]
        "memory",
        "Encode images once before training. disk: keep the cache beside the images for the next run. "
        "off: encode every step (needed for flip augmentation variety, slower).",
        kohya="cache_latents/cache_latents_to_disk",
        sd_scripts="cache_latents/cache_latents_to_disk",
        special=True,
        label="Cache latents",
    )
    balance_concepts: bool = setting(
        False,
        "Adjust repeats so every concept gets about the same number of steps per epoch.",
        sd_scripts=None,
        label="Balance concepts",
    )

    # -- memory: text-encoder output caching
    cache_text_encoder_outputs: choice(("auto", "memory", "disk", "off")) = setting(  # type: ignore[valid-type]
        "auto",
        "Encode every caption once before training and take the text encoders off the GPU. "
        "auto: memory whenever it cannot change the result (text encoders not trained, no "
        "shuffle_caption, no caption dropout), else off. disk: also keep the outputs beside the "
        "images for the next run. memory/disk with a trained text encoder or changing captions is "
        "refused, as sd-scripts does.",
        kohya="cache_text_encoder_outputs/cache_text_encoder_outputs_to_disk",
        sd_scripts="cache_text_encoder_outputs/cache_text_encoder_outputs_to_disk",
        special=True,
        label="Cache text encoder",
    )

    # -- options: where masked loss (optimization.masked_loss) takes its masks from
    alpha_mask: bool = setting(
        False,
        "Masked loss: use each image's alpha channel as its mask (transparent = not trained).",
        kohya="alpha_mask", sd_dataset=("general", "alpha_mask"), sd_omit=False, advanced=True,
        label="Alpha mask",
    )
    conditioning_data_dir: str = setting(
        "",
        "Masked loss: a folder of mask images named like the training images (white = trained, black = ignored; "
        "the red channel is used). Empty: none.",
        kohya="conditioning_data_dir", sd_dataset=("general", "conditioning_data_dir"), kind="dir", advanced=True,
        label="Mask folder",
    )

    def checks(self) -> list[tuple[str, str]]:
        out = []
        step = self.bucket_reso_steps
        if self.min_bucket_reso > self.max_bucket_reso:
            out.append(("min_bucket_reso", f"{self.min_bucket_reso} is larger than max_bucket_reso {self.max_bucket_reso}"))
        for key in ("min_bucket_reso", "max_bucket_reso"):
            value = getattr(self, key)
            if value % step:
                out.append((key, f"{value} must be a multiple of bucket_reso_steps ({step})"))
        if self.caption_extension and not self.caption_extension.startswith("."):
            out.append(("caption_extension", f"must start with a dot, e.g. '.{self.caption_extension}'"))
        return out
