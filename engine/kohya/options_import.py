"""Import of the training options whose sd-scripts form is not one value per setting:
``text_encoder_lr`` as a list (one rate per text encoder, as sd-scripts takes it for SDXL).

Cheap to import: no torch.
"""

from __future__ import annotations

from typing import Any

from loratui.engine.schema.coerce import BadValue, to_float


def split_text_encoder_lrs(cfg: dict[str, Any], b: Any, K) -> None:
    """``text_encoder_lr = [a]`` → a; ``[a, b]`` → the text encoder rate a, te1 = a, te2 = b."""
    raw = cfg.get("text_encoder_lr")
    if not isinstance(raw, list):
        return
    try:
        values = [to_float(v) for v in raw]
    except BadValue as exc:
        cfg.pop("text_encoder_lr")
        b.unsupported_(K("text_encoder_lr"), raw, f"{exc}; treated as unset")
        return
    if len(values) > 2 or not values:
        cfg.pop("text_encoder_lr")
        b.unsupported_(K("text_encoder_lr"), raw, "one or two rates expected (SDXL's two text encoders); treated as unset")
        return
    cfg["text_encoder_lr"] = values[0]
    if len(values) == 2:
        b.put("optimization.learning_rate_te1", raw, K("text_encoder_lr") + " [0]", values[0])
        b.put("optimization.learning_rate_te2", raw, K("text_encoder_lr") + " [1]", values[1])
