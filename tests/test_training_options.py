"""The training options kohya_ss presets use (issue 11): each changes what it should and
nothing else, with sd-scripts' formulas (noise, timesteps, losses, max-norm, dropout, long
captions, learning rates, schedulers, precision, the dashboard's figures). End to end:
test_training_options_e2e.py."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loratui.engine.schema import OptimizationSettings, Profile, ProfileError, profile_from_dict  # noqa: E402
from loratui.engine.training import chunked, losses, noise, regularize  # noqa: E402


def _opt(**kw) -> OptimizationSettings:
    return OptimizationSettings(**kw)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


LATENTS = torch.randn(2, 4, 16, 16, generator=_gen(99))


# --------------------------------------------------------------------------- noise


def test_all_noise_options_off_draw_exactly_the_plain_noise_and_offset():
    plain = torch.randn(LATENTS.shape, generator=_gen())
    assert torch.equal(noise.sample_noise(_opt(), LATENTS, _gen(), "cpu"), plain)
    g = _gen()
    base = torch.randn(LATENTS.shape, generator=g)
    with_offset = base + 0.1 * torch.randn((2, 4, 1, 1), generator=g)
    assert torch.equal(noise.sample_noise(_opt(noise_offset=0.1), LATENTS, _gen(), "cpu"), with_offset)
    n = noise.sample_noise(_opt(), LATENTS, _gen(), "cpu")
    assert noise.input_noise(_opt(), LATENTS, n, _gen()) is n  # no input perturbation drawn
    assert noise.timestep_range(_opt()) == {}


def test_multires_noise_changes_the_noise_with_the_same_seed_and_normalises_it():
    plain = noise.sample_noise(_opt(), LATENTS, _gen(), "cpu")
    multi = noise.sample_noise(_opt(multires_noise_iterations=6, multires_noise_discount=0.3), LATENTS, _gen(), "cpu")
    assert multi.shape == plain.shape and not torch.allclose(multi, plain)
    assert multi.std().item() == pytest.approx(1.0, abs=1e-5)  # divided by its std, as sd-scripts
    # the same seed gives the same multires noise; the first draw is still the plain noise
    again = noise.sample_noise(_opt(multires_noise_iterations=6, multires_noise_discount=0.3), LATENTS, _gen(), "cpu")
    assert torch.equal(multi, again)
    # discount 0: only the first octave (weight 0**0 = 1) is added
    g = _gen()
    base = torch.randn(LATENTS.shape, generator=g)
    r = float(torch.rand(1, generator=g).item()) * 2 + 2
    assert r >= 2
    octave = torch.randn(LATENTS.shape, generator=g)  # i = 0: the full size
    expected = base + octave
    got = noise.pyramid_noise(base.clone(), _gen_after(base), 1, 0.0)
    assert torch.allclose(got, expected / expected.std(), atol=1e-6)


def _gen_after(base) -> torch.Generator:
    """A generator where sample_noise's would be after drawing ``base``."""
    g = _gen()
    torch.randn(base.shape, generator=g)
    return g


def test_noise_offset_random_strength_and_adaptive_scale_follow_sd_scripts():
    g = _gen()
    base = torch.randn(LATENTS.shape, generator=g)
    strength = torch.rand(1, generator=g) * 0.1
    off = torch.randn((2, 4, 1, 1), generator=g)
    got = noise.sample_noise(_opt(noise_offset=0.1, noise_offset_random_strength=True), LATENTS, _gen(), "cpu")
    assert torch.allclose(got, base + strength * off)
    g = _gen()
    base = torch.randn(LATENTS.shape, generator=g)
    off = torch.randn((2, 4, 1, 1), generator=g)
    adaptive = torch.clamp(0.1 + 0.5 * LATENTS.mean(dim=(2, 3), keepdim=True).abs(), min=0)
    got = noise.sample_noise(_opt(noise_offset=0.1, adaptive_noise_scale=0.5), LATENTS, _gen(), "cpu")
    assert torch.allclose(got, base + adaptive * off)


def test_ip_noise_perturbs_the_input_only():
    n = noise.sample_noise(_opt(), LATENTS, _gen(), "cpu")
    g = _gen(5)
    extra = torch.randn(LATENTS.shape, generator=_gen(5))
    got = noise.input_noise(_opt(ip_noise_gamma=0.1), LATENTS, n, g)
    assert torch.allclose(got, n + 0.1 * extra)
    assert torch.equal(n, noise.sample_noise(_opt(), LATENTS, _gen(), "cpu"))  # the target's noise is untouched
    rnd = noise.input_noise(_opt(ip_noise_gamma=0.1, ip_noise_gamma_random_strength=True), LATENTS, n, _gen(5))
    assert not torch.allclose(rnd, got)


