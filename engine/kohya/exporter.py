"""Export a profile for kohya-ss/sd-scripts: a ``--config_file`` TOML and a
``--dataset_config`` TOML, or the equivalent ``accelerate launch ...`` command line.

The one-to-one arguments are written by one loop over the settings' declarations
(their ``sd_scripts`` names); the hand-written cases are the family (a flag or the
script), resolution, latent caching, network module/args, which parts train, the
optimizer arguments, warm-up, epochs vs steps and state keeping. Settings sd-scripts
has no argument for are written as ``# loratui: key = value`` comment lines, which
sd-scripts skips and the importer reads back, so import → export → import gives the
same profile.

Cheap to import: no torch.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loratui.engine.families import get_family
from loratui.engine.kohya.dataset_config import concepts_on_disk, dataset_config_dict
from loratui.engine.kohya.keys import network_type_refusal
from loratui.engine.kohya.options_export import option_args
from loratui.engine.problems import Problem, error, warning
from loratui.engine.registries import NETWORK_TYPES
from loratui.engine.schema import Profile, settings
from loratui.engine.schema.coerce import num_text


def _family_script(family: str) -> str:
    """auto is written for train_network.py (SD 1.x / 2.x), as sd-scripts' default script."""
    return get_family(family).sd_scripts_script if family != "auto" else "train_network.py"


def _declared_args(p: Profile, a: dict[str, Any], keep, *, dataset_config: bool) -> None:
    """The one-to-one arguments, by the settings' sd-scripts names; settings without one
    (and not at their default) as ``# loratui:`` comments."""
    for s in settings():
        if s.special in (True, "export"):
            continue
        value = p.get(s.dotted)
        if s.sd_scripts is None:
            if value != s.default:
                keep(s.key, value)
            continue
        if dataset_config and s.sd_dataset:
            continue  # in the dataset config
        if value is None or value == "" or (s.sd_omit is not None and value == s.sd_omit):
            continue
        a[s.sd_scripts] = value


