"""Export of the training options whose sd-scripts form is not one value per setting.

- SDXL's text-encoder rates: sd-scripts' ``text_encoder_lr`` takes one value per text
  encoder (``[te1, te2]``); an unset one is the text encoder LR;
- ``lr_scheduler_args``: a list of ``key=value`` items, like ``optimizer_args``.

Cheap to import: no torch.
"""

from __future__ import annotations

from typing import Any


def option_args(p: Any, a: dict[str, Any]) -> None:
    o = p.optimization
    if o.learning_rate_te1 is not None or o.learning_rate_te2 is not None:
        base = o.text_encoder_lr or o.learning_rate
        a["text_encoder_lr"] = [o.learning_rate_te1 or base, o.learning_rate_te2 or base]
    if o.lr_scheduler_args.strip():
        a["lr_scheduler_args"] = o.lr_scheduler_args.split()