def test_min_and_max_timestep_bound_the_sampled_timesteps():
    from diffusers import DDPMScheduler

    from loratui.engine.families import get_family

    sched = DDPMScheduler(num_train_timesteps=1000)
    fam = get_family("sd1")
    lat = torch.zeros(512, 4, 2, 2)
    kw = noise.timestep_range(_opt(min_timestep=200, max_timestep=300))
    _, t = fam.noisy_input(sched, lat, torch.zeros_like(lat), _gen(), **kw)
    assert int(t.min()) >= 200 and int(t.max()) < 300 and len(set(t.tolist())) > 50
    _, t = fam.noisy_input(sched, lat, torch.zeros_like(lat), _gen(), min_timestep=500, max_timestep=500)
    assert set(t.tolist()) == {500}  # min = max: that timestep, as sd-scripts
    # unbounded: the same draws as before the option existed
    _, t0 = fam.noisy_input(sched, lat, torch.zeros_like(lat), _gen())
    assert torch.equal(t0, torch.randint(0, 1000, (512,), generator=_gen()).long())


def test_timestep_range_is_checked():
    with pytest.raises(ProfileError, match="min_timestep: 600 is above max_timestep 500"):
        profile_from_dict({"optimization": {"min_timestep": 600, "max_timestep": 500}})


# --------------------------------------------------------------------------- losses


def test_l2_is_the_mean_squared_error_and_l1_the_absolute_error():
    pred, target = torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[0.0, 4.0]]]])
    t = torch.tensor([10])
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000)
    assert losses.per_sample(_opt(), s, pred, target, t).tolist() == [2.5]  # (1 + 4) / 2
    assert losses.per_sample(_opt(loss_type="l1"), s, pred, target, t).tolist() == [1.5]


def test_huber_and_smooth_l1_equal_their_formulas_on_known_tensors():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000)
    pred = torch.tensor([[[[3.0, 0.5]]], [[[1.0, -1.0]]]])
    target = torch.zeros_like(pred)
    t = torch.tensor([0, 999])
    c = 0.1
    opt = _opt(loss_type="huber", huber_c=c, huber_schedule="constant")
    want = [sum(2 * c * (math.sqrt(d * d + c * c) - c) for d in row) / 2 for row in ([3.0, 0.5], [1.0, -1.0])]
    assert losses.per_sample(opt, s, pred, target, t).tolist() == pytest.approx(want)
    opt = _opt(loss_type="smooth_l1", huber_c=c, huber_schedule="constant")
    want = [sum(2 * (math.sqrt(d * d + c * c) - c) for d in row) / 2 for row in ([3.0, 0.5], [1.0, -1.0])]
    assert losses.per_sample(opt, s, pred, target, t).tolist() == pytest.approx(want)


def test_huber_schedules():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([0, 500, 999])
    const = losses.huber_c(_opt(huber_c=0.2, huber_scale=2.0, huber_schedule="constant"), s, t)
    assert const.tolist() == pytest.approx([0.4, 0.4, 0.4])
    exp = losses.huber_c(_opt(huber_c=0.2, huber_scale=2.0, huber_schedule="exponential"), s, t)
    assert exp.tolist() == pytest.approx([2.0 * 0.2 ** (k / 1000) for k in (0, 500, 999)], rel=1e-5)
    snr = losses.huber_c(_opt(huber_c=0.2, huber_schedule="snr"), s, t)
    ac = s.alphas_cumprod[t].double()
    want = (1 - 0.2) / (1 + ((1 - ac) / ac) ** 0.5) ** 2 + 0.2
    assert snr.tolist() == pytest.approx(want.tolist(), rel=1e-5)
    assert snr[0] > snr[1] > snr[2]  # larger c at low noise: closer to l2 there


def test_debiased_estimation_weights_by_one_over_sqrt_snr_capped_at_1000():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([0, 300, 999])
    ac = s.alphas_cumprod[t]
    snr = torch.clamp(ac / (1 - ac), max=1000)
    w = losses.debiased_weights(s, t)
    assert torch.allclose(w, 1 / torch.sqrt(snr))
    assert w[0].item() == pytest.approx(1 / math.sqrt(1000))
    loss = torch.ones(3)
    assert torch.equal(losses.weighted(_opt(), s, loss, t), loss)  # off: untouched
    assert torch.allclose(losses.weighted(_opt(debiased_estimation_loss=True), s, loss, t), w)


