"""What `loratui check --gpu/--vram` and `loratui fit` print and do."""

from __future__ import annotations

import argparse
import sys


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--gpu", metavar="NAME", default=None,
                   help='estimate for this card ("RTX 4090", "A100 80GB", "H100", ...); default: this machine\'s GPU')
    g.add_argument("--vram", metavar="GB", type=float, default=None, help="estimate for a card with this much VRAM")


class DeviceError(ValueError):
    pass


def device_from_args(args: argparse.Namespace):
    """The card of --gpu / --vram, else this machine's (NVML), else None."""
    from loratui.engine.estimate.devices import device_names, find_device, local_device, vram_device

    if getattr(args, "gpu", None):
        dev = find_device(args.gpu)
        if dev is None:
            raise DeviceError(f"--gpu {args.gpu!r}: not a card loratui knows; use one of {', '.join(device_names())} "
                              "or --vram GB")
        return dev
    if getattr(args, "vram", None) is not None:
        if args.vram <= 0:
            raise DeviceError("--vram: give the card's memory in GB, e.g. --vram 8")
        return vram_device(args.vram, local_device())
    return local_device()


def shape_assumed(prepared) -> str | None:
    """The model shape an estimate is counted as when the base model is not on this machine
    yet and ``model.family`` says what it is (``"FLUX.1-dev"``: ``lora_modules.assumed_config``).
    None: the model is read as it is (or, with other problems, there is no estimate)."""
    from loratui.engine.lora_modules import assumed_config, shape_name

    root = assumed_config(prepared.model, prepared.profile.model)
    return shape_name(root) if root is not None else None


def estimate_for(prepared, device):
    """(Estimate, None) or (None, why not)."""
    from loratui.engine.estimate import EstimateError, from_prepared

    assumed = shape_assumed(prepared)
    if prepared.model.problems and assumed is None:
        return None, "the base model has problems (see above)"
    try:
        est = from_prepared(prepared, device)
        if assumed:
            est.assumed = assumed
            ms = prepared.profile.model
            est.notes.append(f"{ms.base_model} is not here yet: counted as {assumed}, "
                             f"from the configs loratui bundles for model.family = {ms.family}")
        return est, None
    except EstimateError as exc:
        return None, str(exc)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:  # configs that cannot be built
        return None, f"the model could not be counted from its configs ({type(exc).__name__}: {exc})"


def print_estimate(prepared, device, out=None) -> bool | None:
    """The estimate lines of `check` (to ``out``, default: the stdout of now); whether the run fits (None: unknown)."""
    out = out or sys.stdout
    from loratui.engine.estimate.fit import suggest
    from loratui.engine.estimate.report import change_lines, rows, size, term_lines

    est, why = estimate_for(prepared, device)
    if est is None:
        print(f"estimate — ({why})", file=out)
        return None
    where = f"{device.name} ({size(device.vram)})" if device is not None else "a GPU of unknown kind"
    from loratui.engine.estimate import precision_for

    mp = precision_for(prepared.profile, device)  # what the run uses there (bf16 → fp16 on a card without bf16)
    print(f"estimate for {where}, {'fp32 (mixed precision no)' if mp == 'no' else mp}:", file=out)
    for note in est.notes:
        print(f"  note: {note}", file=out)
    for label, value, _ in rows(est):
        print(f"{label:<10} {value}", file=out)
        if label in ("est. VRAM", "est. RAM"):
            for line in term_lines(est.vram if label == "est. VRAM" else est.ram):
                print(line, file=out)
    changes = suggest(prepared.profile, est)
    if changes:
        print("to fit, change (in this order):", file=out)
        for line in change_lines(prepared.profile, changes):
            print(f"  {line}", file=out)
        if changes[-1].vram > est.vram.have:
            print(f"  still ~{size(changes[-1].vram)}: this model does not fit {size(est.vram.have)} with these settings",
                  file=out)
    return est.fits
