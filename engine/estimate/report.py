"""Estimates as text: the plan panel's rows and `loratui check`'s lines."""

from __future__ import annotations

from loratui.engine.estimate import GB, Estimate, Figure


def size(n: float) -> str:
    if n >= 10 * GB:
        return f"{n / GB:.0f} GB"
    if n >= GB:
        return f"{n / GB:.1f} GB"
    return f"{n / 2**20:.0f} MB"


def duration(seconds: float) -> str:
    m = seconds / 60
    if m < 1:
        return f"{seconds:.0f} s"
    if m < 90:
        return f"{m:.0f} min"
    return f"{m / 60:.1f} h"


def figure_text(fig: Figure, where: str) -> tuple[str, bool | None]:
    """``~9.8 GB of 24 GB fits ✓`` / ``✗ needs ~14 GB, card has 8 GB``; (text, fits)."""
    if fig.have is None:
        return f"~{size(fig.total)}", None
    if fig.fits:
        return f"~{size(fig.total)} of {size(fig.have)} fits ✓", True
    return f"✗ needs ~{size(fig.total)}, {where} has {size(fig.have)}", False


def rows(est: Estimate) -> list[tuple[str, str, bool | None]]:
    """(label, value, fits) for the plan panel and `check`."""
    dev = est.device
    vram, fits = figure_text(est.vram, "card")
    if dev is None:
        vram += " (no GPU known: `check --gpu NAME`)"
    out = [("est. VRAM", vram, fits)]
    ram, rfits = figure_text(est.ram, "this machine")
    out.append(("est. RAM", ram, rfits))
    disk, dfits = figure_text(est.disk, "the disk")
    out.append(("est. disk", disk, dfits))
    if est.seconds is not None:
        out.append(("est. time", f"~{duration(est.seconds)} ({dev.name})", None))
    else:
        out.append(("est. time", "— (no GPU known)", None))
    return out


def change_lines(profile, changes) -> list[str]:
    """``gradient_checkpointing false → true: ~7.9 GB``, one per change."""
    return [f"{c.describe(profile.get(c.key))}: ~{size(c.vram)} ({c.why})" for c in changes]


def term_lines(fig: Figure) -> list[str]:
    return [f"  {name:<36} {size(n):>8}" for name, n in fig.terms.items() if n]
