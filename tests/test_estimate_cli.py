"""`loratui check --gpu/--vram` and `loratui fit` on a tiny model."""

from __future__ import annotations

import pytest

from loratui.engine.cli import run_command
from loratui.engine.estimate.devices import find_device


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CACHE_DIR", str(tmp_path / "cache"))


def test_cards_are_found_by_the_names_people_and_nvml_use():
    assert find_device("RTX 4090").name == "RTX 4090"
    assert find_device("NVIDIA GeForce RTX 4090").name == "RTX 4090"
    assert find_device("NVIDIA H100 80GB HBM3").name == "H100"
    assert find_device("NVIDIA A100-SXM4-40GB").name == "A100 40GB"
    assert find_device("a100").name == "A100 80GB"
    assert find_device("Tesla T4").bf16 is False
    assert find_device("NVIDIA A10G").name == "A10G" and find_device("NVIDIA A10").name == "A10"
    assert find_device("GTX 9") is None and find_device("") is None


PROFILE = """# my profile: comments stay
[model]
base_model = "{model}"   # the tiny model
[dataset]
train_data_dir = "{data}"
resolution = 256
enable_bucket = false
cache_latents = "off"
[optimization]
train_batch_size = 2
gradient_checkpointing = false
mixed_precision = "bf16"
max_train_epochs = 1
[output]
output_dir = "{out}"
output_name = "x"
"""


def _write(tmp_path, tiny_sd1_dir, synthetic_dataset):
    path = tmp_path / "mine.toml"
    path.write_text(PROFILE.format(model=tiny_sd1_dir, data=synthetic_dataset, out=tmp_path / "out"))
    return path


def test_check_prints_the_estimate_for_a_card_and_fit_writes_a_profile_that_fits(
        tmp_path, tiny_sd1_dir, synthetic_dataset, capsys):
    from loratui.engine.estimate import estimate
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.schema import load_profile

    path = _write(tmp_path, tiny_sd1_dir, synthetic_dataset)
    assert run_command(["check", str(path), "--gpu", "RTX 4090"]) == 0
    out = capsys.readouterr().out
    assert "estimate for RTX 4090 (24 GB), bf16:" in out
    assert "est. VRAM  ~" in out and "of 24 GB fits ✓" in out
    assert "activations, batch 2" in out and "CUDA context" in out
    assert "est. time  ~" in out and "(RTX 4090)" in out
    # the precision the run would use there: a T4 has no bf16; "no" is fp32
    assert run_command(["check", str(path), "--gpu", "T4"]) == 0
    assert "estimate for T4 (16 GB), fp16:" in capsys.readouterr().out
    assert run_command(["check", str(path), "--gpu", "T4", "--set", "optimization.mixed_precision=no"]) == 0
    assert "estimate for T4 (16 GB), fp32 (mixed precision no):" in capsys.readouterr().out

    # a card between the figures with and without checkpointing: that one change makes it fit
    from loratui.engine.estimate.fit import apply

    profile = load_profile(path)
    off = estimate(profile, vram_device(24)).vram.total
    on = estimate(apply(profile, [("optimization.gradient_checkpointing", True)]), vram_device(24)).vram.total
    assert on < off
    gb = (on + off) / 2 / 2**30
    assert run_command(["check", str(path), "--vram", f"{gb:.3f}"]) == 0
    out = capsys.readouterr().out
    assert "✗ needs ~" in out and "to fit, change (in this order):" in out
    assert "optimization.gradient_checkpointing false → true" in out

    fitted = tmp_path / "fitted.toml"
    assert run_command(["fit", str(path), "--vram", f"{gb:.3f}", "-o", str(fitted)]) == 0
    assert "wrote" in capsys.readouterr().out
    text = fitted.read_text()
    assert "# my profile: comments stay" in text and "# the tiny model" in text
    new = load_profile(fitted)
    assert new.optimization.gradient_checkpointing is True
    assert estimate(new, vram_device(gb)).fits
    assert path.read_text() == PROFILE.format(model=tiny_sd1_dir, data=synthetic_dataset, out=tmp_path / "out")


