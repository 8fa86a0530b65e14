"""The interface between the engine and a model family.

The declarative part (names, metadata strings, kohya_ss flags, key prefixes,
component layout) is plain class attributes, read without torch. The behaviour
(detection from a checkpoint's header, loading, text encoding, the training
target, extra conditioning, LoRA targets and kohya key names, the sampling
pipeline) is methods that import their libraries when called.

The training loop, the model loader and the LoRA code talk to a family only
through what is defined here; a new family (SD3.5, Flux) is a new module that
overrides what differs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

# A LDM/SGM single file: the U-Net's first input conv and a cross-attention key
# whose width tells the text encoder's width.
UNET_PREFIX = "model.diffusion_model."
TO_K_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
LABEL_EMB_PREFIX = "model.diffusion_model.label_emb."


def any_prefix(keys: Iterable[str], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family, where it lives in each layout."""

    label: str  # "text encoder", "text encoder 2" (in messages about missing parts)
    subfolder: str  # diffusers folder: text_encoder / text_encoder_2
    tokenizer: str  # diffusers folder of its tokenizer
    model_class: str  # transformers class: CLIPTextModel / CLIPTextModelWithProjection
    ldm_format: str  # single file: "clip" (transformers keys inside) | "open_clip"
    ldm_prefixes: tuple[str, ...]  # its key prefix(es) in a single file; the first is canonical


# settings only a U-Net family (a DDPM noise schedule, CLIP text encoders) trains with
UNET_SETTINGS = frozenset({
    "model.v_parameterization", "model.clip_skip", "optimization.min_snr_gamma",
    "optimization.debiased_estimation_loss", "optimization.min_timestep", "optimization.max_timestep",
    "optimization.huber_c", "optimization.huber_schedule", "optimization.huber_scale",
})


