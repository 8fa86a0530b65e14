"""The network and optimization sections of a profile (see :mod:`loratui.engine.schema.sections`).

Imported by the UI before its first frame: no torch, no diffusers.
"""

from __future__ import annotations

from loratui.engine.registries import MIXED_PRECISIONS, NETWORK_TYPES, OPTIMIZERS, SCHEDULERS
import loratui.engine.schema.coerce as coerce
from loratui.engine.schema.declare import _Section, choice, setting

DYNAMO_BACKENDS = ("inductor", "cudagraphs", "aot_eager", "eager")  # torch.compile's own backends (fastpath)



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
    rank_dropout: float = setting(0.0, "Drop this fraction of each module's ranks per step, scaling up the rest (0 off; "
                                  "0.1 usual).", kohya="rank_dropout", sd_scripts=None, special=True, advanced=True,
                                  ge=0, lt=1)
    module_dropout: float = setting(0.0, "Skip each whole module with this probability per step (0 off; "
                                    "0.1 usual).", kohya="module_dropout", sd_scripts=None, special=True, advanced=True,
                                    ge=0, lt=1)
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
        "0: off. Counted as sd-scripts does: SD3 its last N blocks; FLUX.1 the last N/2 double-stream and "
        "N single-stream ones (at most 35). Flux.1 on 12 GB: 16; SD 1.x/SDXL rarely need it. CUDA only "
        "(a no-op on the CPU).",
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
