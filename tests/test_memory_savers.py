"""fp8 base, block swap and CPU-offloaded checkpointing on a tiny SD 1.x U-Net
with LoRA (CPU): fp8 storage really used, the same outputs and gradients with
and without swapping, blocks really moved in and out."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ldm_convert  # noqa: E402

from loratui.engine.blockswap import BlockSwap, offload_checkpointing  # noqa: E402
from loratui.engine.events import Finished, LogEvent, WarningEvent  # noqa: E402
from loratui.engine.families import get_family  # noqa: E402
from loratui.engine.fp8 import apply_fp8  # noqa: E402
from loratui.engine.lora import LoRANetwork  # noqa: E402
from loratui.engine.train import run_training  # noqa: E402
from tiny_runs import tiny_profile  # noqa: E402

FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def base_unet(tiny_sd1_dir):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(tiny_sd1_dir), subfolder="unet").eval()


def _lora_unet(base_unet, seed=0):
    unet = copy.deepcopy(base_unet)
    torch.manual_seed(seed)
    net = LoRANetwork.create(unet, [], "sd1", rank=4, alpha=4.0, train_text_encoder=False)
    with torch.no_grad():  # non-zero up weights: gradients reach every layer
        for m in net.modules:
            m.up.weight.normal_(0, 0.02)
    return unet, net


def _inputs(unet, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, unet.config.in_channels, 8, 8, generator=g)
    hidden = torch.randn(2, 7, unet.config.cross_attention_dim, generator=g)
    return x, torch.tensor([10, 500]), hidden


def _step(unet, net):
    x, t, hidden = _inputs(unet)
    for p in net.parameters():
        p.grad = None
    out = unet(x, t, hidden).sample
    out.float().pow(2).mean().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def _frozen_layers(unet):
    return [m for m in unet.modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d) and not m.weight.requires_grad]


def test_fp8_base_stores_fp8_and_trains_the_lora(base_unet):
    unet, net = _lora_unet(base_unet)
    ref_out, _ = _step(unet, net)
    n = apply_fp8(unet, torch.float32)
    layers = _frozen_layers(unet)
    assert n == len(layers) > 20 and all(m.weight.dtype == FP8 for m in layers)
    assert all(p.dtype == torch.float32 for p in net.parameters())
    out, grads = _step(unet, net)
    assert torch.isfinite(out).all() and all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # fp8 rounding changes the output a little, not its meaning
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref_out.flatten(), dim=0) > 0.98
    before = [p.detach().clone() for p in net.parameters()]
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(m.weight.dtype == FP8 for m in layers)  # still fp8 after the step


def test_fp8_run_end_to_end_from_an_fp8_single_file(tiny_sd1_dir, tmp_path):
    from loratui.engine.loading import load_components

    single = ldm_convert.save_single_file(tiny_sd1_dir, "sd1", tmp_path / "tiny-sd1.safetensors")
    sd = load_file(str(single))
    fp8_keys = {k for k, v in sd.items() if k.startswith("model.diffusion_model.") and v.ndim >= 2 and k.endswith("weight")}
    save_file({k: (v.to(FP8) if k in fp8_keys else v) for k, v in sd.items()}, str(single))
    data = tmp_path / "images"
    from loratui.engine.synthetic import write_synthetic_dataset

    write_synthetic_dataset(data, {"2_toy": 4}, size=(64, 64))
    p = tiny_profile(single, data, tmp_path / "out", model__fp8_base=True, model__model_config_dir=str(tiny_sd1_dir),
                     optimization__max_train_epochs=1)
    comp = load_components(p.model)
    fp8_in_memory = [m for m in _frozen_layers(comp.unet) if m.weight.dtype == FP8]
    assert len(fp8_in_memory) > 20  # read as fp8, not upcast on the way in
    assert comp.unet.conv_norm_out.weight.dtype == torch.float32  # norms are upcast as usual

    events: list = []
    result = run_training(p, events.append)
    assert isinstance(result, Finished), result
    assert any("fp8 base:" in e.message for e in events if isinstance(e, LogEvent))
    lora = load_file(result.path)
    assert any(k.endswith("lora_up.weight") and v.abs().sum() > 0 for k, v in lora.items())  # it learned
    from safetensors import safe_open

    with safe_open(result.path, framework="pt") as f:
        assert f.metadata()["ss_fp8_base"] == "True"


@pytest.mark.parametrize(("n_swap", "checkpointing"), [(2, False), (5, False), (3, True)])
def test_block_swap_same_outputs_and_gradients(base_unet, n_swap, checkpointing):
    unet, net = _lora_unet(base_unet)
    if checkpointing:  # recomputed layers bring their block back in the backward pass
        net.enable_gradient_checkpointing()
    ref_out, ref_grads = _step(unet, net)
    blocks = get_family("sd1").swap_blocks(unet)
    assert len(blocks) == 5  # every down (2), mid and up (2) block of the tiny U-Net
    swapped = blocks[-n_swap:]
    swap = BlockSwap(swapped, device="cpu")
    frozen = [p for b in swapped for p in b.parameters() if not p.requires_grad]
    assert frozen and all(p.numel() == 0 for p in frozen)  # out of "the device" until used
    out, grads = _step(unet, net)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)
    assert swap.loads > n_swap  # brought in for the forward, and again for the backward
    assert len(swap.resident) <= 2
    out2, _ = _step(unet, net)  # and again next step
    torch.testing.assert_close(out2, ref_out, rtol=0, atol=0)


def test_block_swap_with_fp8(base_unet):
    unet, net = _lora_unet(base_unet)
    apply_fp8(unet, torch.float32)
    ref_out, ref_grads = _step(unet, net)
    BlockSwap(get_family("sd1").swap_blocks(unet)[2:], device="cpu")
    out, grads = _step(unet, net)
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


def test_cpu_offload_checkpointing_same_gradients_and_recomputes(base_unet):
    unet, net = _lora_unet(base_unet)
    ref_out, ref_grads = _step(unet, net)
    blocks = get_family("sd1").swap_blocks(unet)
    calls = []
    for b in blocks:  # a layer inside each block (the block's own hooks are outside the checkpoint)
        b.resnets[0].register_forward_hook(lambda m, a, o: calls.append(m))
    _step(unet, net)
    plain_calls = len(calls)
    assert offload_checkpointing(unet, blocks) == len(blocks)
    calls.clear()
    out, grads = _step(unet, net)
    torch.testing.assert_close(out, ref_out)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
    assert len(calls) > plain_calls  # blocks ran again in the backward pass: checkpointed


def test_block_swap_on_cpu_run_is_a_clear_no_op_and_too_many_refused(tiny_sd1_dir, tmp_path):
    from loratui.engine.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "images", {"1_toy": 2}, size=(64, 64))
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "out", optimization__blocks_to_swap=3,
                     optimization__max_train_epochs=1, optimization__max_train_steps=1)
    events: list = []
    result = run_training(p, events.append)
    assert isinstance(result, Finished), result
    assert any("blocks_to_swap" in e.message and "nothing is swapped" in e.message
               for e in events if isinstance(e, WarningEvent))
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "out2", optimization__blocks_to_swap=50)
    result = run_training(p, [].append)
    assert "blocks_to_swap" in str(result) and "at most 5" in str(result)


def test_setup_brings_parts_onto_the_device_in_turn_the_denoiser_last(tiny_sd1_dir, tmp_path, monkeypatch):
    """An fp8, cached run: fp8 is set up in main memory, the VAE and the text encoder
    visit the device for their caches, and only then does the denoiser move there --
    so a card never holds the whole unconverted denoiser, nor it beside T5-XXL."""
    from loratui.engine.events import Phase, PhaseChanged
    from loratui.engine.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "out", model__fp8_base=True, dataset__cache_latents="memory",
                     dataset__cache_text_encoder_outputs="memory", network__train_text_encoder=False,
                     optimization__max_train_epochs=1)
    events: list = []
    from loratui.engine.training import memory

    real = memory.place_for_training
    monkeypatch.setattr(memory, "place_for_training", lambda *a, **k: (events.append("placed"), real(*a, **k)))
    result = run_training(p, events.append)
    assert isinstance(result, Finished), result

    def first(pred) -> int:
        return next(i for i, e in enumerate(events) if pred(e))

    fp8 = first(lambda e: isinstance(e, LogEvent) and e.message.startswith("fp8 base:"))
    latents = first(lambda e: isinstance(e, PhaseChanged) and e.phase == Phase.CACHING_LATENTS and not e.detail)
    texts = first(lambda e: isinstance(e, LogEvent) and e.message.startswith("text-encoder outputs cached"))
    moved = first(lambda e: e == "placed")  # (on a GPU the dashboard says "Moving the model to cuda" here)
    training = first(lambda e: isinstance(e, PhaseChanged) and e.phase == Phase.TRAINING)
    assert fp8 < latents < texts < moved < training


@pytest.mark.parametrize("network_type", ["lora", "loha"])
def test_place_for_training_moves_the_denoiser_and_its_network_not_the_cached_parts(tiny_sd1_dir, network_type):
    from loratui.engine.loading import load_components
    from loratui.engine.training.memory import place_for_training
    from loratui.engine.training.setup import build_network

    p = tiny_profile(tiny_sd1_dir, tiny_sd1_dir, "/nonexistent", network__network_type=network_type,
                     network__train_text_encoder=False)  # (a cached text encoder is never trained)
    comp = load_components(p.model)
    network = build_network(p, comp, lambda e: None, lambda w: None)
    # "meta" stands for the training device: whatever is moved there is visibly there
    place_for_training(comp, network, "meta", text_cached=True, latents_cached=True)
    assert all(t.is_meta for t in comp.unet.parameters())
    assert network.parameters() and all(t.is_meta for t in network.parameters())
    assert not any(t.is_meta for te in comp.text_encoders for t in te.parameters())
    assert not any(t.is_meta for t in comp.vae.parameters())

    comp = load_components(p.model)
    network = build_network(p, comp, lambda e: None, lambda w: None)
    place_for_training(comp, network, "meta", text_cached=False, latents_cached=False)  # used at every step
    assert all(t.is_meta for m in (comp.unet, comp.vae, *comp.text_encoders) for t in m.parameters())


def test_block_swap_restore_puts_every_weight_back_and_removes_its_hooks(base_unet):
    unet, net = _lora_unet(base_unet)
    ref_out, ref_grads = _step(unet, net)
    blocks = get_family("sd1").swap_blocks(unet)[1:]
    before = {id(p): p.detach().clone() for b in blocks for p in b.parameters()}
    swap = BlockSwap(blocks, device="cpu")
    _step(unet, net)
    swap.restore()
    for b in blocks:
        assert "forward" not in vars(b) and not any(m._forward_pre_hooks for m in b.modules())
        for p in b.parameters():
            assert torch.equal(p.detach(), before[id(p)])
    loads = swap.loads
    out, grads = _step(unet, net)
    assert swap.loads == loads  # nothing is swapped any more
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)


def test_text_encoders_come_back_to_their_own_main_memory_tensors_after_a_visit(tiny_sd1_dir):
    """After caching, the text encoders get back the very tensors they had in main memory (views
    of the mapped file): no copy of T5-XXL's 9.5 GB comes back from the GPU."""
    from loratui.engine.loading import load_components
    from loratui.engine.schema import ModelSettings
    from loratui.engine.training.memory import Kept, to_device

    te = load_components(ModelSettings(base_model=str(tiny_sd1_dir))).text_encoders[0]
    before = {n: t.data_ptr() for n, t in te.state_dict().items()}  # weights and buffers
    kept = Kept([te])
    to_device(te, "meta")  # "meta" stands for the device
    assert all(t.is_meta for t in te.state_dict().values())
    kept.back()
    assert {n: t.data_ptr() for n, t in te.state_dict().items()} == before


