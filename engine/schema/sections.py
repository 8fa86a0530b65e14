"""The profile's sections: every training setting, declared once.

Each setting is a pydantic field made by :func:`~loratui.engine.schema.declare.setting`
carrying its default, bounds, help text, unit, its kohya_ss GUI and sd-scripts
names, the converter of kohya's values and the section it lives in. Choices that
are lists of things come from the registries (optimizers, schedulers, network
types, precisions) and the family registry.

This module is imported by the UI before its first frame: it must stay cheap
(no torch, no diffusers).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loratui.engine.families import family_names
from loratui.engine.registries import MIXED_PRECISIONS, NETWORK_TYPES, OPTIMIZERS, SAVE_PRECISIONS, SCHEDULERS
import loratui.engine.schema.coerce as coerce
from loratui.engine.samples.samplers import SAMPLERS
from loratui.engine.schema.compute import ComputeSettings
from loratui.engine.schema.declare import SettingInfo, _Section, choice, section_infos, setting

FAMILY_CHOICES = ("auto", *family_names())
LOG_WITH = ("none", "tensorboard", "wandb", "all")
DYNAMO_BACKENDS = ("inductor", "cudagraphs", "aot_eager", "eager")  # torch.compile's own backends (fastpath)

# --------------------------------------------------------------------------- sections


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
        "Model family. auto: detected from the weights (SD 1.x, SD 2.x or SDXL).",
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
    # -- flux: SD3/3.5 and FLUX.1 components and flow-matching settings (used by the sd3/flux families only)
    clip_l: str = setting(
        "", "SD3/FLUX: a separate CLIP-L text encoder file (clip_l.safetensors) for a transformer-only model file.",
        kohya="clip_l", special="export", kind="model", advanced=True, label="CLIP-L",
    )
    clip_g: str = setting(
        "", "SD3: a separate CLIP-G text encoder file (clip_g.safetensors) for a transformer-only model file.",
        kohya="clip_g", special="export", kind="model", advanced=True, label="CLIP-G",
    )
    t5xxl: str = setting(
        "", "SD3/FLUX: a separate T5-XXL text encoder file (t5xxl_fp16.safetensors; fp8 files are read too).",
        kohya="t5xxl", special="export", kind="model", advanced=True, label="T5-XXL",
    )
    ae: str = setting(
        "", "FLUX: the autoencoder file (ae.safetensors) for a transformer-only model file. SD3: use model.vae.",
        kohya="ae", special="export", kind="model", advanced=True, label="AE (FLUX VAE)",
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
        "Training resolution (width; square unless a height is set). SD 1.x 512, SD 2.x 768, SDXL 1024.",
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
        for key in ("resolution", "resolution_height"):
            value = getattr(self, key)
            if value and value % 64:
                out.append((key, f"{value} must be a multiple of 64 (e.g. {max(64, value // 64 * 64)})"))
        if self.min_bucket_reso > self.max_bucket_reso:
            out.append(("min_bucket_reso", f"{self.min_bucket_reso} is larger than max_bucket_reso {self.max_bucket_reso}"))
        for key in ("min_bucket_reso", "max_bucket_reso"):
            value = getattr(self, key)
            if value % step:
                out.append((key, f"{value} must be a multiple of bucket_reso_steps ({step})"))
        if self.caption_extension and not self.caption_extension.startswith("."):
            out.append(("caption_extension", f"must start with a dot, e.g. '.{self.caption_extension}'"))
        return out


class NetworkSettings(_Section):
    network_type: choice(NETWORK_TYPES) = setting(  # type: ignore[valid-type]
        "lora",
        "lora: attention and MLP layers. locon: also the 3x3 convolutions (uses conv rank/alpha). "
        "LyCORIS: lycoris-locon, loha, lokr, ia3, glora, diag-oft, boft, full (native fine-tuning), dylora.",
        kohya="LoRA_type",
        sd_scripts="network_module",
        special=True,
        label="Network type",
    )
    network_dim: int = setting(
        8,
        "LoRA rank. 4 light, 8 standard, 16 detailed, 32-64 heavy. Larger files, more VRAM.",
        kohya="network_dim", ss=True,
        ge=1,
        le=100000,  # above 1024 only for LoKr's "full dimension" (checks)
        label="Network rank",
    )
    network_alpha: float = setting(
        8.0,
        "Scales the LoRA by alpha/rank. Same as rank = no scaling; half the rank is also common.",
        kohya="network_alpha", ss=True,
        gt=0,
        le=1024,
        label="Network alpha",
    )
    conv_dim: int = setting(
        4, "Rank of the 3x3 convolutions (locon and the LyCORIS types that read it).", kohya="conv_dim", special=True, ge=1, le=100000,
        label="Conv rank",
    )
    conv_alpha: float = setting(
        1.0, "Alpha of the 3x3 convolutions (locon and the LyCORIS types that read it).", kohya="conv_alpha", special=True, gt=0, le=1024,
        label="Conv alpha",
    )
    train_unet: bool = setting(True, "Train the U-Net.", kohya="network_train_text_encoder_only", special=True, label="Train U-Net")
    train_text_encoder: bool = setting(
        True,
        "Train the text encoder(s) too. Off = U-Net only (common for SDXL).",
        kohya="network_train_unet_only",
        special=True,
        label="Train text encoder",
    )
    network_weights: str = setting(
        "",
        "Continue training from an existing LoRA .safetensors (rank and alpha taken from the file).",
        kohya="lora_network_weights",
        sd_scripts="network_weights",
        kohya_blank="empty: a new LoRA",
        kind="file",
        label="Network weights",
    )
    # -- flux: LoRA targets of the sd3/flux families (sd-scripts network_args)
    train_blocks: choice(("all", "single", "double")) = setting(  # type: ignore[valid-type]
        "all", "FLUX: which transformer blocks get LoRA modules: all, single (single-stream) or double.",
        kohya="train_blocks", sd_scripts=None, special="export", advanced=True, label="Train blocks",
    )
    train_t5xxl: bool = setting(
        False, "SD3/FLUX: put LoRA modules on T5-XXL too (only when the text encoder is trained). Usually off.",
        kohya="train_t5xxl", sd_scripts=None, special="export", advanced=True, label="Train T5-XXL",
    )

    # -- options: network regularisation (sd-scripts' --network_dropout, --scale_weight_norms)
    network_dropout: float = setting(
        0.0,
        "Dropout on the LoRA's rank activations (after lora_down) while training; 0.1 is typical. 0: off.",
        kohya="network_dropout", ss=True, sd_omit=0, ge=0, lt=1, advanced=True,
        label="Network dropout",
    )
    scale_weight_norms: float = setting(
        0.0,
        "Max-norm regularisation: after each step, scale down every module whose LoRA update (up·down·alpha/rank) "
        "has a norm above this; 1 is usual. 0: off.",
        kohya="scale_weight_norms", ss=True, sd_omit=0, ge=0, le=100, advanced=True,
        label="Scale weight norms",
    )

    # -- lycoris: the LyCORIS network settings (kohya_ss's names; each algorithm reads those in its registry entry)
    lycoris_preset: str = setting(
        "full", "LyCORIS preset: which layers get modules. full (everything incl. 3x3 convs), full-lin, attn-mlp, "
        "attn-only, unet-only, unet-transformer-only, unet-convblock-only, ia3, or a preset .toml file.",
        kohya="LyCORIS_preset", sd_scripts=None, special=True, advanced=True, label="LyCORIS preset")
    factor: int = setting(-1, "LoKr: the Kronecker factor of each weight (-1: as square as possible; 4-16 usual for "
                          "small files).", kohya="factor", sd_scripts=None, special=True, advanced=True, ge=-1, le=100000,
                          label="LoKr factor")
    use_tucker: bool = setting(False, "Tucker (CP) decomposition of 3x3 convolutions: smaller files (LoCon, LoHa, LoKr, "
                               "DyLoRA, OFT, full).", kohya="use_tucker", sd_scripts=None, special=True, advanced=True,
                               label="Use Tucker")
    use_scalar: bool = setting(False, "Train an extra scalar per module, so training starts from a non-zero weight "
                               "update (LoCon, LoHa, LoKr, OFT).", kohya="use_scalar", sd_scripts=None, special=True, advanced=True)
    decompose_both: bool = setting(False, "LoKr: decompose both Kronecker factors into low-rank pairs, not only the larger "
                                   "one.", kohya="decompose_both", sd_scripts=None, special=True, advanced=True)
    rank_dropout: float = setting(0.0, "LyCORIS: drop this fraction of each module's ranks per step (0 off; 0.1 usual).",
                                  kohya="rank_dropout", sd_scripts=None, special=True, advanced=True, ge=0, le=1)
    module_dropout: float = setting(0.0, "LyCORIS: skip each whole module with this probability per step (0 off; 0.1 "
                                    "usual).", kohya="module_dropout", sd_scripts=None, special=True, advanced=True, ge=0, le=1)
    train_norm: bool = setting(False, "LyCORIS: also train the normalisation layers (GroupNorm/LayerNorm weights and "
                               "biases).", kohya="train_norm", sd_scripts=None, special=True, advanced=True, label="Train norms")
    bypass_mode: bool = setting(False, "LyCORIS: add the module's output to the layer's instead of merging weights (for "
                                "quantised base models).", kohya="bypass_mode", sd_scripts=None, special=True, advanced=True)
    dora_wd: bool = setting(False, "DoRA: weight decomposition (direction + trained magnitude dora_scale) on LyCORIS "
                            "LoCon, LoHa or LoKr.", kohya="dora_wd", sd_scripts=None, special=True, advanced=True, label="DoRA")
    constrain: float = setting(0.0, "Diag-OFT / BOFT: the norm constraint of the orthogonal rotation (0 off).",
                               kohya="constrain", sd_scripts=None, special=True, advanced=True, ge=0, label="OFT constrain")
    rescaled: bool = setting(False, "Diag-OFT / BOFT: train a rescale of the rotated weights too.", kohya="rescaled",
                             sd_scripts=None, special=True, advanced=True, label="OFT rescaled")
    dylora_unit: int = setting(1, "DyLoRA: the rank is trained in blocks of this size (network_dim must be a multiple; "
                               "1-4 usual).", kohya="unit", sd_scripts=None, special=True, advanced=True, ge=1, le=1024,
                               label="DyLoRA unit")

    def checks(self) -> list[tuple[str, str]]:
        if not self.train_unet and not self.train_text_encoder:
            return [("train_unet", "nothing to train: enable train_unet or train_text_encoder")]
        from loratui.engine.schema.lycoris_checks import lycoris_problems

        return lycoris_problems(self)


class OptimizationSettings(_Section):
    optimizer: choice(OPTIMIZERS) = setting(  # type: ignore[valid-type]
        "AdamW",
        "AdamW8bit/Lion8bit save VRAM (CUDA only). Prodigy/DAdaptAdam find the LR themselves (use LR 1).",
        kohya="optimizer",
        sd_scripts="optimizer_type",
        convert=coerce.optimizer,
        kohya_blank="empty: AdamW",
        label="Optimizer",
    )
    optimizer_args: str = setting(
        "",
        "Extra optimizer arguments, space separated: weight_decay=0.1 betas=0.9,0.99",
        kohya="optimizer_args",
        convert=coerce.args_text,
        kohya_blank="empty",
        special="export",
        advanced=True,
        label="Optimizer args",
    )
    learning_rate: float = setting(
        1e-4, "Learning rate (used where the U-Net/text encoder rates are unset).", kohya="learning_rate", ss=True,
        special="import", gt=0, le=10,
        label="Learning rate",
    )
    unet_lr: float | None = setting(
        None, "U-Net learning rate. Unset: the learning rate.", kohya="unet_lr", ss=True, special="import", gt=0, le=10,
        label="U-Net LR",
    )
    text_encoder_lr: float | None = setting(
        5e-5,
        "Text encoder learning rate. Unset: the learning rate.",
        kohya="text_encoder_lr",
        ss=True,
        special="import",
        gt=0,
        le=10,
        label="Text encoder LR",
    )
    lr_scheduler: choice(SCHEDULERS) = setting(  # type: ignore[valid-type]
        "cosine",
        "How the learning rate changes over the run.",
        kohya="lr_scheduler",
        ss=True,
        convert=coerce.scheduler,
        kohya_blank="empty: sd-scripts' default constant is not loratui's default; set it",
        label="LR scheduler",
    )
    lr_warmup_steps: float = setting(
        0,
        "Warm-up: steps, or a fraction of all steps when below 1 (0.05 = 5 %).",
        kohya="lr_warmup_steps",
        special=True,
        ge=0,
        label="LR warmup steps",
    )
    lr_scheduler_num_cycles: int = setting(
        1, "Restarts for cosine_with_restarts.", kohya="lr_scheduler_num_cycles", ge=1, le=1000,
        label="LR restarts",
    )
    lr_scheduler_power: float = setting(
        1.0, "Power of the polynomial scheduler.", kohya="lr_scheduler_power", gt=0, le=10,
        label="LR scheduler power",
    )
    max_train_epochs: int = setting(
        10,
        "Epochs. 10-20 images: 10-20 epochs; 30-50: 5-10; 100+: 2-5.",
        kohya="max_train_epochs",
        special=True,
        ge=1,
        le=10000,
        label="Epochs",
    )
    max_train_steps: int = setting(
        0, "Stop after this many steps. 0: run all epochs.", kohya="max_train_steps", special=True, ge=0,
        label="Max train steps",
    )
    train_batch_size: int = setting(
        1,
        "Images per step. At 512px: 6 GB 1, 8 GB 1-2, 12 GB 2-4, 16 GB 4-6, 24 GB+ 8.",
        kohya="train_batch_size",
        ss="ss_batch_size_per_device",
        sd_dataset=("dataset", "batch_size"),
        ge=1,
        le=256,
        label="Batch size",
    )
    gradient_accumulation_steps: int = setting(
        1,
        "Accumulate this many batches per optimizer step (a bigger batch without the VRAM).",
        kohya="gradient_accumulation_steps",
        ss=True,
        ge=1,
        le=1024,
        label="Grad. accumulation",
    )
    gradient_checkpointing: bool = setting(
        False, "Recompute activations in the backward pass: much less VRAM, ~20 % slower.",
        kohya="gradient_checkpointing", ss=True,
        label="Gradient checkpointing",
    )
    mixed_precision: choice(MIXED_PRECISIONS) = setting(  # type: ignore[valid-type]
        "bf16",
        "bf16 (RTX 30xx and newer, A100, H100); a card without bf16 trains in fp16 with the grad scaler instead, a CPU in fp32 (no).",
        kohya="mixed_precision",
        convert=coerce.mixed_precision,
        label="Mixed precision",
    )
    seed: int = setting(
        42,
        "Random seed. Same seed + same profile = same LoRA.",
        kohya="seed",
        ss=True,
        kohya_blank="unset (a random seed each run in kohya_ss); loratui uses a fixed seed, 42",
        ge=0,
        le=2**32 - 1,
        label="Seed",
    )
    max_grad_norm: float = setting(
        1.0, "Clip gradients to this norm. 0: no clipping.", kohya="max_grad_norm", ss=True, ge=0, advanced=True,
        label="Max grad norm",
    )
    max_bad_steps: int = setting(
        0,
        "Steps with a NaN/inf loss to skip (no update) before the run stops. 0: stop at the first one.",
        sd_scripts=None,
        ge=0,
        le=1000,
        advanced=True,
        label="Max bad steps",
    )
    min_snr_gamma: float = setting(
        0.0, "Min-SNR weighting gamma (5 is typical). 0: off.", kohya="min_snr_gamma", ss=True, sd_omit=0, ge=0, le=100,
        label="Min SNR gamma",
    )
    noise_offset: float = setting(
        0.0,
        "Noise offset (0.05-0.1) helps very dark/bright images. 0: off.",
        kohya="noise_offset",
        ss=True,
        special="import",
        sd_omit=0,
        ge=0,
        le=1,
        label="Noise offset",
    )
    # -- fastpath: torch.compile of the denoiser
    torch_compile: bool = setting(
        False,
        "Compile the U-Net with torch.compile (GPU): steps ~10-30 % faster after a compile of a minute or more "
        "per bucket shape at the start (shown as the compiling phase). Off: no compile.",
        sd_scripts="torch_compile",
        sd_omit=False,
        advanced=True,
        label="torch.compile",
    )
    dynamo_backend: choice(DYNAMO_BACKENDS) = setting(  # type: ignore[valid-type]
        "inductor",
        "torch.compile backend: inductor (fast kernels, the usual choice), cudagraphs, aot_eager or eager (for debugging).",
        sd_scripts="dynamo_backend",
        convert=coerce.dynamo_backend,
        sd_omit="inductor",
        advanced=True,
        label="Dynamo backend",
    )

    # -- memory: block swap, CPU-offloaded checkpointing
    blocks_to_swap: int = setting(
        0,
        "Keep this many denoiser blocks in CPU memory and move each onto the GPU for its forward "
        "and backward pass (the next one's copy overlaps compute). Saves VRAM, costs speed. "
        "0: off. Flux.1 on 12 GB: 16-20; SD 1.x/SDXL rarely need it. CUDA only (a no-op on the CPU).",
        kohya="blocks_to_swap",
        special="export",
        ge=0,
        le=256,
        advanced=True,
        label="Blocks to swap",
    )
    cpu_offload_checkpointing: bool = setting(
        False,
        "With gradient checkpointing: keep the checkpointed block inputs in CPU memory instead of "
        "VRAM. Saves a little more VRAM, a little slower. Off: inputs stay on the GPU.",
        kohya="cpu_offload_checkpointing",
        special="export",
        advanced=True,
        label="CPU offload checkpointing",
    )

    # -- options: the training options kohya_ss presets use (noise, timesteps, loss, LRs, precision)
    multires_noise_iterations: int = setting(
        0,
        "Multires (pyramid) noise: add this many coarser noise octaves to the noise; 6-10 typical. 0: off.",
        kohya="multires_noise_iterations", ss=True, sd_omit=0, special="import", ge=0, le=64,
        label="Multires noise iterations",
    )
    multires_noise_discount: float = setting(
        0.3,
        "Multires noise: weight of each coarser octave is discount^i; 0.1-0.3 typical.",
        kohya="multires_noise_discount", sd_omit=0.3, special="import", ge=0, le=1,
        label="Multires noise discount",
    )
    adaptive_noise_scale: float = setting(
        0.0,
        "Adds this times the latents' mean (absolute, per channel) to the noise offset; needs noise_offset. 0: off.",
        kohya="adaptive_noise_scale", ss=True, sd_omit=0, special="import", ge=-1, le=1, advanced=True,
        label="Adaptive noise scale",
    )
    noise_offset_random_strength: bool = setting(
        False,
        "Scale the noise offset by a random factor in [0, 1) each step.",
        kohya="noise_offset_random_strength", sd_omit=False, special="import", advanced=True,
        label="Random noise offset",
    )
    ip_noise_gamma: float = setting(
        0.0,
        "Input perturbation noise: extra noise of this strength on the noisy latents only (not the target); 0.1 typical. 0: off.",
        kohya="ip_noise_gamma", ss=True, sd_omit=0, ge=0, le=1, advanced=True,
        label="IP noise gamma",
    )
    ip_noise_gamma_random_strength: bool = setting(
        False,
        "Scale the input perturbation noise by a random factor in [0, 1) each step.",
        kohya="ip_noise_gamma_random_strength", sd_omit=False, advanced=True,
        label="Random IP noise",
    )
    debiased_estimation_loss: bool = setting(
        False,
        "Debiased estimation: weight each sample's loss by 1/sqrt(SNR(t)) (SNR capped at 1000).",
        kohya="debiased_estimation_loss", sd_omit=False, advanced=True,
        label="Debiased estimation",
    )
    min_timestep: int = setting(
        0, "Smallest timestep trained (0-999). 0: from the start.", kohya="min_timestep", ss=True, sd_omit=0,
        ge=0, le=1000, advanced=True, label="Min timestep",
    )
    max_timestep: int = setting(
        1000, "Timesteps are drawn below this (1-1000). 1000: to the end.", kohya="max_timestep", ss=True, sd_omit=1000,
        ge=1, le=1000, advanced=True, label="Max timestep",
    )
    loss_type: choice(("l2", "l1", "huber", "smooth_l1")) = setting(  # type: ignore[valid-type]
        "l2",
        "l2: mean squared error (usual). l1: absolute error. huber / smooth_l1: pseudo-Huber, robust to outliers "
        "(uses huber_c and huber_schedule).",
        kohya="loss_type", sd_omit="l2", special="import", advanced=True,
        label="Loss type",
    )
    huber_c: float = setting(
        0.1, "Huber loss parameter c (0.1 usual): the error size where it turns from quadratic to linear.",
        kohya="huber_c", sd_omit=0.1, special="import", gt=0, le=10, advanced=True, label="Huber c",
    )
    huber_schedule: choice(("snr", "exponential", "constant")) = setting(  # type: ignore[valid-type]
        "snr", "How huber_c changes with the timestep: snr (sd-scripts' default), exponential or constant.",
        kohya="huber_schedule", sd_omit="snr", special="import", advanced=True, label="Huber schedule",
    )
    huber_scale: float = setting(
        1.0, "Scale of huber_c in the exponential and constant schedules.",
        kohya="huber_scale", sd_omit=1.0, special="import", gt=0, le=100, advanced=True, label="Huber scale",
    )
    learning_rate_te1: float | None = setting(
        None, "SDXL: learning rate of text encoder 1 (CLIP-L). Unset: the text encoder LR.",
        kohya="learning_rate_te1", special="export", gt=0, le=10, advanced=True, label="Text encoder 1 LR",
    )
    learning_rate_te2: float | None = setting(
        None, "SDXL: learning rate of text encoder 2 (OpenCLIP-G). Unset: the text encoder LR.",
        kohya="learning_rate_te2", special="export", gt=0, le=10, advanced=True, label="Text encoder 2 LR",
    )
    max_token_length: int = setting(
        75,
        "Caption length in tokens: 75, or 150 / 225 for long captions (encoded in 75-token chunks, as sd-scripts does).",
        kohya="max_token_length", ss=True, sd_omit=75, convert=coerce.token_length, ge=75, le=225, advanced=True,
        label="Max token length",
    )
    lr_scheduler_type: str = setting(
        "",
        "A scheduler class instead of lr_scheduler: a torch.optim.lr_scheduler name (CosineAnnealingLR) or a "
        "module.Class path, built with lr_scheduler_args. Empty: lr_scheduler.",
        kohya="lr_scheduler_type", advanced=True, label="Custom scheduler",
    )
    lr_scheduler_args: str = setting(
        "",
        "Arguments of the custom scheduler (or extra ones of lr_scheduler), space separated: T_max=100 eta_min=1e-6",
        kohya="lr_scheduler_args", convert=coerce.args_text, special="export", advanced=True, label="Scheduler args",
    )
    full_bf16: bool = setting(
        False, "Keep the LoRA weights and gradients in bf16 too (less VRAM, less precise). Needs mixed_precision bf16.",
        kohya="full_bf16", sd_omit=False, advanced=True, label="Full bf16",
    )
    full_fp16: bool = setting(
        False, "Keep the LoRA weights and gradients in fp16 too (less VRAM, can be unstable). Needs mixed_precision fp16.",
        kohya="full_fp16", sd_omit=False, advanced=True, label="Full fp16",
    )

    masked_loss: bool = setting(
        False,
        "Masked loss: train only where the mask is white (dataset.alpha_mask or dataset.conditioning_data_dir), "
        "the mask resized to the latents.",
        kohya="masked_loss", sd_omit=False, advanced=True, label="Masked loss",
    )

    def checks(self) -> list[tuple[str, str]]:
        w = self.lr_warmup_steps
        if w >= 1 and not float(w).is_integer():
            return [("lr_warmup_steps", "use a whole number of steps, or a fraction below 1")]
        from loratui.engine.schema.option_checks import optimization_checks

        return optimization_checks(self)


class OutputSettings(_Section):
    output_dir: str = setting("", "Folder the LoRA files are written to.", kohya="output_dir", kind="dir", required=True, label="Output dir")
    output_name: str = setting(
        "",
        "File name without extension: <name>.safetensors, <name>-000004.safetensors.",
        kohya="output_name",
        required=True,
        label="Output name",
    )
    save_every_n_epochs: int = setting(
        1,
        "Save an intermediate LoRA every N epochs. 0: only the final file.",
        kohya="save_every_n_epochs",
        ge=0,
        label="Save every N epochs",
    )
    save_every_n_steps: int = setting(
        0, "Save an intermediate LoRA every N steps. 0: off.", kohya="save_every_n_steps", sd_omit=0, ge=0,
        label="Save every N steps",
    )
    save_precision: choice(SAVE_PRECISIONS) = setting(  # type: ignore[valid-type]
        "fp16",
        "Precision of the saved weights. fp16 is what everyone uses.",
        kohya="save_precision",
        convert=coerce.save_precision,
        kohya_blank="empty: fp16",
        label="Save precision",
    )
    save_state: bool = setting(
        False,
        "Also save the full training state (optimizer, RNG, step) so the run can be resumed.",
        kohya="save_state",
        label="Save state",
    )
    # the kohya_ss GUI counts steps of states; sd-scripts' save_last_n_epochs_state counts saves,
    # as loratui does (engine/kohya converts; export writes both, import reads both)
    save_last_n_states: int = setting(
        2,
        "Keep this many saved states. 0: keep all.",
        kohya="save_last_n_steps_state",
        sd_scripts="save_last_n_epochs_state",
        special=True,
        ge=0,
        advanced=True,
        label="Save last N states",
    )
    resume: str = setting(
        "", "Resume from a saved state folder, or latest (the newest state of this output name). Empty: start fresh.", kohya="resume", kind="dir",
        label="Resume",
    )
    metadata_title: str = setting("", "Title stored in the LoRA (modelspec.title).", kohya="metadata_title", advanced=True, label="Metadata title")
    metadata_author: str = setting("", "Author stored in the LoRA.", kohya="metadata_author", advanced=True, label="Metadata author")
    metadata_description: str = setting(
        "", "Description stored in the LoRA.", kohya="metadata_description", advanced=True,
        label="Metadata description",
    )
    metadata_tags: str = setting("", "Comma-separated tags stored in the LoRA.", kohya="metadata_tags", advanced=True, label="Metadata tags")
    trigger_words: str = setting(
        "", "Words that activate the LoRA in a prompt (modelspec.trigger_phrase).",
        kohya="training_comment", convert=coerce.trigger_words, ss=True,
        label="Trigger words",
    )
    # -- samples: sample images while training, and logs other tools read
    sample_every_n_epochs: int = setting(
        0, "Render the sample prompts every N epochs with the LoRA being trained. 0: off.",
        kohya="sample_every_n_epochs", sd_omit=0, ge=0, label="Sample every N epochs",
    )
    sample_every_n_steps: int = setting(
        0, "Render the sample prompts every N steps. 0: off.", kohya="sample_every_n_steps", sd_omit=0, ge=0,
        label="Sample every N steps",
    )
    sample_prompts: str = setting(
        "",
        "Sample prompts: a .txt/.toml/.json prompt file in sd-scripts' format, or prompts typed here, one a line "
        "(options --n negative, --w/--h size, --d seed, --l CFG, --s steps, --g guidance, --ss sampler).",
        kohya="sample_prompts", convert=coerce.sample_prompts, special="export", label="Sample prompts",
    )
    sample_sampler: choice(SAMPLERS) = setting(  # type: ignore[valid-type]
        "euler_a",
        "Sampler of the sample images (sd-scripts' names): euler_a, ddim, dpmsolver++, euler, ... A prompt's --ss overrides it.",
        kohya="sample_sampler", convert=coerce.lower_text, kohya_blank="empty: euler_a", label="Sample sampler",
    )
    sample_at_first: bool = setting(
        False, "Also render the samples before the first step (the base model, for comparison).",
        kohya="sample_at_first", label="Sample at first",
    )
    log_with: choice(LOG_WITH) = setting(  # type: ignore[valid-type]
        "none",
        "Also log loss, learning rate, speed and samples to: tensorboard, wandb (needs the wandb package) or all. "
        "none: tensorboard when a logging dir is set, else nothing.",
        kohya="log_with", convert=coerce.lower_text, kohya_blank="empty: tensorboard when logging_dir is set",
        sd_omit="none", advanced=True, label="Log with",
    )
    logging_dir: str = setting(
        "", "Folder for TensorBoard logs; each run writes <dir>/<log prefix><date-time>. Empty: no TensorBoard.",
        kohya="logging_dir", kind="dir", advanced=True, label="Logging dir",
    )
    log_prefix: str = setting(
        "", "Prefix of the run's folder name in the logging dir (sd-scripts' log_prefix).", kohya="log_prefix",
        advanced=True, label="Log prefix",
    )

    def checks(self) -> list[tuple[str, str]]:
        name = self.output_name
        if name and any(c in name for c in '/\\:*?"<>|'):
            return [("output_name", f"{name!r} must be a plain file name without / \\ : * ? \" < > |")]
        return []


SECTION_TITLES = {
    "model": "Model",
    "dataset": "Dataset",
    "network": "Network",
    "optimization": "Optimization",
    "output": "Output",
    "compute": "Compute",
}


class Profile(BaseModel):
    """A complete, validated training profile."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_assignment=True, defer_build=True)

    model: ModelSettings = Field(default_factory=ModelSettings)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    network: NetworkSettings = Field(default_factory=NetworkSettings)
    optimization: OptimizationSettings = Field(default_factory=OptimizationSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)
    compute: ComputeSettings = Field(default_factory=ComputeSettings)

    # -- convenience -------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict; unset optional values are left out (TOML has no null)."""
        out: dict[str, dict[str, Any]] = {}
        for section in SECTION_TITLES:
            values = getattr(self, section).model_dump()
            out[section] = {k: v for k, v in values.items() if v is not None}
        return out

    def get(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)


_SETTINGS: tuple[SettingInfo, ...] | None = None


def settings() -> list[SettingInfo]:
    """Every setting, in declaration order."""
    global _SETTINGS
    if _SETTINGS is None:
        out: list[SettingInfo] = []
        for section in SECTION_TITLES:
            cls = Profile.model_fields[section].default_factory
            out += section_infos(section, cls)  # type: ignore[arg-type]
        _SETTINGS = tuple(out)
    return list(_SETTINGS)


def setting_info(dotted: str) -> SettingInfo:
    for s in settings():
        if s.dotted == dotted:
            return s
    raise KeyError(dotted)