class Family:
    name: ClassVar[str]  # model.family, e.g. "sdxl"
    label: ClassVar[str]  # shown to people, e.g. "SDXL"
    order: ClassVar[int] = 100  # position in lists (auto-detection tries families in this order)
    aliases: ClassVar[tuple[str, ...]] = ()  # other spellings accepted for the name ("sd15")
    # ss_base_model_version as sd-scripts writes it; v-prediction models get "_v" appended where sd-scripts does
    ss_base_model_version: ClassVar[str]
    ss_v_suffix: ClassVar[bool] = True
    ss_base_model_prefix: ClassVar[str | None] = None  # what every version of this family's ss_base_model_version starts with
    # modelspec.architecture (without the "/lora" suffix) for eps and v-prediction models
    modelspec_architecture: ClassVar[str]
    modelspec_architecture_v: ClassVar[str | None] = None
    modelspec_implementation: ClassVar[str] = "diffusers"
    modelspec_prediction: ClassVar[bool] = True  # writes modelspec.prediction_type (sd-scripts: not for FLUX)
    # sd-scripts: the training script, and the boolean flags that select this family
    sd_scripts_script: ClassVar[str] = "train_network.py"
    sd_scripts_flags: ClassVar[tuple[str, ...]] = ()  # e.g. ("v2",) or ("sdxl",)
    default_resolution: ClassVar[int] = 512
    # sd-scripts memory arguments this family's script takes besides train_network.py's own
    # (fp8_base): the rest are kept as ``# loratui:`` comments on export
    sd_scripts_memory_args: ClassVar[tuple[str, ...]] = ()
    swap_block_count: ClassVar[int] = 9  # how many blocks swap_blocks() gives for a full-size model (the estimate's share)

    # ---- components and layouts
    text_encoders: ClassVar[tuple[TextEncoderSpec, ...]] = ()
    denoiser_class: ClassVar[str] = "UNet2DConditionModel"  # the diffusers class in unet/ (a transformer for SD3/Flux)
    denoiser_label: ClassVar[str] = "U-Net"  # what people call it (estimates, suggestions)
    denoiser_subfolder: ClassVar[str] = "unet"  # where a diffusers folder keeps the denoiser
    flow_matching: ClassVar[bool] = False  # SD3 / FLUX: trained with flow matching, T5 last of the text encoders
    # the pixel block a training size must be a multiple of: the VAE's 8 (× the transformer's 2×2 patches)
    pixel_multiple: ClassVar[int] = 8
    cross_attention_width: ClassVar[int | None] = None  # the U-Net's cross-attention width in full-size models
    text_encoder_act: ClassVar[str | None] = None  # hidden_act of the (first) text encoder in a diffusers config
    config_folder: ClassVar[str] = ""  # bundled diffusers configs in engine/configs
    config_folder_v: ClassVar[str | None] = None  # the same for v-prediction models, where they differ
    vae_overflows_in_fp16: ClassVar[bool] = False  # its own VAE needs fp32 unless an fp16-fixed VAE is given
    uses_clip_skip: ClassVar[bool] = True  # False: always the penultimate layer
    # ---- LoRA: the module classes sd-scripts' networks/lora.py wraps, and the U-Net naming
    lora_unet_blocks: ClassVar[tuple[str, ...]] = ("Transformer2DModel",)
    lora_unet_conv_blocks: ClassVar[tuple[str, ...]] = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
    lora_text_encoder_blocks: ClassVar[tuple[str, ...]] = ("CLIPAttention", "CLIPMLP")
    lora_unet_layout: ClassVar[str] = "diffusers"  # "diffusers" | "sgm" (sd-scripts' SDXL U-Net)
    lora_text_encoder_width: ClassVar[int | None] = None  # q_proj input width of a full-size text encoder
    pipeline_class: ClassVar[str] = "StableDiffusionPipeline"
    part_settings: ClassVar[dict[str, str]] = {}  # SD3/FLUX: part label -> the setting giving it as a file
    lora_network_module: ClassVar[str | None] = None  # ss_network_module where sd-scripts has its own (networks.lora_flux)
    # ---- flow-matching families (SD3, FLUX): key prefixes that tell the family in any single-file
    # layout (transformer-only or under model.diffusion_model.); empty for U-Net families
    checkpoint_markers: ClassVar[tuple[str, ...]] = ()
    # ---- prediction type: single files of this family may not say (SD 2.x: 512 eps or 768-v)
    prediction_ambiguous: ClassVar[bool] = False
    # said when model.v_parameterization is set on a model of this family that does not declare it
    v_pred_unusual: ClassVar[str | None] = None
    # ---- family-specific settings ("section.key") this family trains with. A setting that some
    # family lists here is family-specific: the families that do not list it ignore it (or refuse
    # it), and the form hides it for them (engine.families.settings_unused_by)
    own_settings: ClassVar[frozenset[str]] = UNET_SETTINGS

    def settings_used(self) -> frozenset[str]:
        """The family-specific settings this family trains with (``own_settings``; no
        ``model.clip_skip`` where it always takes the penultimate layer)."""
        return self.own_settings - ({"model.clip_skip"} if not self.uses_clip_skip else set())

    # ------------------------------------------------------------------ metadata

    def base_model_version(self, v_pred: bool) -> str:
        return self.ss_base_model_version + ("_v" if v_pred and self.ss_v_suffix else "")

    def architecture(self, v_pred: bool, denoiser_config: Any = None) -> str:
        """modelspec.architecture of a LoRA of this family (``denoiser_config``: the trained
        model's, where the variant shows only there: SD3.5 medium / large, Flux dev / schnell)."""
        arch = self.modelspec_architecture_v if v_pred and self.modelspec_architecture_v else self.modelspec_architecture
        return arch + "/lora"

    # ------------------------------------------------------------------ detection (no torch)

    def match_checkpoint(self, keys: set[str], shapes: Mapping[str, tuple[int, ...]]) -> int | None:
        """How surely a single file's tensor names say it is this family: 0 its
        text encoder keys, 1 the U-Net's cross-attention width, 2 weaker U-Net
        markers; None when they do not. The surest family wins."""
        if self.text_encoders and any_prefix(keys, *self.text_encoders[-1].ldm_prefixes):
            return 0
        shape = shapes.get(TO_K_KEY)
        if self.cross_attention_width and shape is not None and len(shape) == 2 and shape[1] == self.cross_attention_width:
            return 1
        return None

    def reject_checkpoint(self, keys: set[str], shapes: Mapping | None = None) -> str | None:
        """A model of this family's kind that cannot be trained on (e.g. a
        refiner): the reason, said after the file's path."""
        return None

    def match_diffusers(self, folder: Path, index: Mapping, unet: Mapping, text_encoder: Mapping) -> int | None:
        """Like :meth:`match_checkpoint` for a diffusers folder's configs:
        0 a marker only this family has, 1 the cross-attention width, 2 the
        text encoder's activation."""
        if self.cross_attention_width and unet.get("cross_attention_dim") == self.cross_attention_width:
            return 1
        if self.text_encoder_act and text_encoder.get("hidden_act") == self.text_encoder_act:
            return 2
        return None

    def guess_prediction(self, path: Path, read_tensor) -> str | None:
        """A guess of the prediction type of a single file that does not declare
        it (``read_tensor(key)`` -> list of floats or None; None for a pickle)."""
        return None

    def prediction_warning(self, spec: str, guess: str | None, setting: str) -> str:
        """For a ``prediction_ambiguous`` family: what to say when a single file
        does not declare its prediction type and ``setting`` is false."""
        return f"{spec} does not say whether it is a v-prediction model; training with epsilon because {setting} is false."

    def single_file_parts(self) -> dict[str, tuple[str, ...]]:
        """Text encoder parts of a single file, by label, with their key prefixes."""
        return {te.label: te.ldm_prefixes for te in self.text_encoders}

    def diffusers_components(self) -> list[str]:
        """Subfolders a complete diffusers folder of this family has."""
        first, *rest = self.text_encoders
        out = ["unet", "vae", first.subfolder, first.tokenizer, "scheduler"]
        for te in rest:
            out += [te.subfolder, te.tokenizer]
        return out

    def config_dir(self, prediction_type: str) -> Path:
        """The bundled diffusers configs a single file of this family is built with."""
        from loratui.engine.configs import config_dir

        if prediction_type == "v_prediction" and self.config_folder_v:
            return config_dir(self.config_folder_v)
        return config_dir(self.config_folder)

    def config_folder_named(self, spec: str) -> str | None:
        """The bundled configs a model that is not here to read (a missing file, a repo not
        downloaded) is counted with, told by its name; None: ``config_folder``."""
        return None

    def normalize_checkpoint(self, sd: dict) -> dict:
        """A single file's state dict in the layout the converters expect."""
        return sd

    def vae_needs_fp32(self, vae_config: Any, fp16_fixed_vae: bool | None) -> bool:
        """Does the VAE overflow in fp16? ``fp16_fixed_vae``: None for the
        model's own VAE, else whether the separate VAE is an fp16-fixed one."""
        if not self.vae_overflows_in_fp16:
            return False
        if fp16_fixed_vae is None:
            return bool(getattr(vae_config, "force_upcast", True))
        return not (fp16_fixed_vae or getattr(vae_config, "force_upcast", True) is False)

    # ------------------------------------------------------------------ text

    def clip_skip_warning(self, clip_skip: int) -> str | None:
        if not self.uses_clip_skip and clip_skip > 1:
            return f"model.clip_skip: {self.label} always uses the penultimate layer; clip_skip is ignored"
        return None

    def tokenize(self, tokenizers: list, captions: list[str]) -> list:
        """Token ids of ``captions``, one tensor per tokenizer."""
        return [
            tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
            for tok in tokenizers
        ]

    def encode_text(self, text_encoders: list, ids: list, clip_skip: int, device) -> tuple[Any, Any]:
        """(encoder_hidden_states, pooled or None) as sd-scripts builds them."""
        te = text_encoders[0]
        out = te(ids[0].to(device), output_hidden_states=clip_skip > 1)
        if clip_skip > 1:
            h = out.hidden_states[-clip_skip]
            h = getattr(te, "text_model", te).final_layer_norm(h)
        else:
            h = out.last_hidden_state
        return h, None

    def unet_kwargs(self, pooled, crops: list[tuple], device, dtype) -> dict[str, Any]:
        """Extra conditioning the denoiser takes besides (noisy, t, hidden)."""
        return {}

    def latent_channels(self, denoiser_config: Any) -> int:
        """Channels of the VAE latents the denoiser takes (Flux packs 2×2 patches into its input)."""
        return int(denoiser_config.in_channels)

    def predict(self, denoiser, noisy, timesteps, hidden, pooled, crops: list[tuple], device, dtype):
        """The denoiser's prediction for a noisy batch, with its conditioning."""
        return denoiser(noisy, timesteps, hidden.to(dtype), **self.unet_kwargs(pooled, crops, device, dtype)).sample

    # ------------------------------------------------------------------ training target

    def noisy_input(self, noise_scheduler, latents, noise, generator, min_timestep: int = 0,
                    max_timestep: int | None = None) -> tuple[Any, Any]:
        """(noisy latents, timesteps) for one batch; draws the timesteps from ``generator``
        in [min_timestep, max_timestep) (all of them by default; min = max: that one, as sd-scripts)."""
        import torch

        bsz = latents.shape[0]
        top = noise_scheduler.config.num_train_timesteps if max_timestep is None else min(max_timestep, noise_scheduler.config.num_train_timesteps)
        if min_timestep < top:
            timesteps = torch.randint(min_timestep, top, (bsz,), generator=generator, device=latents.device).long()
        else:
            timesteps = torch.full((bsz,), min(top, noise_scheduler.config.num_train_timesteps - 1), device=latents.device).long()
        return noise_scheduler.add_noise(latents, noise, timesteps), timesteps

    def target(self, noise_scheduler, latents, noise, timesteps, prediction_type: str):
        """What the denoiser is trained to predict."""
        if prediction_type == "v_prediction":
            return noise_scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def min_snr_weights(self, noise_scheduler, timesteps, gamma: float, prediction_type: str):
        """Per-sample loss weights of min-SNR-γ weighting."""
        import torch

        ac = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = ac / (1 - ac)
        w = torch.clamp(snr, max=gamma) / (snr + 1 if prediction_type == "v_prediction" else snr)
        return w.float()

    # ------------------------------------------------------------------ LoRA names

    def unet_lora_namer(self, unet_config: Any):
        """A function: diffusers U-Net module path -> kohya LoRA name."""
        from loratui.engine.kohya_names import LORA_PREFIX_UNET, SGMLayout

        layout = SGMLayout.from_config(unet_config) if self.lora_unet_layout == "sgm" else None

        def name(path: str) -> str:
            mapped = layout.map(path) if layout is not None else path
            return f"{LORA_PREFIX_UNET}_{mapped}".replace(".", "_")

        return name

    # ------------------------------------------------------------------ memory

    def swap_blocks(self, denoiser) -> list:
        """The denoiser's blocks in the order its forward runs them: what block swap
        keeps on the CPU and CPU-offloaded checkpointing checkpoints (a U-Net: its
        down, mid and up blocks; a transformer family returns its transformer blocks)."""
        blocks = list(getattr(denoiser, "down_blocks", []) or [])
        if getattr(denoiser, "mid_block", None) is not None:
            blocks.append(denoiser.mid_block)
        return blocks + list(getattr(denoiser, "up_blocks", []) or [])

    def swap_groups(self, denoiser) -> list[list]:
        """The blocks ``blocks_to_swap`` takes from, as groups it splits its count across
        (each in forward order): here one group, ``swap_blocks``."""
        return [self.swap_blocks(denoiser)]

    def swap_group_sizes(self, config: Mapping) -> list[int]:
        """``swap_groups``' lengths, from the denoiser's config (a U-Net: down, mid and up blocks)."""
        down, up = config.get("down_block_types") or [], config.get("up_block_types") or []
        return [len(down) + len(up) + (1 if config.get("mid_block_type", "") is not None else 0)]

    def swap_split(self, n: int, sizes: list[int]) -> list[int] | None:
        """How many of the last blocks of each group ``blocks_to_swap = n`` keeps on the CPU
        (``sizes``: the groups' lengths), as sd-scripts counts it; None: more than this denoiser allows."""
        return [n] if n <= sizes[0] else None

    def max_blocks_to_swap(self, sizes: list[int]) -> int:
        n = 0
        while n < 256 and self.swap_split(n + 1, sizes) is not None:
            n += 1
        return n

    def blocks_swapped(self, denoiser, n: int) -> list | None:
        """The blocks ``blocks_to_swap = n`` keeps on the CPU, in forward order (None: too many)."""
        groups = self.swap_groups(denoiser)
        split = self.swap_split(n, [len(g) for g in groups])
        if split is None:
            return None
        return [b for g, k in zip(groups, split) for b in (g[len(g) - k:] if k else [])]

    # ------------------------------------------------------------------ images

    def pipeline(self, components, scheduler=None):
        """A diffusers pipeline that renders images with the loaded components
        (``engine.loading.Components``); ``scheduler`` defaults to DDIM built
        from the training noise schedule."""
        import diffusers

        if scheduler is None:
            scheduler = diffusers.DDIMScheduler.from_config(components.noise_scheduler.config)
        parts: dict[str, Any] = {"unet": components.unet, "vae": components.vae, "scheduler": scheduler}
        for spec, te, tok in zip(self.text_encoders, components.text_encoders, components.tokenizers):
            parts[spec.subfolder] = te
            parts[spec.tokenizer] = tok
        return getattr(diffusers, self.pipeline_class)(**parts, **self.pipeline_extras())

    def pipeline_extras(self) -> dict[str, Any]:
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    # the sampler every sample of this family renders with, whatever output.sample_sampler says
    # (None: the one asked for); SD3/FLUX: their flow-matching Euler, as sd-scripts samples them
    fixed_sampler: ClassVar[str | None] = None

    def sample_scheduler(self, sampler: str, noise_scheduler):
        """The diffusers scheduler that renders samples with ``sampler`` (sd-scripts' name),
        built from the training noise schedule (so v-prediction and the betas carry over)."""
        from loratui.engine.samples.samplers import make_scheduler

        return make_scheduler(sampler or "euler_a", noise_scheduler.config)

    def sample_kwargs(self, components) -> dict[str, Any]:
        """Extra pipeline call arguments for samples (SD3/FLUX: the T5 length trained with)."""
        return {}

    # ------------------------------------------------------------------ hooks of other layouts
    # (defaults keep the U-Net families as they are; SD3/FLUX override them)

    def single_file_missing(self, keys: set[str]) -> list[str] | None:
        """Parts a single file lacks, when this family tells them itself (None: the U-Net rule)."""
        return None

    def separate_parts(self, ms: Any) -> dict[str, str]:
        """Parts given by separate settings: {part label: setting key} (SD3/FLUX: clip_l, t5xxl, ae)."""
        return {}

    def sd_scripts_args(self, profile: Any) -> dict[str, Any]:
        """Arguments only this family's sd-scripts script takes (SD3/FLUX: components, flow matching)."""
        return {}

    def metadata_extra(self, profile: Any) -> dict[str, Any]:
        """ss_* keys only this family's sd-scripts script writes."""
        return {}

    def part_problems(self, ms: Any) -> list:
        """Problems (engine.problems.Problem) of the separate part settings."""
        return []

    def load_parts(self, info: Any, ms: Any, dtype: Any, on_progress: Any) -> dict | None:
        """Load the model's parts itself (the dict ``engine.loading`` builds); None: the U-Net loaders."""
        return None

    def make_noise_scheduler(self, scheduler_config: dict, prediction_type: str, ms: Any):
        """The training noise scheduler (``Components.noise_scheduler``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(scheduler_config, prediction_type=prediction_type)

    def loss_weights(self, noise_scheduler, timesteps):
        """Per-sample loss weights of the family's objective, or None (SD3's weighting scheme)."""
        return None

    def lora_target_filter(self, network_settings: Any):
        """A predicate on kohya names: which modules a run trains (None: all default targets)."""
        return None

    def text_encoder_lora_namer(self, index: int, count: int):
        """A function: text encoder module path -> kohya LoRA name."""
        from loratui.engine.kohya_names import text_encoder_lora_name, text_encoder_prefix

        prefix = text_encoder_prefix(index, count)
        return lambda path: text_encoder_lora_name(path, prefix)

    def __repr__(self) -> str:
        return f"<family {self.name}>"