def sd_scripts_args(p: Profile, *, dataset_config: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """The sd-scripts arguments (``--config_file`` keys) for a profile, and the
    loratui settings that have no sd-scripts key (as ``key = value`` TOML text)."""
    import tomli_w

    m, d, o, out = p.model, p.dataset, p.optimization, p.output
    a: dict[str, Any] = {}
    extra: list[str] = []

    def keep(key: str, value: Any) -> None:
        extra.append(tomli_w.dumps({key: value}).strip())

    # the family: a flag for SD 2.x; the script for SDXL (a comment says so for the importer)
    fam = get_family(m.family) if m.family != "auto" else None
    for flag in fam.sd_scripts_flags if fam else ():
        if flag != "sdxl":  # sdxl_train_network.py takes no --sdxl
            a[flag] = True
    if m.family != "sd2":
        keep("family", m.family)
    if dataset_config:
        a["dataset_config"] = dataset_config
        if d.reg_data_dir and not concepts_on_disk(d.reg_data_dir):
            keep("reg_data_dir", d.reg_data_dir)
    else:
        a["resolution"] = f"{d.resolution},{d.resolution_height or d.resolution}"
        if d.reg_data_dir:
            a["reg_data_dir"] = d.reg_data_dir
    a["cache_latents"] = d.cache_latents != "off"
    a["cache_latents_to_disk"] = d.cache_latents == "disk"
    _memory_args(p, fam, a, keep)
    _network_args(p, a, keep)
    if o.optimizer_args.strip():
        a["optimizer_args"] = o.optimizer_args.split()
    w = o.lr_warmup_steps
    a["lr_warmup_steps"] = int(w) if float(w).is_integer() else w
    if o.max_train_steps:
        # sd-scripts lets max_train_epochs override max_train_steps; loratui lets the steps cap
        a["max_train_steps"] = o.max_train_steps
        keep("max_train_epochs", o.max_train_epochs)
    else:
        a["max_train_epochs"] = o.max_train_epochs
    a["sdpa"] = True
    a["save_model_as"] = "safetensors"
    # states: sd-scripts counts kept states per epoch save, and steps for step saves; the
    # importer reads save_last_n_epochs_state first, so it gets the count back as written
    a["save_last_n_epochs_state"] = out.save_last_n_states
    if out.save_every_n_steps and out.save_last_n_states:
        a["save_last_n_steps_state"] = out.save_last_n_states * out.save_every_n_steps
    _declared_args(p, a, keep, dataset_config=bool(dataset_config))
    option_args(p, a)
    if fam is not None:  # SD3/FLUX: their script's own arguments (network_args: train_blocks, train_t5xxl)
        for key, value in fam.sd_scripts_args(p).items():
            a[key] = a.get(key, []) + value if key == "network_args" else value
    # empty strings are "unset" for sd-scripts
    a = {k: v for k, v in a.items() if not (isinstance(v, str) and v == "")}
    return a, extra


def _memory_args(p: Profile, fam, a: dict[str, Any], keep) -> None:
    """Text-encoder caching, block swap, CPU-offloaded checkpointing: written where the
    family's script takes them, else (when set) kept as comments. ``auto`` caching is
    left out: sd-scripts does not cache unless told (the LoRA is the same)."""
    takes = set(fam.sd_scripts_memory_args) if fam else set()
    mode = p.dataset.cache_text_encoder_outputs
    if mode != "auto":
        if {"cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"} <= takes:
            a["cache_text_encoder_outputs"] = mode != "off"
            a["cache_text_encoder_outputs_to_disk"] = mode == "disk"
        else:
            keep("cache_text_encoder_outputs", mode)
    o = p.optimization
    for key, value, default in (("blocks_to_swap", o.blocks_to_swap, 0),
                                ("cpu_offload_checkpointing", o.cpu_offload_checkpointing, False)):
        if value != default:
            if key in takes:
                a[key] = value
            else:
                keep(key, value)


_DEFAULT_CONV = (Profile().network.conv_dim, Profile().network.conv_alpha)


def _network_args(p: Profile, a: dict[str, Any], keep) -> None:
    n = p.network
    if n.network_type not in NETWORK_TYPES:
        raise ValueError(f"network type {n.network_type!r} cannot be exported")
    net = NETWORK_TYPES[n.network_type]
    fam = get_family(p.model.family) if p.model.family != "auto" else None
    a["network_module"] = (fam.lora_network_module if fam else None) or net.network_module
    if net.algo is not None:  # -- lycoris: network_args as kohya_ss writes them
        from loratui.engine.kohya.lycoris_map import network_args_for

        a["network_args"] = network_args_for(p)
    else:
        from loratui.engine.registries import lora_network_args

        if args := lora_network_args(n):
            a["network_args"] = [f"{k}={v}" for k, v in args.items()]
    if net.algo is None and not net.conv:
        # networks.lora would train the convolutions if given conv_dim: keep them as comments
        if n.conv_dim != _DEFAULT_CONV[0]:
            keep("conv_dim", n.conv_dim)
        if n.conv_alpha != _DEFAULT_CONV[1]:
            keep("conv_alpha", n.conv_alpha)
    if not n.train_text_encoder:
        a["network_train_unet_only"] = True
    if not n.train_unet:
        a["network_train_text_encoder_only"] = True


def _toml_with_comments(data: dict[str, Any], header: list[str]) -> str:
    import tomli_w

    return "".join(f"# {line}\n" if line else "#\n" for line in header) + "\n" + tomli_w.dumps(data)


@dataclass
class ExportResult:
    config_path: Path
    dataset_path: Path | None
    script: str
    command: str
    notes: list[Problem]  # warnings: exported anyway, worth a look


def export_problems(p: Profile) -> list[Problem]:
    """Why a profile cannot be exported at all."""
    refusal = network_type_refusal(p.network.network_type)
    return [error("network.network_type", refusal, value=p.network.network_type)] if refusal else []


def export_warnings(p: Profile) -> list[Problem]:
    """Exported anyway, but sd-scripts will stop on these."""
    out = []
    if not p.model.base_model:
        out.append(warning("model.base_model", "is empty", "set pretrained_model_name_or_path before running sd-scripts"))
    if not p.dataset.train_data_dir:
        out.append(warning("dataset.train_data_dir", "is empty", "set the image folder before running sd-scripts"))
    if p.model.family == "auto":
        out.append(
            warning(
                "model.family",
                "is auto: written for train_network.py (SD 1.x/2.x)",
                "run sdxl_train_network.py for an SDXL model",
            )
        )
    return out


def export_sd_scripts(p: Profile, out_dir: str | Path, *, source: str = "", overwrite: bool = False,
                      names: tuple[str, str] = ("config.toml", "dataset.toml")) -> ExportResult:
    """Write ``config.toml`` (``--config_file``) and, when the concept folders can be
    listed, ``dataset.toml`` (``--dataset_config``) into ``out_dir``, atomically.
    Raises FileExistsError (without writing) when a file exists and not ``overwrite``."""
    from loratui.engine.fsutil import atomic_write_text

    out_dir = Path(out_dir)
    cfg_path = out_dir / names[0]
    ds_path = out_dir / names[1]
    notes: list[Problem] = []
    try:
        ds, ds_notes = dataset_config_dict(p)
        notes += ds_notes
    except ValueError as exc:
        ds = None
        if p.dataset.train_data_dir:
            notes.append(warning("dataset.train_data_dir", f"{exc}: the dataset is given as train_data_dir in {names[0]} instead of a dataset config"))
    targets = [cfg_path] + ([ds_path] if ds is not None else [])
    if not overwrite:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise FileExistsError(", ".join(existing))
    ds_ref = str(ds_path.resolve()) if ds is not None else None
    args, extra = sd_scripts_args(p, dataset_config=ds_ref)
    prompts_file = _inline_prompts_file(p, args, out_dir, overwrite)
    script = _family_script(p.model.family)
    notes += export_warnings(p)
    header = [
        f"sd-scripts --config_file exported by loratui{f' from {source}' if source else ''}.",
        f"Run: {launch_prefix(p)} {script} --config_file {shlex.quote(str(cfg_path.resolve()))}",
        "",
        "Settings sd-scripts has no option for (loratui reads them back on import):",
    ] + [f"loratui: {line}" for line in extra]
    if ds is not None:
        atomic_write_text(ds_path, _toml_with_comments(ds, [f"sd-scripts --dataset_config exported by loratui{f' from {source}' if source else ''}."]))
    if prompts_file is not None:
        from loratui.engine.samples.prompts import EXPORT_MARKER

        atomic_write_text(prompts_file, f"{EXPORT_MARKER}\n{p.output.sample_prompts.strip()}\n")
    atomic_write_text(cfg_path, _toml_with_comments(args, header))
    command = f"{launch_prefix(p)} {script} --config_file {shlex.quote(str(cfg_path.resolve()))}"
    return ExportResult(cfg_path, ds_path if ds is not None else None, script, command, notes)


def _inline_prompts_file(p: Profile, args: dict[str, Any], out_dir: Path, overwrite: bool) -> Path | None:
    """sd-scripts reads --sample_prompts from a file: prompts typed in the profile go to sample_prompts.txt."""
    from loratui.engine.samples.prompts import looks_like_file

    text = p.output.sample_prompts
    if not text.strip():
        return None
    if looks_like_file(text):
        args["sample_prompts"] = text.strip()
        return None
    path = out_dir / "sample_prompts.txt"
    if path.exists() and not overwrite:
        raise FileExistsError(str(path))
    args["sample_prompts"] = str(path.resolve())
    return path


def launch_prefix(p: Profile) -> str:
    """``accelerate launch`` with the options of the profile's ``[compute]`` section
    (sd-scripts takes its processes from accelerate's launcher, as loratui does)."""
    from loratui.engine.launch import compute_options

    return " ".join(["accelerate", "launch", *map(shlex.quote, compute_options(p))])


def sd_scripts_command(p: Profile) -> str:
    """The equivalent ``accelerate launch train_network.py ...`` command line."""
    args, extra = sd_scripts_args(p)
    parts = [launch_prefix(p), "--num_cpu_threads_per_process", "1", _family_script(p.model.family)]
    for key, value in args.items():
        if isinstance(value, bool):
            if value:
                parts.append(f"--{key}")
        elif isinstance(value, list):
            parts.append(f"--{key}")
            parts += [shlex.quote(str(x)) for x in value]
        else:
            parts.append(f"--{key}={shlex.quote(str(value))}")
    return " ".join(parts)