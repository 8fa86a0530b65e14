"""Samples during a training run: when (``output.sample_*``, as sd-scripts'
``should_sample_images``), rendering, saving to ``<output_dir>/sample/`` and the
``SampleSaved`` event. A sample never fails a run: what goes wrong is a warning."""

from __future__ import annotations

from pathlib import Path
from loratui.engine.events import SampleSaved
from loratui.engine.samples.prompts import PromptError, SamplePrompt, load_prompts


def prompts_for(profile, base_dir: str | Path | None = None) -> list[SamplePrompt]:
    """The profile's sample prompts (PromptError for a bad file or line)."""
    return load_prompts(profile.output.sample_prompts, base_dir)


def sample_problems(profile) -> list:
    """Problems of the sample and logging settings, for ``prepare_run``'s checks."""
    from loratui.engine.samples.tracking import logging_problems

    return _prompt_problems(profile) + logging_problems(profile)


def _prompt_problems(profile) -> list:
    from loratui.engine.problems import Problem, Severity

    o = profile.output
    wants = o.sample_every_n_epochs or o.sample_every_n_steps or o.sample_at_first
    try:
        prompts = prompts_for(profile)
    except PromptError as exc:
        return [Problem("output.sample_prompts", str(exc), "fix the prompt file or clear output.sample_prompts")]
    if wants and not prompts:
        return [Problem("output.sample_prompts", "samples are asked for but there are no sample prompts",
                        "type a prompt here or name a .txt/.toml/.json prompt file; or set the sample intervals to 0",
                        Severity.WARNING)]
    return []


def wanted_prompts(profile, enabled: bool = True) -> list[SamplePrompt]:
    """The prompts a run samples ([] when it samples none; ``enabled``: False on data-parallel
    ranks > 0). Raises PromptError."""
    o = profile.output
    wanted = enabled and (o.sample_every_n_epochs or o.sample_every_n_steps or o.sample_at_first)
    return prompts_for(profile) if wanted else []


class TrainingSamples:
    """Called by the loop: :meth:`at_first`, :meth:`after_step`, :meth:`after_epoch`."""

    def __init__(self, ctx, comp, device: str, autocast=None, enabled: bool = True):
        self.ctx, self.comp, self.device, self.autocast = ctx, comp, device, autocast
        self.profile = ctx.profile
        o = self.profile.output
        self.every_epochs, self.every_steps, self.first = o.sample_every_n_epochs, o.sample_every_n_steps, o.sample_at_first
        self.last_step: int | None = None
        try:
            self.prompts = wanted_prompts(self.profile, enabled)
        except PromptError as exc:  # checked before the run; the file may have changed since
            ctx.warn(f"output.sample_prompts: {exc}; no samples this run")
            self.prompts = []

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def at_first(self, step: int) -> None:
        if self.enabled and self.first and step == 0:
            self.sample(None, 0)

    def after_step(self, epoch: int, step: int) -> None:
        if self.enabled and self.every_steps and step % self.every_steps == 0:
            self.sample(None, step)

    def after_epoch(self, epoch: int, step: int) -> None:
        if self.enabled and self.every_epochs and epoch % self.every_epochs == 0 and self.last_step != step:
            self.sample(epoch, step)

    def sample(self, epoch: int | None, step: int) -> list[Path]:
        """Render every prompt; a failure is a warning, never the run's end."""
        from loratui.engine.samples.render import png_text, render, resolved, sample_dir, sample_name, save_png

        self.last_step = step
        o, saved = self.profile.output, []
        folder = sample_dir(o.output_dir)
        for p in self.prompts:
            self.ctx.check_abort()
            try:
                r = render(self.comp, [resolved(p, self.profile, o.sample_sampler)], device=self.device,
                           clip_skip=self.profile.model.clip_skip, autocast=self.autocast)[0]
                q = r.prompt
                path = folder / sample_name(o.output_name, epoch, step, q.index, q.seed)
                save_png(r.image, path, png_text(q, lora=o.output_name, epoch=epoch, step=step))
            except Exception as exc:  # noqa: BLE001 - a sample must never end the run
                if _is_oom(exc):
                    _free(self.device)
                self.ctx.warn(f"sample {p.index + 1} ({_short(p.prompt)}) failed: {_reason(exc)}; training goes on")
                continue
            saved.append(path)
            self.ctx.emit(SampleSaved(path=str(path), prompt=q.prompt, index=q.index, epoch=epoch or 0, step=step,
                                      seed=int(q.seed or 0), width=int(q.width or 0), height=int(q.height or 0)))
        return saved


def _short(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _is_oom(exc: BaseException) -> bool:
    return "out of memory" in str(exc).lower()


def _free(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if _is_oom(exc):
        return "out of memory (use smaller --w/--h or fewer --s steps in the sample prompts)"
    return text[:200]