def test_masked_loss_ignores_masked_pixels():
    from diffusers import DDPMScheduler

    s = DDPMScheduler(num_train_timesteps=1000)
    target = torch.zeros(1, 4, 8, 8)
    pred = torch.zeros(1, 4, 8, 8)
    pred[..., :, 4:] = 5.0  # error only on the right half
    mask = torch.ones(1, 64, 64)
    mask[..., :, 32:] = 0  # the right half of the image is masked out (image 8x the latents)
    t = torch.tensor([10])
    assert losses.per_sample(_opt(), s, pred, target, t, mask).item() == 0.0
    assert losses.per_sample(_opt(), s, pred, target, t).item() > 0
    assert losses.resize_mask(mask, (8, 8)).shape == (1, 1, 8, 8)


# --------------------------------------------------------------------------- max-norm, dropout


class _Lin:
    def __init__(self, w):
        self.weight = torch.nn.Parameter(w)


@dataclass
class _Mod:
    down: _Lin
    up: _Lin
    scale: float


@dataclass
class _Net:
    modules: list


def test_max_norm_keeps_every_module_norm_within_the_limit_and_reports_keys_scaled():
    g = _gen(3)
    mods = [
        _Mod(_Lin(torch.randn(4, 32, generator=g) * 3), _Lin(torch.randn(16, 4, generator=g) * 3), 1.0),  # big
        _Mod(_Lin(torch.randn(4, 32, generator=g) * 0.01), _Lin(torch.randn(16, 4, generator=g) * 0.01), 0.5),  # small
        _Mod(_Lin(torch.randn(4, 8, 3, 3, generator=g) * 3), _Lin(torch.randn(8, 4, 1, 1, generator=g) * 3), 0.5),  # 3x3 conv
    ]
    small_before = (mods[1].down.weight.detach().clone(), mods[1].up.weight.detach().clone())
    figures = regularize.apply_max_norm(_Net(mods), 1.0)
    assert figures.keys_scaled == 2
    norms = [regularize.delta_weight(m.down.weight, m.up.weight, m.scale).norm().item() for m in mods]
    assert all(n <= 1.0 + 1e-5 for n in norms)
    assert norms[0] == pytest.approx(1.0, rel=1e-5) and norms[2] == pytest.approx(1.0, rel=1e-5)
    assert torch.equal(mods[1].down.weight, small_before[0]) and torch.equal(mods[1].up.weight, small_before[1])
    assert figures.max_norm == pytest.approx(1.0, rel=1e-5)
    assert figures.mean_norm == pytest.approx(sum(norms) / 3, rel=1e-5)
    # the 3x3 update is the composed convolution: the same as the conv of down then up
    x = torch.randn(1, 8, 6, 6, generator=g)
    m = mods[2]
    direct = torch.nn.functional.conv2d(torch.nn.functional.conv2d(x, m.down.weight), m.up.weight) * m.scale
    composed = torch.nn.functional.conv2d(x, regularize.delta_weight(m.down.weight, m.up.weight, m.scale))
    assert torch.allclose(direct, composed, atol=1e-4)


def test_network_dropout_only_in_a_forward_pass_that_records_gradients():
    down = torch.nn.Linear(8, 4, bias=False)
    mod = _Mod(down, None, 1.0)  # type: ignore[arg-type]
    handles = regularize.attach_dropout(_Net([mod]), 0.5)
    x = torch.ones(64, 8)
    with torch.no_grad():
        assert torch.equal(down(x), x @ down.weight.T)  # sampling: no dropout
    torch.manual_seed(0)
    y = down(x)
    assert (y == 0).any() and not torch.allclose(y, x @ down.weight.T)
    for h in handles:
        h.remove()
    assert regularize.attach_dropout(_Net([mod]), 0.0) == []


