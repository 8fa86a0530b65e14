"""Logs other tools read, as sd-scripts' ``--log_with`` writes them: TensorBoard
event files in ``<logging_dir>/<log_prefix><YYYYmmddHHMMSS>`` (loss/current,
loss/average, lr/unet, speed, and the sample images), and wandb when asked for
and installed. A logger that fails is switched off with a warning; it never ends
a run."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from loratui.engine.events import Event, Failed, Finished, SampleSaved, StepEvent, WarningEvent


def wanted(profile) -> tuple[bool, bool]:
    """(tensorboard, wandb) as sd-scripts decides: a logging_dir alone means TensorBoard."""
    o = profile.output
    tb = o.log_with in ("tensorboard", "all") or (o.log_with == "none" and bool(o.logging_dir))
    return tb, o.log_with in ("wandb", "all")


def logging_problems(profile) -> list:
    from loratui.engine.problems import Problem

    o = profile.output
    tb, wb = wanted(profile)
    out = []
    if tb and not o.logging_dir:
        out.append(Problem("output.logging_dir", f"log_with is {o.log_with!r} but no logging dir is set",
                           "set output.logging_dir to the folder TensorBoard reads, or set log_with to none"))
    if tb and importlib.util.find_spec("tensorboard") is None:
        out.append(Problem("output.log_with", "TensorBoard logging needs the tensorboard package, which is not installed",
                           "pip install tensorboard, or set log_with to none and clear logging_dir"))
    if wb and importlib.util.find_spec("wandb") is None:
        out.append(Problem("output.log_with", "wandb logging needs the wandb package, which is not installed",
                           "pip install wandb (and run wandb login), or set log_with to tensorboard or none"))
    return out


def run_log_dir(profile, when: float | None = None) -> Path:
    o = profile.output
    return Path(o.logging_dir).expanduser() / f"{o.log_prefix}{time.strftime('%Y%m%d%H%M%S', time.localtime(when))}"


class Trackers:
    """An emit that passes every event on and logs the ones other tools read."""

    def __init__(self, profile, outer) -> None:
        self.profile, self.outer = profile, outer
        self.tb_wanted, self.wb_wanted = wanted(profile)
        self.tb: Any = None
        self.wb: Any = None
        self.opened = False

    def __call__(self, ev: Event) -> None:
        self.outer(ev)
        if not (self.tb_wanted or self.wb_wanted) or isinstance(ev, WarningEvent):
            return
        try:
            if isinstance(ev, StepEvent):
                self._open()
                self._scalars(ev)
            elif isinstance(ev, SampleSaved):
                self._open()
                self._image(ev)
            elif isinstance(ev, (Finished, Failed)):
                self.close()
        except Exception as exc:  # noqa: BLE001 - logging must never end a run
            self.tb_wanted = self.wb_wanted = False
            self.close()
            self.outer(WarningEvent(message=f"output.log_with: logging stopped ({exc}); training goes on"))

    def _open(self) -> None:
        if self.opened:
            return
        self.opened = True
        o = self.profile.output
        if self.tb_wanted:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(run_log_dir(self.profile)))
        if self.wb_wanted:
            import wandb

            self.wb = wandb.init(project="network_train", name=o.output_name or None, dir=o.logging_dir or None,
                                 config=self.profile.to_dict())

    def _scalars(self, ev: StepEvent) -> None:
        values = {"loss/current": ev.loss, "loss/average": ev.smoothed_loss, "lr/unet": ev.lr, "speed/it_per_s": ev.its}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, ev.step)
        if self.wb is not None:
            self.wb.log(values, step=ev.step)

    def _image(self, ev: SampleSaved) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(ev.path) as im:
            pixels = np.asarray(im.convert("RGB"))
        if self.tb is not None:
            self.tb.add_image(f"sample_{ev.index}", pixels, ev.step, dataformats="HWC")
        if self.wb is not None:
            import wandb

            self.wb.log({f"sample_{ev.index}": wandb.Image(pixels, caption=ev.prompt)}, step=ev.step, commit=False)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wb is not None:
            self.wb.finish()
            self.wb = None
