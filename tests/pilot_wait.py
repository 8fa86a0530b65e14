"""Waiting for a condition in Pilot tests (never sleep-then-assert)."""

from __future__ import annotations

import time


async def until(pilot, cond, what: str | None = None, timeout: float = 10.0) -> None:
    """Wait for ``cond()`` while the app keeps running; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        await pilot.pause(0.05)
