"""`loratui convert LORA.safetensors --to diffusers`: an SD3/FLUX LoRA under diffusers' names."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

NAME = "convert"
HELP = "write an SD3/FLUX LoRA in the diffusers (PEFT) format, for diffusers' load_lora_weights"
DESCRIPTION = (
    "Write a copy of a kohya-format SD3/SD3.5 or FLUX.1 LoRA under diffusers' own module names "
    "(transformer.…lora_A/lora_B, fused qkv split into to_q/to_k/to_v), which diffusers' "
    "load_lora_weights reads: diffusers cannot read sd-scripts' SD3 names. The kohya-format file, "
    "which AUTOMATIC1111, Forge and ComfyUI load, is left as it is."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("lora", metavar="LORA.safetensors", help="the kohya-format LoRA file")
    parser.add_argument("--to", choices=["diffusers"], required=True, help="target format")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="the file to write (default: <name>-diffusers.safetensors beside the LoRA)")
    parser.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")


def _metadata(meta: dict[str, str]) -> dict[str, str]:
    """The source's description (ss_*, modelspec.*) without its hashes, which were of the other file."""
    out = {k: v for k, v in meta.items() if not k.startswith("sshs_") and k != "modelspec.hash_sha256"}
    out["format"] = "pt"
    out["loratui_converted_from"] = "kohya"
    return out


def run(args: argparse.Namespace) -> int:
    from loratui.engine.fsutil import atomic_save
    from loratui.engine.lora_convert import to_diffusers
    from loratui.engine.lora_file import LoRAWeightsError, read_lora_file

    src = Path(args.lora).expanduser()
    out = Path(args.output).expanduser() if args.output else src.with_name(f"{src.stem}-diffusers.safetensors")
    if out.suffix.lower() != ".safetensors":
        print(f"error: -o {out}: the file must end in .safetensors", file=sys.stderr)
        return 2
    try:
        if out.resolve() == src.resolve():
            print(f"error: -o {out}: is the LoRA itself; give another file", file=sys.stderr)
            return 2
        if out.exists() and not args.overwrite:
            print(f"error: {out}: already exists; use --overwrite to replace it, or -o FILE", file=sys.stderr)
            return 1
        sd, meta = read_lora_file(src)
        result = to_diffusers(sd, meta, str(src))
    except LoRAWeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from safetensors.torch import save_file

    try:
        atomic_save(out, lambda tmp: save_file(result.state_dict, str(tmp), metadata=_metadata(meta)))
    except OSError as exc:
        print(f"error: {out}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
        return 1
    print(f"Wrote {out}: {result.source_modules} kohya modules as {result.modules} in diffusers' layout")
    for note in result.notes:
        print(f"note: {note}")
    print(f"Load it with:\n  pipe.load_lora_weights({str(out)!r})")
    return 0