def test_rank_dropout_drops_whole_ranks_per_sample_and_scales_the_rest_as_sd_scripts():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4, bias=False)
    conv = torch.nn.Conv2d(8, 4, 1, bias=False)
    mods = [_Mod(lin, torch.nn.Linear(4, 8, bias=False), 1.0), _Mod(conv, torch.nn.Conv2d(4, 8, 1, bias=False), 1.0)]
    handles = regularize.attach_dropout(_Net(mods), 0.0, rank=0.25)
    for x, layer in ((torch.randn(256, 8), lin), (torch.randn(256, 5, 8), lin), (torch.randn(256, 8, 3, 3), conv)):
        with torch.no_grad():
            full = layer(x)
        y = layer(x)
        if x.ndim == 3:
            y, full = y.transpose(1, 2), full.transpose(1, 2)  # (batch, rank, tokens)
        y, full = y.reshape(256, 4, -1), full.reshape(256, 4, -1)
        # a rank is kept (× 1/(1-p)) or dropped for a whole sample: over its tokens / pixels alike
        dropped = (y == 0).all(-1)
        assert (dropped | torch.isclose(y, full / 0.75, atol=1e-5).all(-1)).all()
        kept = (~dropped).float()
        assert 0.15 < float(1 - kept.mean()) < 0.35  # about p of the ranks
    for h in handles:
        h.remove()


def test_module_dropout_skips_whole_modules_whose_weights_then_get_no_gradient():
    from types import SimpleNamespace

    torch.manual_seed(0)
    names = [f"lora_unet_m{i}" for i in range(60)] + ["lora_unet_qkv#0", "lora_unet_qkv#1", "lora_unet_qkv#2"]
    mods = [SimpleNamespace(name=n, down=torch.nn.Linear(8, 4, bias=False), up=torch.nn.Linear(4, 8, bias=False))
            for n in names]

    class Root(torch.nn.Module):  # the model holding them, as the U-Net holds its LoRA layers
        def __init__(self):
            super().__init__()
            self.parts = torch.nn.ModuleList([torch.nn.Sequential(m.down, m.up) for m in mods])

        def forward(self, x):
            return [part(x) for part in self.parts]

    root = Root()
    net = SimpleNamespace(modules=mods, unet=root, text_encoders=[])
    handles = regularize.attach_dropout(net, 0.0, module=0.5)
    x = torch.randn(2, 8)
    seen = set()
    for _ in range(8):
        for m in mods:
            m.down.weight.grad = m.up.weight.grad = None
        outs = root(x)
        skipped = {m.name for m, y in zip(mods, outs) if not y.abs().sum()}
        assert 10 < len(skipped) < 50  # about half
        assert len({n for n in skipped if "#" in n}) in (0, 3)  # a fused module's parts go together
        seen |= skipped
        sum(y.sum() for y in outs).backward()
        for m in mods:
            if m.name in skipped:  # no gradient at all: not a zero step for the optimizer
                assert m.down.weight.grad is None and m.up.weight.grad is None
            else:
                assert m.up.weight.grad.abs().sum() > 0
    assert len(seen) > 55  # redrawn every forward
    with torch.no_grad():  # sampling: every module applies
        assert all(y.abs().sum() > 0 for y in root(x))
    for h in handles:
        h.remove()


# --------------------------------------------------------------------------- long captions


def test_long_captions_are_encoded_in_75_token_chunks_as_sd_scripts(tiny_sd1_dir):
    from transformers import CLIPTokenizer

    from loratui.engine.families import get_family

    tok = CLIPTokenizer.from_pretrained(tiny_sd1_dir / "tokenizer")
    fam = get_family("sd1")
    caps = ["a " * 100, "short"]
    ids = chunked.tokenize(fam, [tok], caps, 150)[0]
    assert ids.shape == (4, 77)  # 2 captions × 2 chunks
    assert (ids[:, 0] == tok.bos_token_id).all() and (ids[:, -1] == tok.eos_token_id).all()
    assert torch.equal(chunked.tokenize(fam, [tok], caps, 75)[0], fam.tokenize([tok], caps)[0])
    hidden = torch.arange(4 * 77, dtype=torch.float32).reshape(4, 77, 1)
    merged = chunked.merge(hidden, 150)
    assert merged.shape == (2, 152, 1)
    # BOS of chunk 1, the 75 middle states of each chunk, the last state of the last chunk
    want = [0] + list(range(1, 76)) + list(range(78, 153)) + [153]
    assert merged[0, :, 0].tolist() == want


# --------------------------------------------------------------------------- learning rates


