"""Sample images: prompts in sd-scripts' format, rendering during training with
the LoRA being trained, contact sheets of a LoRA at several weights.

Cheap to import (the UI reads the sampler names): torch, diffusers and PIL are
imported inside the functions that need them.
"""