def test_fit_never_overwrites_its_input_and_names_unknown_cards(tmp_path, tiny_sd1_dir, synthetic_dataset, capsys):
    path = _write(tmp_path, tiny_sd1_dir, synthetic_dataset)
    before = path.read_text()
    assert run_command(["fit", str(path), "--vram", "8", "-o", str(path)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert path.read_text() == before
    assert run_command(["check", str(path), "--gpu", "GTX 9"]) == 2
    err = capsys.readouterr().err
    assert "--gpu 'GTX 9': not a card loratui knows" in err and "RTX 4090" in err
    # too small for any change: nothing written
    out = tmp_path / "small.toml"
    assert run_command(["fit", str(path), "--vram", "0.1", "-o", str(out)]) == 1
    assert "nothing written" in capsys.readouterr().err and not out.exists()


def test_fit_names_what_is_wrong_with_the_base_model(tmp_path, capsys):
    """A bundled FLUX profile whose transformer file is not there yet: fit says which file, and
    fits the profile as FLUX.1-dev's shape (model.family says what it is); with the family left
    to auto-detection there is nothing to count."""
    from loratui.engine.userdirs import bundled_profiles_dir

    out, missing = tmp_path / "f8.toml", tmp_path / "flux1-dev.safetensors"
    args = ["fit", str(bundled_profiles_dir() / "flux-dev-24gb.toml"), "--vram", "8", "-o", str(out),
            "--set", f"model.base_model={missing}"]
    assert run_command(args) == 0
    cap = capsys.readouterr()
    assert f"error    model.base_model: {missing} does not exist" in cap.err
    assert f"note     {missing} is not here yet: counted as FLUX.1-dev" in cap.out
    assert "change   optimization.blocks_to_swap" in cap.out and out.exists()
    out.unlink()
    assert run_command([*args, "--set", "model.family=auto"]) == 1
    err = capsys.readouterr().err
    assert f"error    model.base_model: {missing} does not exist" in err
    assert err.rstrip().endswith("no estimate: the base model has problems (see above)") and not out.exists()


@pytest.mark.parametrize("name, shape, other", [("sd35-medium-16gb", "SD3.5 medium", "sd3.5_large.safetensors"),
                                               ("flux-dev-12gb", "FLUX.1-dev", None)])
def test_check_counts_a_model_not_downloaded_yet_as_its_familys_shape(name, shape, other, tmp_path, capsys):
    """`check` on a bundled profile before its model is downloaded: the estimate is counted as
    the shape the family's bundled configs (for SD3: the one the file name says) give — the same
    figures as the file itself once it is there (SD3.5 medium: its header)."""
    from loratui.engine.estimate import estimate
    from loratui.engine.models import inspect_model
    from loratui.engine.schema import load_profile
    from loratui.engine.training.prepare import prepare_run
    from loratui.engine.estimate.cli import estimate_for
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.userdirs import bundled_profiles_dir

    src = bundled_profiles_dir() / f"{name}.toml"
    assert run_command(["check", str(src), "--vram", "24"]) == 1  # (its folders are not here either)
    out = capsys.readouterr().out
    base = load_profile(src).model.base_model
    assert f"estimate for 24 GB card (24 GB), bf16:\n  note: {base} is not here yet: counted as {shape}, " in out
    assert "est. VRAM  ~" in out and "estimate —" not in out
    assert "\n  transformer weights (in RAM)  " in out.split("est. RAM")[1]  # what the RAM figure holds
    prepared = prepare_run(load_profile(src), overwrite=True)
    est, why = estimate_for(prepared, vram_device(24))
    assert why is None and est.notes
    if name.startswith("sd35-medium"):
        from flow_files import sd35_medium_header_file

        from loratui.engine.schema.model_settings import ModelSettings

        real = sd35_medium_header_file(tmp_path / "sd3.5_medium.safetensors")
        info = inspect_model(ModelSettings(base_model=str(real), family="sd3"))
        there = estimate(load_profile(src), vram_device(24), info, prepared.plan, 0)
        assert est.vram.total == there.vram.total  # the name gave the shape the header gives
        # another name of the same family counts as what it says (large here): larger
        p_large = load_profile(src, [f"model.base_model=/models/{other}"])
        large, _ = estimate_for(prepare_run(p_large, overwrite=True), vram_device(24))
        assert large.vram.terms["transformer weights"] > 2 * est.vram.terms["transformer weights"]


def test_text_encoders_caching_first_is_the_peak_where_they_fit_the_card_whole():
    """SD3.5 medium caches T5-XXL + CLIP-G + CLIP-L (~11 GB in bf16) before its 4 GB transformer
    comes: on a 16 GB card that is the run's peak; on 12 GB they do not fit whole, their layers
    visit the card in turn (training.memory.encoders_onto) and the step is the peak."""
    from loratui.engine.estimate.cli import estimate_for
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.estimate.resources import te_caching_peak
    from loratui.engine.schema import load_profile
    from loratui.engine.training.prepare import prepare_run
    from loratui.engine.userdirs import bundled_profiles_dir

    prepared = prepare_run(load_profile(bundled_profiles_dir() / "sd35-medium-16gb.toml"), overwrite=True)
    on16, _ = estimate_for(prepared, vram_device(16))
    on12, _ = estimate_for(prepared, vram_device(12))
    term = "text encoders caching (first)"
    peak = te_caching_peak(prepared.profile, on16.shape, on16.counted)
    assert 11e9 < peak < 14e9
    assert on16.vram.total == peak and on16.vram.terms[term] > 4e9
    assert term not in on12.vram.terms and on12.vram.total < 8e9 and on12.vram.fits
    trained = prepare_run(load_profile(bundled_profiles_dir() / "sd35-medium-16gb.toml",
                                       ["network.train_text_encoder=true"]), overwrite=True)
    est, _ = estimate_for(trained, vram_device(16))
    assert term not in est.vram.terms  # no cache: the encoders are beside the transformer, counted as such


def test_ram_counts_what_a_run_converts_not_the_mapped_file():
    """A .safetensors file is mapped, not read (bench/load_ram.py: loading a bf16 FLUX
    transformer costs 0.014 of the file): RAM counts only what the run converts."""
    from types import SimpleNamespace

    from loratui.engine.estimate.cli import estimate_for
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.estimate.resources import ram_figure
    from loratui.engine.schema import load_profile
    from loratui.engine.training.prepare import prepare_run
    from loratui.engine.userdirs import bundled_profiles_dir

    src = bundled_profiles_dir() / "flux-dev-12gb.toml"
    est, _ = estimate_for(prepare_run(load_profile(src), overwrite=True), vram_device(12))
    params = est.counted.params["unet"]["count"]
    den = "transformer weights (in RAM)"

    def ram(dtype, fmt="safetensors", **settings):
        p = load_profile(src, [f"{k.replace('__', '.')}={v}" for k, v in settings.items()])
        return ram_figure(p, est.shape, est.counted, SimpleNamespace(format=fmt, dtype=dtype, size_bytes=24e9), 0).terms

    assert ram("bf16")[den] == params  # fp8 base from a bf16 file: its fp8 copy (1 byte a weight)
    assert 0.3 * params < ram("fp8")[den] < 0.5 * params  # an fp8 file read as fp8: views; the 16 swapped blocks pinned
    assert ram("fp8", optimization__blocks_to_swap=0)[den] == 0
    plain = ram("bf16", model__fp8_base="false", optimization__blocks_to_swap=0)
    assert plain[den] == 0 and "checkpoint read whole (loading)" not in plain  # the run's dtype: the file's views
    assert ram("bf16", fmt="ckpt")["checkpoint read whole (loading)"] == 24e9
    assert plain["text encoder weights (in RAM)"] > 9e9  # split files (t5xxl_fp16): converted to bf16


def test_ram_counts_a_separate_text_encoder_file_by_its_own_dtype(tmp_path):
    """model.t5xxl read from its header: a bf16 file stays mapped in a bf16 run, an fp16 one is
    converted whole, an fp8 one (t5xxl_fp8_e4m3fn) keeps its Linear weights as views and
    converts the embedding and T5's keep-in-fp32 wo."""
    import math
    from types import SimpleNamespace

    from flow_files import sparse_safetensors, t5xxl_shapes
    from loratui.engine.estimate.cli import estimate_for
    from loratui.engine.estimate.devices import vram_device
    from loratui.engine.estimate.resources import ram_figure
    from loratui.engine.schema import load_profile
    from loratui.engine.training.prepare import prepare_run
    from loratui.engine.userdirs import bundled_profiles_dir

    src = bundled_profiles_dir() / "flux-dev-12gb.toml"
    est, _ = estimate_for(prepare_run(load_profile(src), overwrite=True), vram_device(12))
    shapes = t5xxl_shapes()
    clip_l = sparse_safetensors(tmp_path / "clip_l.safetensors", {"text_model.embeddings.token_embedding.weight": (49408, 768)})
    main = SimpleNamespace(format="safetensors", dtype="bf16", size_bytes=24e9)

    def te_ram(dtype):
        t5 = sparse_safetensors(tmp_path / f"t5xxl_{dtype}.safetensors", shapes, dtype)
        p = load_profile(src, [f"model.t5xxl={t5}", f"model.clip_l={clip_l}"])
        return ram_figure(p, est.shape, est.counted, main, 0).terms.get("text encoder weights (in RAM)", 0)

    everything = 2 * sum(math.prod(s) for s in shapes.values())
    assert everything > 9e9
    assert te_ram("BF16") == 0  # the run's dtype, CLIP-L's bf16 file too: views of the files
    assert te_ram("F16") == everything  # converted to bf16 whole
    kept = 2 * sum(math.prod(s) for k, s in shapes.items() if len(s) == 1 or "shared" in k or ".wo." in k
                   or "relative_attention_bias" in k)
    assert abs(te_ram("F8_E4M3") - kept) < 1e6 and 2e9 < kept < 2.6e9  # embedding + wo: ~2.3 GB, not 9.5

    # an all-in-one fp8 file (ComfyUI's flux1-dev-fp8): its text encoders by the same rule, from its header
    t5_in = {f"text_encoders.t5xxl.transformer.{k}": v for k, v in shapes.items()}
    whole = sparse_safetensors(tmp_path / "flux1-dev-fp8.safetensors", {
        **t5_in, "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "double_blocks.0.img_attn.qkv.weight": (9216, 3072)}, "F8_E4M3")
    p = load_profile(src, ["model.t5xxl=", "model.clip_l="])
    aio = SimpleNamespace(format="safetensors", kind="file", path=whole, dtype="fp8", size_bytes=whole.stat().st_size)
    in_ram = ram_figure(p, est.shape, est.counted, aio, 0).terms["text encoder weights (in RAM)"]
    assert abs(in_ram - kept - 2 * 49408 * 768) < 1e6