def _storage_refs(swap):
    """Weak references to the storage of every copy of a swapped weight brought onto "the
    device" from now on (alive: something still holds that copy)."""
    from torch.multiprocessing.reductions import StorageWeakRef

    refs: list = []
    real = swap._load

    def load(i):
        fresh = i not in swap.resident
        real(i)
        if fresh:
            refs.extend((i, StorageWeakRef(p.data.untyped_storage())) for p in swap.params[i])
    swap._load = load
    return refs


def test_block_swap_keeps_no_copy_of_a_swapped_weight_for_the_backward_pass(base_unet):
    """Linear layers save ``weight.t()`` (a view) for backward; the hook must see the weight
    behind it, or every swapped block's copy stays on the device until the backward pass."""
    import gc

    unet, net = _lora_unet(base_unet)
    blocks = get_family("sd1").swap_blocks(unet)
    swap = BlockSwap(blocks, device="cpu")
    refs = _storage_refs(swap)
    x, t, hidden = _inputs(unet)
    out = unet(x, t, hidden).sample  # the graph, with everything it saved, is alive
    gc.collect()
    alive = {i for i, ref in refs if not ref.expired()}
    assert refs and alive <= set(swap.resident), (alive, set(swap.resident))
    out.float().pow(2).mean().backward()  # and the blocks come back for it
    assert all(p.grad is not None for p in net.parameters())