def test_sdxl_text_encoder_rates_reach_the_optimizer_groups(tiny_sdxl_dir, tmp_path):
    from loratui.engine.loading import load_components
    from loratui.engine.lora import LoRANetwork
    from loratui.engine.training.optim import param_groups

    p = profile_from_dict({
        "model": {"base_model": str(tiny_sdxl_dir)},
        "optimization": {"unet_lr": 1e-4, "text_encoder_lr": 5e-5, "learning_rate_te1": 2e-5, "learning_rate_te2": 3e-5},
    })
    comp = load_components(p.model)
    net = LoRANetwork.create(comp.unet, comp.text_encoders, comp.family, rank=2, alpha=1.0)
    groups = param_groups(p, net)
    lrs = [g["lr"] for g in groups]
    assert lrs == [1e-4, 2e-5, 3e-5]
    te1 = {id(q) for m in net.text_encoder_modules if m.component == "te1" for q in (m.down.weight, m.up.weight)}
    assert {id(q) for q in groups[1]["params"]} == te1 and te1
    assert sum(len(g["params"]) for g in groups) == len(net.parameters())
    only_te2 = p.model_copy(update={"optimization": p.optimization.model_copy(update={"learning_rate_te1": None})})
    assert [g["lr"] for g in param_groups(only_te2, net)] == [1e-4, 5e-5, 3e-5]
    plain = profile_from_dict({"model": {"base_model": str(tiny_sdxl_dir)}})
    assert len(param_groups(plain, net)) == 2  # one text-encoder group, as before


def test_custom_and_adafactor_schedulers():
    from transformers.optimization import Adafactor, AdafactorSchedule

    from loratui.engine.training.optim import make_scheduler
    from loratui.engine.training.paths import TrainingError

    w = torch.nn.Parameter(torch.zeros(2))
    p = profile_from_dict({"optimization": {"lr_scheduler_type": "CosineAnnealingLR", "lr_scheduler_args": "T_max=10 eta_min=0.0"}})
    sched = make_scheduler(p, torch.optim.SGD([w], lr=0.1), 100)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) and sched.T_max == 10
    p = profile_from_dict({"optimization": {"lr_scheduler_type": "torch.optim.lr_scheduler.StepLR", "lr_scheduler_args": "step_size=3"}})
    assert isinstance(make_scheduler(p, torch.optim.SGD([w], lr=0.1), 100), torch.optim.lr_scheduler.StepLR)
    p = profile_from_dict({"optimization": {"lr_scheduler_type": "NoSuchLR"}})
    with pytest.raises(TrainingError, match="lr_scheduler_type: 'NoSuchLR' is not a scheduler class"):
        make_scheduler(p, torch.optim.SGD([w], lr=0.1), 100)
    p = profile_from_dict({"optimization": {"optimizer": "Adafactor", "lr_scheduler": "adafactor"}})
    opt = Adafactor([w], lr=None, relative_step=True, scale_parameter=True, warmup_init=True)
    assert isinstance(make_scheduler(p, opt, 100), AdafactorSchedule)
    with pytest.raises(TrainingError, match="adafactor works with the Adafactor optimizer only"):
        make_scheduler(p, torch.optim.SGD([w], lr=0.1), 100)


def test_full_bf16_casts_the_lora_weights():
    from loratui.engine.training.precision import full_precision

    net = _Net([])
    ws = [torch.nn.Parameter(torch.zeros(3))]
    net.parameters = lambda: ws  # type: ignore[attr-defined]
    warnings: list[str] = []
    p = profile_from_dict({"optimization": {"mixed_precision": "bf16", "full_bf16": True}})
    full_precision(p, net, "no", warnings.append)  # a CPU: fp32, said
    assert ws[0].dtype == torch.float32 and "full_bf16" in warnings[0]
    full_precision(p, net, "bf16", warnings.append)
    assert ws[0].dtype == torch.bfloat16
    full_precision(Profile(), net, "fp16", warnings.append)  # off: nothing
    assert ws[0].dtype == torch.bfloat16 and len(warnings) == 1


def test_full_fp16_is_not_used_with_an_optimizer_that_makes_it_nan():
    """Prodigy's eps is 0 in fp16: 0/0 on a fresh LoRA's zero gradients. Its LoRA stays fp32."""
    from loratui.engine.training.precision import full_precision

    net = _Net([])
    ws = [torch.nn.Parameter(torch.zeros(3))]
    net.parameters = lambda: ws  # type: ignore[attr-defined]
    warnings: list[str] = []
    prodigy = profile_from_dict({"optimization": {"mixed_precision": "fp16", "full_fp16": True, "optimizer": "Prodigy",
                                                  "learning_rate": 1.0}})
    full_precision(prodigy, net, "fp16", warnings.append)
    assert ws[0].dtype == torch.float32 and "Prodigy turns fp16 LoRA weights into NaN" in warnings[0]
    full_precision(profile_from_dict({"optimization": {"mixed_precision": "fp16", "full_fp16": True}}), net, "fp16",
                   warnings.append)
    assert ws[0].dtype == torch.float16 and len(warnings) == 1


