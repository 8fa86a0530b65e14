"""What SD3/3.5 and FLUX.1 share: a transformer trained with flow matching, CLIP and T5-XXL
text encoders, a 16-channel VAE, and models that come as transformer-only files plus
separate text encoder / VAE files (kohya_ss ``clip_l``, ``clip_g``, ``t5xxl``, ``ae``),
ComfyUI "all in one" files, diffusers folders or Hub ids.

Not a family itself (no ``FAMILY``): ``sd3`` and ``flux`` subclass it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from loratui.engine.families.base import UNET_PREFIX, Family, any_prefix

VAE_PREFIXES = ("vae.", "first_stage_model.")


class FlowFamily(Family):
    ss_v_suffix = False
    uses_clip_skip = False
    lora_unet_conv_blocks = ()
    lora_unet_layout = "transformer"  # names from the family's own table (lora_name_table)
    lora_text_encoder_blocks = ("CLIPAttention", "CLIPMLP", "T5Attention", "T5DenseGatedActDense")
    # the setting giving each separate part, by part label (the VAE also as model.vae)
    part_settings: ClassVar[dict[str, str]] = {}
    t5_label: ClassVar[str] = "T5-XXL"
    default_t5_tokens: ClassVar[int] = 256
    denoiser_subfolder: ClassVar[str] = "transformer"
    flow_matching: ClassVar[bool] = True
    pixel_multiple: ClassVar[int] = 16  # latents are packed / patched 2×2
    denoiser_label: ClassVar[str] = "transformer"
    # flux_train_network.py / sd3_train_network.py take these memory flags (sd-scripts)
    sd_scripts_memory_args: ClassVar[tuple[str, ...]] = (
        "cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk", "blocks_to_swap", "cpu_offload_checkpointing",
    )

    def swap_blocks(self, denoiser) -> list:
        """The transformer's blocks in the order its forward runs them (FLUX: double-stream, then single-stream)."""
        return [*getattr(denoiser, "transformer_blocks", []), *getattr(denoiser, "single_transformer_blocks", [])]

    # ---- block swap, counted as sd-scripts does

    def swap_group_sizes(self, config: Mapping) -> list[int]:
        return [int(config.get("num_layers", 0))]

    def swap_split(self, n: int, sizes: list[int]) -> list[int] | None:
        """sd-scripts' SD3 MMDiT: the last ``n`` joint blocks, at most all but two."""
        return [n] if n <= sizes[0] - 2 else None

    # ---- detection

    def transformer_keys(self, keys) -> set[str]:
        """The transformer's keys of a single file, without the ``model.diffusion_model.`` prefix."""
        n = len(UNET_PREFIX)
        return {k[n:] if k.startswith(UNET_PREFIX) else k for k in keys}

    def match_checkpoint(self, keys, shapes) -> int | None:
        bare = self.transformer_keys(keys)
        return 0 if any_prefix(bare, *self.checkpoint_markers) else None

    def match_diffusers(self, folder: Path, index: Mapping, unet: Mapping, text_encoder: Mapping) -> int | None:
        if str(index.get("_class_name", "")) == self.pipeline_class:
            return 0
        cfg_path = folder / "transformer" / "config.json"
        if cfg_path.is_file():
            import json

            try:
                cls = json.loads(cfg_path.read_text()).get("_class_name")
            except (OSError, ValueError):
                cls = None
            if cls == self.denoiser_class:
                return 0
        return None

    def single_file_missing(self, keys: set[str]) -> list[str]:
        out = []
        if not any_prefix(self.transformer_keys(keys), *self.checkpoint_markers):
            out.append("transformer")
        if not any_prefix(keys, *VAE_PREFIXES):
            out.append("VAE")
        for te in self.text_encoders:
            if not any_prefix(keys, *te.ldm_prefixes):
                out.append(te.label)
        return out

    def separate_parts(self, ms: Any) -> dict[str, str]:
        out = {}
        for label, key in self.part_settings.items():
            if str(getattr(ms, key, "") or "").strip():
                out[label] = key
        if str(getattr(ms, "vae", "") or "").strip():
            out["VAE"] = "vae"
        return out

    def part_problems(self, ms: Any) -> list:
        from loratui.engine.problems import error

        out = []
        for label, key in self.part_settings.items():
            value = str(getattr(ms, key, "") or "").strip()
            if value and not Path(value).expanduser().is_file():
                out.append(error(f"model.{key}", f"{value} does not exist", f"set it to the {label} .safetensors file, or clear it."))
        return out

    def diffusers_components(self) -> list[str]:
        out = ["transformer", "vae", "scheduler"]
        for te in self.text_encoders:
            out += [te.subfolder, te.tokenizer]
        return out

    # ---- loading

    def load_parts(self, info: Any, ms: Any, dtype: Any, on_progress: Any) -> dict:
        from loratui.engine.flow_loading import load_flow_parts

        return load_flow_parts(self, info, ms, dtype, on_progress)

    def transformer_config(self, shapes: Mapping[str, tuple[int, ...]], keys: set[str]) -> dict:
        """The diffusers config of a transformer single file, from its tensor shapes."""
        raise NotImplementedError

    def header_transformer_config(self, path: Path) -> dict:
        """``transformer_config`` of a .safetensors single file, from its header alone
        (no weights read: the meta-device builds of ``check --modules`` and the estimate);
        {} when the header does not have this family's layout."""
        from loratui.engine.modelfiles import _read_safetensors_header

        try:
            hdr, _ = _read_safetensors_header(Path(path), Path(path).stat().st_size)
        except OSError:
            return {}
        if hdr is None:
            return {}
        n = len(UNET_PREFIX)
        prefixed = any(k.startswith(UNET_PREFIX) for k in hdr.keys)
        shapes = {k[n:] if prefixed else k: v[1] for k, v in hdr.keys.items() if not prefixed or k.startswith(UNET_PREFIX)}
        try:
            return self.transformer_config(shapes, set(shapes))
        except (KeyError, IndexError, ValueError):
            return {}

    def convert_transformer(self, sd: dict, model) -> dict:
        """A transformer single file's tensors (prefix stripped) -> diffusers names."""
        raise NotImplementedError

    def t5_tokens(self, ms: Any, transformer_config: Any) -> int:
        return int(getattr(ms, "t5xxl_max_token_length", 0) or 0) or self.default_t5_tokens

    # ---- training target (sd-scripts' flow matching, engine.flow_matching)

    def make_noise_scheduler(self, scheduler_config: dict, prediction_type: str, ms: Any):
        from loratui.engine.flow_matching import FlowSchedule, FlowSettings

        cfg = {k: v for k, v in dict(scheduler_config).items() if not k.startswith("_")}
        return FlowSchedule(FlowSettings.from_model_settings(ms), cfg)

    def sigmas(self, settings, latents, generator):
        raise NotImplementedError

    def noisy_input(self, noise_scheduler, latents, noise, generator):
        from loratui.engine.flow_matching import FlowStep, noisy

        sig = self.sigmas(noise_scheduler.settings, latents, generator)
        return noisy(latents, noise, sig), FlowStep(sig, noise_scheduler.settings)

    def target(self, noise_scheduler, latents, noise, timesteps, prediction_type: str):
        return noise - latents

    def min_snr_weights(self, noise_scheduler, timesteps, gamma: float, prediction_type: str):
        import torch

        return torch.ones_like(timesteps.sigmas, dtype=torch.float32)  # min-SNR-γ is for noise-prediction models

    # ---- sd-scripts export: the settings this family's script takes (others would be refused by it)
    sd_scripts_keys: ClassVar[tuple[str, ...]] = ()
    network_keys: ClassVar[tuple[str, ...]] = ("train_t5xxl",)  # its network.* settings

    def settings_used(self) -> frozenset[str]:
        """Its own model.* settings (what its sd-scripts script takes) and network.* settings;
        none of the U-Net families' (v-prediction, clip_skip, min-SNR, DDPM timesteps)."""
        return frozenset({f"model.{k}" for k in self.sd_scripts_keys} | {f"network.{k}" for k in self.network_keys})

    def sd_scripts_args(self, profile: Any) -> dict[str, Any]:
        m, n = profile.model, profile.network
        out: dict[str, Any] = {}
        for key in self.sd_scripts_keys:
            value = getattr(m, key)
            if value in ("", None) or (key == "t5xxl_max_token_length" and not value):
                continue
            if key == "apply_t5_attn_mask" and not value:
                continue
            out[key] = value
        args = []
        if getattr(n, "train_blocks", "all") != "all" and self.name == "flux":
            args.append(f"train_blocks={n.train_blocks}")
        if getattr(n, "train_t5xxl", False):
            args.append("train_t5xxl=True")
        if args:
            out["network_args"] = args
        return out

    # ---- LoRA

    def lora_target_filter(self, network_settings: Any):
        t5_prefix = f"lora_te{len(self.text_encoders)}_"
        train_t5 = bool(getattr(network_settings, "train_t5xxl", False))
        return lambda name: train_t5 or not name.startswith(t5_prefix)

    def text_encoder_lora_namer(self, index: int, count: int):
        from loratui.engine.kohya_names import text_encoder_lora_name, text_encoder_prefix

        prefix = text_encoder_prefix(index, count)
        if index == count - 1:  # T5: its own module paths (encoder.block.0.layer.0.SelfAttention.q)
            return lambda path: f"{prefix}_{path}".replace(".", "_")
        return lambda path: text_encoder_lora_name(path, prefix)

    def unet_lora_namer(self, unet_config: Any):
        """Transformer module path -> the internal name of its LoRA module
        (``engine.lora_fused``: ``<saved name>#<part>`` where sd-scripts' layer is fused)."""
        table = self.lora_name_table(unet_config)
        return lambda path: table.get(path)

    def lora_name_table(self, config: Any) -> dict[str, str]:
        raise NotImplementedError

    def pipeline_extras(self) -> dict[str, Any]:
        return {}

    # ---- samples: sd-scripts renders SD3/FLUX samples with flow-matching Euler whatever --sample_sampler says

    fixed_sampler = "euler"

    def sample_scheduler(self, sampler: str, noise_scheduler):
        """FlowMatchEulerDiscreteScheduler with the model's own scheduler config (its shift,
        FLUX's resolution-dependent shift), which ``make_noise_scheduler`` kept."""
        import diffusers

        config = {k: v for k, v in vars(noise_scheduler.config).items() if not k.startswith("_")}
        return diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)

    def sample_kwargs(self, components) -> dict[str, Any]:
        """T5 captions as long as in training (``model.t5xxl_max_token_length``; the pipelines' own
        default is 512 or 256 tokens whatever the model was trained with)."""
        n = getattr(components.tokenizers[-1], "model_max_length", None)
        return {"max_sequence_length": int(n)} if n and n <= 4096 else {}
