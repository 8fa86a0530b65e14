"""`loratui sample LORA.safetensors --base MODEL --prompt ... --weights 0.5,1.0`:
the same prompt at several LoRA weights (and, with --epochs-from, for each
epoch's file) side by side in one contact-sheet PNG; headless."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "sample"
HELP = "render a prompt with a LoRA at several weights (and epochs) into one contact-sheet PNG"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lora", help="the LoRA .safetensors file")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--base", help="base model: .safetensors file, diffusers folder or Hub repo id")
    g.add_argument("--profile", metavar="PROFILE",
                   help="the base model as this profile gives it: its [model] section (SD3 / FLUX split files: "
                        "clip_l, clip_g, t5xxl, ae; model_config_dir; vae)")
    p.add_argument("--prompt", default=None,
                   help="prompt, with sd-scripts' options (--n, --w, --h, --d, --l, --s, --ss) inside the quotes; "
                        "default: the LoRA's trigger words")
    p.add_argument("--weights", default="0,0.4,0.6,0.8,1.0", help="comma-separated LoRA weights (default 0,0.4,0.6,0.8,1.0)")
    p.add_argument("--epochs-from", metavar="DIR", default=None,
                   help="also every epoch's file of this LoRA's name in DIR, one row each")
    p.add_argument("--sampler", default="euler_a", help="sd-scripts sampler name (default euler_a)")
    p.add_argument("--out", default=None, help="the PNG to write (default <LoRA folder>/sample/<name>_sheet_<time>.png)")
    p.add_argument("--cpu", action="store_true", help="render on the CPU even when a GPU is there")


def _weights(text: str) -> list[float]:
    try:
        out = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--weights {text!r}: expected numbers separated by commas, e.g. 0.5,1.0") from None
    if not out or any(not -4 <= w <= 4 for w in out):
        raise ValueError(f"--weights {text!r}: give one to a few weights between -4 and 4")
    return out


def run(args: argparse.Namespace) -> int:
    from loratui.engine.lora_file import LoRAWeightsError
    from loratui.engine.samples.prompts import PromptError, parse_line
    from loratui.engine.samples.samplers import canonical_sampler
    from loratui.engine.samples.sheet import epoch_files, lora_metadata, make_sheet, sheet_path, trigger_words

    lora = Path(args.lora).expanduser()
    try:
        weights = _weights(args.weights)
        if canonical_sampler(args.sampler) is None:
            raise ValueError(f"--sampler {args.sampler!r} is not an sd-scripts sampler name (e.g. euler_a, ddim, dpmsolver++)")
        meta = lora_metadata(lora)
        text = args.prompt if args.prompt is not None else trigger_words(meta)
        if not text.strip():
            raise ValueError(f"{lora.name} names no trigger words in its metadata: give --prompt")
        prompt = parse_line(text, "--prompt")
        folder = Path(args.epochs_from).expanduser() if args.epochs_from else None
        if folder is not None and not folder.is_dir():
            raise ValueError(f"--epochs-from {folder}: no such folder")
        loras = epoch_files(lora, folder)
    except (ValueError, PromptError, LoRAWeightsError) as exc:
        print(f"error    {exc}", file=sys.stderr)
        return 2
    from dataclasses import replace

    from loratui.engine.families import get_family
    from loratui.engine.models import inspect_model
    from loratui.engine.schema import ModelSettings

    if args.profile:
        from loratui.engine.schema import ProfileError, load_profile

        try:
            ms = load_profile(Path(args.profile).expanduser()).model
        except ProfileError as exc:
            for problem in exc.problems:
                print(f"error    {problem}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"error    --profile {args.profile}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    else:
        ms = ModelSettings(base_model=args.base)
    info = inspect_model(ms)
    if info.problems:
        for p in info.problems:
            print(f"error    {p}", file=sys.stderr)
        return 2
    size = get_family(info.family).default_resolution if info.family else 512
    prompt = replace(prompt, width=prompt.width or size, height=prompt.height or size,
                     seed=prompt.seed if prompt.seed is not None else 0, sampler=prompt.sampler or canonical_sampler(args.sampler))
    out = Path(args.out).expanduser() if args.out else sheet_path(lora)
    print(f"prompt   {prompt.prompt}" + (f"  (negative: {prompt.negative_prompt})" if prompt.negative_prompt else ""))
    print(f"loras    {', '.join(p.name for p in loras)}\nweights  {', '.join(f'{w:g}' for w in weights)}")
    try:
        res = make_sheet(ms, loras, prompt, weights, out, device="cpu" if args.cpu else None,
                         on_progress=lambda m: print(f"render   {m}", flush=True))
    except LoRAWeightsError as exc:
        print(f"error    {exc}", file=sys.stderr)
        return 2
    print(f"wrote    {res.path}")
    return 0