def test_max_norm_figures_reach_the_dashboard_status_line():
    from loratui.engine.events import StepEvent, event_from_dict, event_to_dict
    from loratui.engine.runstate import RunState
    from loratui.tui.widgets.panels import status_text

    ev = StepEvent(epoch=1, epochs=2, step=3, total_steps=10, loss=0.1, smoothed_loss=0.1, lr=1e-4, its=2.0,
                   elapsed=5.0, eta=3.0, keys_scaled=7, mean_norm=0.5, max_norm=1.0)
    assert event_from_dict(json.loads(json.dumps(event_to_dict(ev)))) == ev  # through the metrics file
    state = RunState()
    state.apply(ev)
    assert state.norms == (7, 0.5, 1.0)
    assert "max-norm 7 scaled, mean 0.5 max 1" in status_text(state, width=200).plain
    plain = RunState()
    plain.apply(StepEvent(epoch=1, epochs=2, step=3, total_steps=10, loss=0.1, smoothed_loss=0.1, lr=1e-4, its=2.0,
                          elapsed=5.0, eta=3.0))
    assert plain.norms is None and "max-norm" not in status_text(plain, width=200).plain
    old = {k: v for k, v in event_to_dict(ev).items() if k not in ("keys_scaled", "mean_norm", "max_norm")}
    assert event_from_dict(old).keys_scaled is None  # a metrics file from before reads back


def test_scheduler_args_reach_a_registry_scheduler():
    from loratui.engine.training.optim import make_scheduler
    from loratui.engine.training.paths import TrainingError

    w = torch.nn.Parameter(torch.zeros(2))
    p = profile_from_dict({"optimization": {"lr_scheduler": "polynomial", "lr_scheduler_power": 1.0, "lr_scheduler_args": "lr_end=0.05",
                                            "learning_rate": 0.1}})
    opt = torch.optim.SGD([w], lr=0.1)
    sched = make_scheduler(p, opt, 10)
    for _ in range(10):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.05)  # polynomial decay ends at lr_end
    plain = profile_from_dict({"optimization": {"lr_scheduler": "polynomial", "learning_rate": 0.1}})
    opt2 = torch.optim.SGD([w], lr=0.1)
    s2 = make_scheduler(plain, opt2, 10)
    for _ in range(10):
        opt2.step()
        s2.step()
    assert s2.get_last_lr()[0] == pytest.approx(1e-7)  # diffusers' default lr_end
    bad = profile_from_dict({"optimization": {"lr_scheduler": "cosine", "lr_scheduler_args": "nope=1"}})
    with pytest.raises(TrainingError, match="lr_scheduler_args: cosine refused them"):
        make_scheduler(bad, torch.optim.SGD([w], lr=0.1), 10)


def test_fp16_for_sd3_or_flux_is_said_to_overflow(monkeypatch):
    """A card without bf16 (T4, V100) falls back to fp16: fine for SD/SDXL, NaN for SD3/FLUX."""
    from loratui.engine.training.setup import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    bf16 = profile_from_dict({"optimization": {"mixed_precision": "bf16"}})
    said: list[str] = []
    assert resolve_precision(bf16, "cuda", said.append, "sdxl") == "fp16"
    assert said == ["optimization.mixed_precision: this GPU has no bf16; using fp16 with the grad scaler"]
    said.clear()
    assert resolve_precision(bf16, "cuda", said.append, "flux") == "fp16"
    assert len(said) == 1 and said[0].startswith("optimization.mixed_precision: this GPU has no bf16; FLUX.1 overflows in fp16")
    said.clear()
    fp16 = profile_from_dict({"optimization": {"mixed_precision": "fp16"}})
    assert resolve_precision(fp16, "cuda", said.append, "sd3") == "fp16" and "SD3 overflows in fp16" in said[0]
    said.clear()
    assert resolve_precision(fp16, "cuda", said.append, "sd1") == "fp16" and said == []