def test_block_swap_in_a_transformer_that_checkpoints_whole_blocks(tiny_flux_dir):
    """diffusers checkpoints each FLUX / SD3 block from outside (``checkpoint(block, …)``): the
    swap's hooks stand aside, so the checkpoint still recomputes, and the gradients are the same."""
    from diffusers import FluxTransformer2DModel

    def run(swap_it: bool):
        tr = FluxTransformer2DModel.from_pretrained(str(tiny_flux_dir), subfolder="transformer").train()
        tr.requires_grad_(False)
        tr.enable_gradient_checkpointing()
        blocks = get_family("flux").swap_blocks(tr)
        calls = []
        for b in blocks:
            next(m for m in b.modules() if isinstance(m, torch.nn.Linear)).register_forward_hook(lambda *a: calls.append(1))
        swap = BlockSwap(blocks, device="cpu") if swap_it else None
        refs = _storage_refs(swap) if swap_it else []
        c = tr.config
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 16, c.in_channels, generator=g, requires_grad=True)
        ids = torch.zeros(16, 3)
        out = tr(hidden_states=x, encoder_hidden_states=torch.randn(1, 8, c.joint_attention_dim, generator=g),
                 pooled_projections=torch.randn(1, c.pooled_projection_dim, generator=g), timestep=torch.tensor([0.5]),
                 img_ids=ids, txt_ids=torch.zeros(8, 3), guidance=torch.tensor([1.0]) if c.guidance_embeds else None,
                 return_dict=False)[0]
        forward_calls = len(calls)
        alive = ({i for i, ref in refs if not ref.expired()}, set(swap.resident) if swap_it else set())
        out.pow(2).mean().backward()
        return x.grad, forward_calls, len(calls) - forward_calls, alive, swap

    ref_grad, n_blocks, ref_recomputed, _, _ = run(False)
    grad, forward_calls, recomputed, alive, swap = run(True)
    assert forward_calls == n_blocks and recomputed == ref_recomputed == n_blocks  # every block ran again
    torch.testing.assert_close(grad, ref_grad)  # (the copies' alignment may change a summation order: 1e-9)
    kept, resident = alive  # after the forward pass: no copy held but the blocks still on the device
    assert kept <= resident and len(resident) <= 2 and swap.loads >= 2 * n_blocks, (alive, swap.loads)


