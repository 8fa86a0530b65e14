"""The estimate quoted next to what was measured when a run runs out of GPU memory."""

from __future__ import annotations


def oom_quote(profile) -> str:
    """`` Estimated ~14 GB (activations ~6.1 GB) for this card (24 GB).`` or "" when
    no estimate can be made. Never raises (it is called while handling an error)."""
    try:
        from loratui.engine.estimate import estimate
        from loratui.engine.estimate.devices import local_device
        from loratui.engine.estimate.report import size
        from loratui.engine.plan import plan_steps

        o = profile.optimization
        plan = plan_steps(1, batch_size=o.train_batch_size, grad_accum=o.gradient_accumulation_steps, epochs=1)
        device = local_device()
        est = estimate(profile, device, plan=plan, images=0)
        acts = sum(v for k, v in est.vram.terms.items() if k.startswith("activations"))
        card = f" of the card's {size(device.vram)}" if device is not None else ""
        quote = f" Estimated before the run: ~{size(est.vram.total)}{card} (activations ~{size(acts)}; "
        try:
            from loratui.engine.estimate.fit import suggest
            from loratui.engine.estimate.report import change_lines

            changes = suggest(profile, est) if device is not None else []
            lines = change_lines(profile, changes)
            if changes and changes[-1].vram > device.vram:
                lines.append(f"even then ~{size(changes[-1].vram)}: too big for this card")
        except Exception:  # noqa: BLE001 - the figure stands without the changes
            lines = []
        if lines:  # what `loratui fit` would change, in its order (the first is what ctrl+f applies)
            return quote + "to fit it, change: " + "; ".join(lines) + " — `loratui fit PROFILE --vram GB -o NEW.toml`)."
        return quote + "`loratui check PROFILE` lists what to change)."
    except Exception:  # noqa: BLE001 - the OOM message stands without it
        return ""
