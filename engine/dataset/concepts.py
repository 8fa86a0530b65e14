"""The concept folder name: ``<repeats>_<class tokens>`` (the kohya_ss convention).

``10_mychar`` trains the images inside 10 times per epoch, captioned "mychar"
when they have no caption file. The one pattern for it: the scan, the
inspection's edits and the kohya import use this module.
"""

from __future__ import annotations

import re

# repeats (a sign is matched so that "0_x" and "-1_x" are reported, not skipped), "_", class tokens
CONCEPT_DIR_RE = re.compile(r"^(-?\d+)_(.*)$", re.DOTALL)


def parse_concept_dir(name: str) -> tuple[int, str] | None:
    """(repeats, class tokens as written) of a concept folder name, or None when
    it has no ``<repeats>_`` prefix. The repeats may be < 1 (the caller says why
    that cannot train); the class tokens are not stripped and may be empty."""
    m = CONCEPT_DIR_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), m.group(2)
