"""Optimizer state, in bytes, for the LoRA's parameter shapes.

What each optimizer keeps per parameter tensor after its first step (read from
their sources): torch AdamW exp_avg + exp_avg_sq (fp32) and a step scalar;
Lion exp_avg; Prodigy exp_avg, exp_avg_sq, s, p0 (and a few scalars);
DAdaptAdam exp_avg, exp_avg_sq, s; Adafactor (no first moment by default)
factored second moments (a row and a column vector per matrix, the whole
tensor for vectors) and an RMS scalar; bitsandbytes' 8-bit optimizers one
byte per value per moment with a float32 absmax per block of 256 (blockwise)
and a 256-entry map, but 32-bit state for tensors of fewer than 4096 values
(``min_8bit_size``). ``STATE_BYTES_PER_PARAM`` is the nominal figure shown.
An optimizer not listed here is counted like AdamW.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

STATE_BYTES_PER_PARAM: dict[str, float] = {
    "AdamW": 8, "AdamW8bit": 2, "Lion": 4, "Lion8bit": 1, "Prodigy": 16, "Adafactor": 0, "DAdaptAdam": 12,
}

# the note shown next to the figure
NOTES = {"Adafactor": "factored", "AdamW8bit": "8-bit", "Lion8bit": "8-bit"}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _moments(k: int, scalar_bytes: int = 4) -> Callable[[tuple[int, ...]], int]:
    return lambda shape: k * 4 * _numel(shape) + scalar_bytes


def _bnb(k: int) -> Callable[[tuple[int, ...]], int]:
    def f(shape):
        n = _numel(shape)
        if n < 4096:
            return k * 4 * n + 4
        blocks = -(-n // 256)
        return k * (n + 4 * blocks + 4 * 256) + 4

    return f


def _adafactor(shape: tuple[int, ...]) -> int:
    if len(shape) >= 2:
        row = _numel(shape[:-1])
        col = _numel(shape[:-2] + shape[-1:])
        return 4 * (row + col) + 4  # + RMS (step is an int)
    return 4 * _numel(shape) + 4


PER_TENSOR: dict[str, Callable[[tuple[int, ...]], int]] = {
    "AdamW": _moments(2),
    "AdamW8bit": _bnb(2),
    "Lion": _moments(1, 0),
    "Lion8bit": _bnb(1),
    "Prodigy": _moments(4, 0),  # p0 of a tensor that starts at zero (LoRA up) is a scalar: see state_bytes
    "DAdaptAdam": _moments(3, 0),
    "Adafactor": _adafactor,
}


def state_bytes(optimizer: str, shapes: Iterable) -> int:
    """Optimizer state of the trainable tensors: ``shapes`` items are a shape
    or (shape, zero-initialised)."""
    f = PER_TENSOR.get(optimizer, PER_TENSOR["AdamW"])
    total = 0
    for item in shapes:
        shape, zero = (item, False) if not item or isinstance(item[0], int) else (tuple(item[0]), bool(item[1]))
        total += f(tuple(shape))
        if zero and optimizer == "Prodigy":  # prodigyopt keeps p0 = a 0-dim tensor for an all-zero parameter
            total -= 4 * _numel(shape) - 4
    return total
