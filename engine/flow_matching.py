"""Flow matching as sd-scripts trains SD3/3.5 and FLUX.1 (``library/flux_train_utils.py``,
``library/sd3_train_utils.py``).

The noisy input is ``x_t = (1 - sigma) * latents + sigma * noise`` with ``sigma`` in
[0, 1]; the model predicts the velocity ``noise - latents``. How sigma is drawn:

- FLUX (``timestep_sampling``): ``uniform`` U(0,1); ``sigmoid`` sigmoid(s·N(0,1));
  ``shift`` the sigmoid draw shifted by ``discrete_flow_shift`` (σ' = kσ/(1+(k-1)σ));
  ``flux_shift`` the sigmoid draw shifted by the resolution-dependent μ of FLUX's own
  schedule (256 tokens → 0.5, 4096 → 1.15; σ' = e^μ/(e^μ + 1/σ - 1)); ``sigma`` u from
  the weighting scheme's density, taken as an index into the 1000-step shifted schedule.
- SD3 (sd-scripts ``sd3_train_network.py``): u from the weighting scheme's density,
  shifted by ``training_shift``; timestep = floor(1000·u), σ = timestep/1000.

Weighting scheme densities: ``logit_normal`` sigmoid(N(logit_mean, logit_std));
``mode`` u = 1 - v - mode_scale·(cos²(πv/2) - 1 + v), v ~ U(0,1); else U(0,1).
Loss weights: ``sigma_sqrt`` σ⁻², ``cosmap`` 2/(π(1 - 2σ + 2σ²)), else 1.

Every random draw comes from the run's ``torch.Generator``. torch is imported inside
the functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")
WEIGHTING_SCHEMES = ("none", "uniform", "logit_normal", "mode", "sigma_sqrt", "cosmap")
PREDICTION_TYPES = ("raw", "additive", "sigma_scaled")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class FlowSettings:
    """The flow-matching settings of a run (``model.*`` settings of the same names)."""

    timestep_sampling: str = "sigma"
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 3.0
    model_prediction_type: str = "sigma_scaled"
    weighting_scheme: str = "none"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    training_shift: float = 1.0
    guidance_scale: float = 3.5

    @classmethod
    def from_model_settings(cls, ms: Any) -> FlowSettings:
        names = cls.__dataclass_fields__
        return cls(**{k: getattr(ms, k) for k in names if hasattr(ms, k)})


@dataclass
class FlowSchedule:
    """The noise scheduler of a flow-matching family (what ``Components.noise_scheduler``
    holds): its settings and the scheduler config it came with."""

    settings: FlowSettings
    config: Any  # a dict-like config: num_train_timesteps, shift, ...

    def __post_init__(self) -> None:
        from types import SimpleNamespace

        if isinstance(self.config, dict):
            self.config = SimpleNamespace(**{"num_train_timesteps": NUM_TRAIN_TIMESTEPS, **self.config})


@dataclass
class FlowStep:
    """The 'timesteps' of one flow-matching batch: sigma per sample and the settings."""

    sigmas: Any  # (B,) float32 in [0, 1]
    settings: FlowSettings

    def view(self, ndim: int):
        return self.sigmas.view(-1, *([1] * (ndim - 1)))

    def __getitem__(self, part: slice) -> "FlowStep":
        """The samples ``part`` of the batch (a data-parallel process's shard)."""
        return FlowStep(self.sigmas[part], self.settings)


# --------------------------------------------------------------------------- formulas


def shift_sigmas(sigmas, shift: float):
    """The discrete flow shift: kσ / (1 + (k - 1)σ)."""
    return (sigmas * shift) / (1 + (shift - 1) * sigmas)


def flux_mu(image_tokens: int, base_shift: float = 0.5, max_shift: float = 1.15) -> float:
    """FLUX's resolution-dependent shift μ: linear in the image token count, 256 → 0.5, 4096 → 1.15."""
    m = (max_shift - base_shift) / (4096 - 256)
    return m * image_tokens + (base_shift - m * 256)


def flux_time_shift(mu: float, sigmas):
    """e^μ / (e^μ + (1/σ - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def density(scheme: str, n: int, generator, device, *, logit_mean=0.0, logit_std=1.0, mode_scale=1.29):
    """u in [0, 1) per sample from the weighting scheme's timestep density."""
    import torch

    if scheme == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * torch.randn((n,), generator=generator, device=device))
    u = torch.rand((n,), generator=generator, device=device)
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def loss_weighting(scheme: str, sigmas):
    """Per-sample loss weights of the weighting scheme."""
    import torch

    if scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if scheme == "cosmap":
        return (2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))).float()
    return torch.ones_like(sigmas, dtype=torch.float32)


def _density(s: FlowSettings, n: int, generator, device):
    return density(s.weighting_scheme, n, generator, device, logit_mean=s.logit_mean, logit_std=s.logit_std,
                   mode_scale=s.mode_scale)


def flux_sigmas(s: FlowSettings, n: int, latent_hw: tuple[int, int], generator, device):
    """σ per sample as sd-scripts' FLUX training draws it."""
    import torch

    how = s.timestep_sampling
    if how == "uniform":
        return torch.rand((n,), generator=generator, device=device)
    if how in ("sigmoid", "shift", "flux_shift"):
        t = torch.sigmoid(s.sigmoid_scale * torch.randn((n,), generator=generator, device=device))
        if how == "shift":
            return shift_sigmas(t, s.discrete_flow_shift)
        if how == "flux_shift":
            h, w = latent_hw
            return flux_time_shift(flux_mu((h // 2) * (w // 2)), t)
        return t
    # "sigma": an index into the 1000-step schedule σ_i = shift((N - i)/N)
    u = _density(s, n, generator, device)
    idx = (u * NUM_TRAIN_TIMESTEPS).long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)
    base = (NUM_TRAIN_TIMESTEPS - idx).float() / NUM_TRAIN_TIMESTEPS
    return shift_sigmas(base, s.discrete_flow_shift)


def sd3_sigmas(s: FlowSettings, n: int, generator, device):
    """σ per sample as sd-scripts' SD3 training draws it: timestep = floor(1000·shift(u)), σ = timestep/1000."""
    u = shift_sigmas(_density(s, n, generator, device), s.training_shift)
    return (u * NUM_TRAIN_TIMESTEPS).long().float() / NUM_TRAIN_TIMESTEPS


def noisy(latents, noise, sigmas):
    """x_t = (1 - σ)·latents + σ·noise."""
    sig = sigmas.view(-1, *([1] * (latents.ndim - 1))).to(latents.dtype)
    return (1 - sig) * latents + sig * noise


def apply_prediction_type(kind: str, pred, noisy_input, sigmas):
    """sd-scripts' ``model_prediction_type``: raw as is; additive pred + x_t; sigma_scaled -σ·pred + x_t."""
    if kind == "additive":
        return pred + noisy_input
    if kind == "sigma_scaled":
        sig = sigmas.view(-1, *([1] * (pred.ndim - 1))).to(pred.dtype)
        return pred * (-sig) + noisy_input
    return pred