def test_pinned_copies_are_packed_into_a_few_power_of_two_buffers():
    """torch rounds every pinned allocation up to a power of two: one per weight took ~1.7×
    FLUX's swapped RAM. Buffers of exactly a power of two, filled first-fit, waste little."""
    from loratui.engine.blockswap import chunk_layout, flat_copies

    # FLUX.1's 16 swapped blocks' weight sizes in bf16, roughly: linear1 / linear2 / qkv / mlp
    sizes = [132_120_576] * 20 + [75_497_472] * 24 + [18_874_368] * 120 + [6_144] * 300
    chunks, place = chunk_layout(sizes)
    assert all(c & (c - 1) == 0 for c in chunks) and len(chunks) <= 10
    assert sum(chunks) < 1.03 * sum(sizes)  # not 1.7×
    spans = sorted((c, off, off + n) for (c, off), n in zip(place, sizes))
    assert all(end <= chunks[c] and off % 512 == 0 for c, off, end in spans)
    assert all(a[0] != b[0] or a[2] <= b[1] for a, b in zip(spans, spans[1:]))  # no overlaps
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(3072, 33, generator=g).to(torch.bfloat16), torch.randn(7, generator=g),
               torch.randn(5, 3, 3, 3, generator=g).to(FP8), torch.randn((), generator=g),
               torch.randn(64, 64, generator=g).t()]  # not contiguous: copied contiguous
    chunks, place = chunk_layout([t.numel() * t.element_size() for t in tensors])
    buffers, copies = flat_copies(tensors, chunks, place, pin=False)
    for t, c in zip(tensors, copies):
        assert c.dtype == t.dtype and c.shape == t.shape and c.is_contiguous()
        assert torch.equal(c.reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8))


def test_fp8_base_leaves_a_frozen_lora_as_it_is(base_unet):
    """A LoRA file's modules kept but not trained (train_unet off) are frozen: still the LoRA,
    not base weights — never stored in float8."""
    unet, net = _lora_unet(base_unet)
    for p in net.parameters():
        p.requires_grad_(False)
    n = apply_fp8(unet, torch.float32)
    assert n == len([m for m in _frozen_layers(unet) if m.weight.dtype == FP8]) > 20
    assert all(p.dtype == torch.float32 for p in net.parameters())


def test_a_finished_run_gives_its_fp8_model_back(tiny_sd1_dir, tmp_path, monkeypatch):
    """An fp8 layer's bound forward makes a cycle: without a collection after the run, the
    model would stay in (GPU) memory while the app goes on."""
    import gc
    import weakref

    from loratui.engine import fp8
    from loratui.engine.synthetic import write_synthetic_dataset

    seen = []
    real = fp8.apply_fp8

    def apply(model, *a, **k):
        n = real(model, *a, **k)
        seen.extend(weakref.ref(m) for m in model.modules() if getattr(m, "loratui_compute_dtype", None) is not None)
        return n

    monkeypatch.setattr(fp8, "apply_fp8", apply)
    data = write_synthetic_dataset(tmp_path / "images", {"2_toy": 4}, size=(64, 64))
    p = tiny_profile(tiny_sd1_dir, data, tmp_path / "out", model__fp8_base=True, optimization__max_train_steps=2)
    gc.disable()  # only the run's own collection may free it
    try:
        result = run_training(p, lambda ev: None)
        assert isinstance(result, Finished), result
        assert seen and all(ref() is None for ref in seen)
    finally:
        gc.enable()


def test_a_scaled_fp8_unet_file_loads_as_its_real_weights(tiny_sd1_dir, tmp_path):
    """ComfyUI's scaled fp8 layout (``scaled_fp8`` + ``*.scale_weight``) for an SD U-Net: each
    weight is fp8(w / s) — read plainly it would be off by s (up to 448×)."""
    from loratui.engine.loading import load_components
    from loratui.engine.schema import ModelSettings

    single = ldm_convert.save_single_file(tiny_sd1_dir, "sd1", tmp_path / "tiny-sd1.safetensors")
    sd = load_file(str(single))
    out = {"model.diffusion_model.scaled_fp8": torch.zeros(2, dtype=FP8)}
    for k, v in sd.items():
        if k.startswith("model.diffusion_model.") and k.endswith(".weight") and v.ndim == 2 and v.abs().max() > 0:
            s = v.float().abs().max() / 448
            out[k] = (v.float() / s).to(FP8)
            out[k[: -len(".weight")] + ".scale_weight"] = s.reshape(())
        else:
            out[k] = v
    scaled = tmp_path / "tiny-sd1-fp8-scaled.safetensors"
    save_file(out, str(scaled))
    ms = dict(model_config_dir=str(tiny_sd1_dir))
    ref = load_components(ModelSettings(base_model=str(single), **ms)).unet.state_dict()
    got = load_components(ModelSettings(base_model=str(scaled), **ms)).unet.state_dict()
    q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert got[q].abs().max() < 2 * ref[q].abs().max()  # not fp8(w / s) read as w
    for k in ref:
        torch.testing.assert_close(got[k].float(), ref[k].float(), atol=0.02 * ref[k].abs().max().item() + 1e-6, rtol=0.1)
