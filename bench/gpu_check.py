"""One GPU run, one table: every CUDA-only path once, MFU, peak VRAM of the
low-VRAM settings, engine overhead against a minimal loop — with targets.

Full-size SD 1.5, SDXL and FLUX.1-dev are built with random weights on the GPU from
the bundled configs (engine/configs): nothing is downloaded. Under 7 minutes on
one H100/H200 (rows past ``--budget`` seconds are reported as skipped).

    python bench/gpu_check.py [--budget 420] [--json out.json]
    python bench/gpu_check.py --dry-run     # the same code, tiny models, CPU, seconds

On the GPU machines (no network), install the wheels bench/gpu_wheels.sh fetched (its
header has the command). Each row is printed as it is measured, and with ``--json`` (or
``$OUT`` set: ``$OUT/gpu_check.json``) the file is rewritten after each row: a run cut off
by a time limit keeps what it measured. Every row is skipped once ``--budget`` is spent,
and the long ones (FLUX, torch.compile: their cost is known) when they would end past it;
a package the machine lacks makes its rows "n/a", with the reason.

Exit status 0 when no row failed or broke.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _importable_loratui() -> None:
    """Where loratui is not installed (a GPU machine with a copy of the tree), a
    folder of links maps loratui.engine, .tui, ... onto this checkout."""
    try:
        import loratui.engine  # noqa: F401
    except ImportError:
        root = Path(__file__).resolve().parent.parent
        pkg = Path(tempfile.mkdtemp(prefix="loratui-pkg-")) / "loratui"
        pkg.mkdir()
        for part in ("engine", "tui", "screens", "profiles"):
            (pkg / part).symlink_to(root / part)
        sys.path.insert(0, str(pkg.parent))

# (name, target) of every row, in the order printed; the dry-run test checks them all
ROWS = [
    ("fp16 + grad scaler", "runs"),
    ("bf16", "runs"),
    ("AdamW8bit", "runs"),
    ("Lion8bit", "runs"),
    ("fp8 base", "runs"),
    ("text-encoder output cache", "runs"),
    ("NVML panel figures", "all read"),
    ("WD14 tagger on onnxruntime CUDA", "CUDA provider"),
    ("host syncs in steady-state steps", "0"),
    # sd-scripts' FLUX table (fp8 base): 24 GB fits batch 2, 12 GB needs 16 blocks swapped — aim for less
    ("FLUX.1-dev 1024² b1 fp8 base: peak VRAM", "≤ 20 GB"),
    ("FLUX.1-dev 1024² b1 fp8 base, blocks_to_swap 16: peak VRAM", "≤ 11 GB"),
    ("MFU SD1.5 512² batch 1", "≥ 15 %"),
    ("MFU SD1.5 512² batch 8", "≥ 40 %"),
    ("MFU SDXL 1024² batch 1", "≥ 40 %"),
    ("MFU SDXL 1024² batch 4", "—"),
    ("peak VRAM SD1.5 512² b1, low-VRAM profile", "≤ 3 GB"),
    ("peak VRAM SDXL 1024² b1, low-VRAM profile", "≤ 6 GB"),
    ("estimated VRAM SD1.5 512² b1, low-VRAM profile", "—"),
    ("estimated VRAM SDXL 1024² b1, low-VRAM profile", "—"),
    ("engine ÷ minimal diffusers+peft loop, SD1.5 512² b1", "≤ 1.02"),
    ("MFU SD1.5 512² batch 1, torch.compile", "≥ 15 %"),
    ("MFU SD1.5 512² batch 8, torch.compile", "≥ 40 %"),
    ("MFU SDXL 1024² batch 1, torch.compile", "≥ 40 %"),
    ("MFU SDXL 1024² batch 4, torch.compile", "—"),
]
TARGETS = dict(ROWS)

# dense bf16 tensor-core peak, TFLOP/s, by a part of the NVML name (first match wins)
PEAK_BF16_TFLOPS = [
    ("GH200", 989.0), ("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0),
    ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0),
    ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0), ("RTX 6000 Ada", 364.0), ("RTX A6000", 155.0),
    ("RTX 5090", 209.0), ("RTX 4090", 165.0), ("RTX 4080", 97.0), ("RTX 3090", 71.0), ("RTX 3080", 59.0),
]

FLUX_GUIDE = {  # profiles/flux-dev-12gb.toml's settings at batch 1 (the guide's: fp8 base, cached text encoders)
    "model__fp8_base": True, "model__timestep_sampling": "shift", "model__model_prediction_type": "raw",
    "model__guidance_scale": 1.0, "model__t5xxl_max_token_length": 512,
    "dataset__cache_text_encoder_outputs": "memory", "network__train_text_encoder": False,
    "network__network_dim": 16, "network__network_alpha": 16.0, "optimization__optimizer": "AdamW8bit",
    "optimization__gradient_checkpointing": True, "optimization__learning_rate": 1e-4,
    "optimization__max_bad_steps": 1000,  # random weights: the memory and speed are measured all the same
}

LOW_VRAM = {  # profiles/low-vram-8gb.toml's memory settings, at batch 1 (SDXL has no bundled low-VRAM profile)
    "optimization__optimizer": "AdamW8bit", "optimization__gradient_checkpointing": True,
    "optimization__mixed_precision": "fp16", "network__train_text_encoder": False, "network__network_dim": 8,
    "network__network_alpha": 4.0, "optimization__gradient_accumulation_steps": 1,
    "optimization__max_bad_steps": 1000,  # random weights in fp16 may overflow: the memory is measured all the same
}


@dataclass
class Row:
    name: str
    value: str
    target: str
    result: str  # pass | FAIL | n/a | info | skipped | error
    note: str = ""
    seconds: float = 0.0  # how long the row took


@dataclass
class RunOut:
    finished: bool
    message: str
    step_times: list[float] = field(default_factory=list)  # seconds between steps
    losses: list[float] = field(default_factory=list)
    peak_bytes: int = 0  # max_memory_allocated during the training phase (CUDA)
    setup_peak_bytes: int = 0  # ... from the model in main memory to the training phase: caches, moving in
    logs: list[str] = field(default_factory=list)
    syncs: int = 0

    def step_time(self, warmup: int) -> float:
        d = self.step_times[warmup:] or self.step_times
        return statistics.median(d) if d else math.nan


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


EIGHT_BIT = "bitsandbytes"  # AdamW8bit / Lion8bit


class Check:
    def __init__(self, dry: bool, budget: float, steps: int, on_row=lambda row: None):
        import torch

        self.dry, self.budget, self.steps = dry, budget if not dry else math.inf, steps
        self.on_row = on_row  # called with each row as it is measured
        self.warmup = 1 if dry else 3  # steps left out of the timing
        self.cuda = torch.cuda.is_available() and not dry
        self.device = "cuda" if self.cuda else "cpu"
        self.tmp = Path(tempfile.mkdtemp(prefix="loratui-gpucheck-"))
        self.t0 = time.perf_counter()
        self.rows: list[Row] = []
        self.models: dict[str, Path] = {}
        self.runs: dict = {}
        self.data: dict[int, Path] = {}
        self.gpu_name = torch.cuda.get_device_name() if self.cuda else "cpu"

    # ------------------------------------------------------------------ plumbing

    def row(self, name: str, fn, *, cuda_only: bool = False, cost: float = 0.0) -> None:
        """Measure one row; ``cost``: about the seconds it takes (skipped when it would end past the budget)."""
        self._add(self._measure(name, fn, cuda_only, cost))

    def _add(self, row: Row) -> None:
        self.rows.append(row)
        self.on_row(row)

    def _measure(self, name: str, fn, cuda_only: bool, cost: float) -> Row:
        target = TARGETS[name]
        if cuda_only and not self.cuda:
            return Row(name, "—", target, "n/a", "needs CUDA" + (" (dry run)" if self.dry else ""))
        elapsed = time.perf_counter() - self.t0
        if elapsed + cost > self.budget:
            why = f"past the {self.budget:.0f} s budget" if elapsed > self.budget else \
                f"~{cost:.0f} s more would pass the {self.budget:.0f} s budget ({elapsed:.0f} s gone)"
            return Row(name, "—", target, "skipped", why)
        t = time.perf_counter()
        try:
            value, ok, note = fn()
        except Exception as exc:  # noqa: BLE001 - one broken row must not hide the others
            note = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:160]
            return Row(name, "—", target, "error", note, time.perf_counter() - t)
        result = {True: "pass", False: "FAIL", None: "info"}[ok] if not isinstance(ok, str) else ok
        return Row(name, value, target, result, note, time.perf_counter() - t)

    def model(self, fam: str) -> Path:
        """A diffusers folder: tiny random weights (dry run), or the bundled configs
        with placeholder weight files (the loader is patched to random full-size weights)."""
        if fam not in self.models:
            from loratui.engine.tiny import save_tiny_pipeline

            d = self.tmp / f"model-{fam}"
            if self.dry:
                save_tiny_pipeline(d, {"sd15": "sd1"}.get(fam, fam))
            else:
                make_config_folder(fam, d)
            self.models[fam] = d
        return self.models[fam]

    def images(self, res: int) -> Path:
        res = 64 if self.dry else res
        if res not in self.data:
            from loratui.engine.synthetic import write_synthetic_dataset

            self.data[res] = write_synthetic_dataset(self.tmp / f"img{res}", {"1_toy": 8}, size=(res, res))
        return self.data[res]

    def train(self, fam: str, res: int, batch: int, steps: int, *, sync_window: range | None = None, **over) -> RunOut:
        key = (fam, res, batch, steps, sync_window, tuple(sorted(over.items())))
        if self.dry and key in self.runs:  # the dry run's batch-8 row is its batch-1 run: the same code
            return self.runs[key]
        self.runs[key] = self._train(fam, res, batch, steps, sync_window, over)
        return self.runs[key]

    def _train(self, fam: str, res: int, batch: int, steps: int, sync_window, over: dict) -> RunOut:
        from loratui.engine.events import Control, Failed, LogEvent, PhaseChanged, StepEvent
        from loratui.engine.schema import profile_from_dict
        from loratui.engine.train import run_training

        import torch

        d = {
            "model": {"base_model": str(self.model(fam))},
            "dataset": {"train_data_dir": str(self.images(res)), "resolution": 64 if self.dry else res,
                        "enable_bucket": False, "min_bucket_reso": 64, "cache_latents": "memory"},
            "network": {"network_dim": 8, "network_alpha": 8.0},
            "optimization": {"optimizer": "AdamW", "learning_rate": 1e-4, "text_encoder_lr": 1e-4,
                             "lr_scheduler": "constant", "max_train_epochs": 1000, "max_train_steps": steps,
                             "train_batch_size": batch, "mixed_precision": "bf16" if self.cuda else "no",
                             "max_grad_norm": 1.0},
            "output": {"output_dir": str(self.tmp / "out"), "output_name": "check", "save_every_n_epochs": 0},
        }
        for dotted, value in over.items():
            section, key = dotted.split("__")
            d.setdefault(section, {})[key] = value
        if d["optimization"]["optimizer"].endswith("8bit") and not has_package(EIGHT_BIT):
            d["optimization"]["optimizer"] = "AdamW"  # (a LoRA's optimizer state is megabytes either way)
        gc.collect()  # the rows before: freed now (an fp8 layer's bound forward is a cycle)
        if self.cuda:
            torch.cuda.empty_cache()
        out = RunOut(False, "")
        stamps: list[float] = []
        state = {"sync": False}

        def on_event(ev):
            if isinstance(ev, PhaseChanged) and ev.phase == "training" and self.cuda:
                torch.cuda.synchronize()
                out.setup_peak_bytes = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            elif isinstance(ev, PhaseChanged) and self.cuda and not state.get("loaded") and (
                    ev.phase == "caching_latents" or str(ev.detail).startswith("Moving the model")):
                # the model is in main memory now (the random weights were made on the GPU): from here on the
                # GPU holds what the run puts there -- the caches' encoders, then the denoiser
                state["loaded"] = True
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            elif isinstance(ev, StepEvent):
                stamps.append(time.perf_counter())
                out.losses.append(ev.loss)
                if sync_window is not None and self.cuda:
                    on = ev.step in sync_window
                    if on != state["sync"]:
                        torch.cuda.set_sync_debug_mode("warn" if on else "default")
                        state["sync"] = on
            elif isinstance(ev, LogEvent):
                out.logs.append(ev.message)

        with random_weights(fam, self.model(fam), enabled=not self.dry), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = run_training(profile_from_dict(d), on_event, Control(), overwrite=True)
        if self.cuda:
            torch.cuda.set_sync_debug_mode("default")
            out.peak_bytes = torch.cuda.max_memory_allocated()
        out.syncs = sum("synchroniz" in str(w.message) for w in caught)
        out.finished = not isinstance(result, Failed)
        out.message = getattr(result, "message", "") or type(result).__name__
        stamps = stamps[:-1]  # the last step's numbers arrive with the final flush, not a step later
        out.step_times = [b - a for a, b in zip(stamps, stamps[1:])]
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return out


def make_config_folder(fam: str, d: Path) -> None:
    """engine/configs/<fam> with a one-tensor placeholder weight file per model part
    (prepare_run's checks want weight files; the weights come from random_weights)."""
    import torch
    from safetensors.torch import save_file

    from loratui.engine.configs import __file__ as configs_init

    configs = Path(configs_init).parent
    shutil.copytree(configs / fam, d)
    for sub in d.iterdir():
        if sub.is_dir() and sub.name.startswith(("unet", "transformer", "vae", "text_encoder")):
            name = "model.safetensors" if sub.name.startswith("text") else "diffusion_pytorch_model.safetensors"
            save_file({"placeholder": torch.zeros(1)}, str(sub / name))
    if fam == "flux":  # FLUX.1's CLIP-L tokenizer is SD 1.5's; T5's does not ship (a tiny one: the ids are what count)
        from loratui.engine.tiny_flow import tiny_t5_tokenizer

        shutil.copytree(configs / "sd15" / "tokenizer", d / "tokenizer")
        tiny_t5_tokenizer(512).save_pretrained(d / "tokenizer_2")


@contextlib.contextmanager
def random_weights(fam: str, folder: Path, enabled: bool):
    """While active, the engine's model loader builds full-size models with random
    weights on the device (initialised there: seconds, no download, no disk)."""
    if not enabled:
        yield
        return
    import loratui.engine.loading as loading

    if fam == "flux":  # the family's own loader: its folder reader gives random parts
        import loratui.engine.flow_loading as flow

        real_parts = flow._load_pretrained
        flow._load_pretrained = lambda _fam, _info, _ms, dtype, _progress: build_random_flux(folder, "cuda", dtype)
        try:
            yield
        finally:
            flow._load_pretrained = real_parts
        return
    real = loading.load_components

    def load(ms, *, device="cpu", dtype=None, on_progress=None):
        import torch

        comp = build_random(fam, folder, "cuda", dtype)  # made on the GPU (fast), then where the run loads it
        for m in (comp.unet, comp.vae, *comp.text_encoders):
            torch.nn.Module.to(m, device=device)
        return comp

    loading.load_components = load
    try:
        yield
    finally:
        loading.load_components = real


def build_random_flux(folder: Path, device: str, dtype) -> dict:
    """Full-size FLUX.1-dev parts with random weights, made on ``device`` in ``dtype``
    (seconds; the loader casts, stores fp8 and moves them as it does a file's)."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype or torch.float32)
    try:
        with torch.device(device):
            tr = FluxTransformer2DModel.from_config(FluxTransformer2DModel.load_config(folder / "transformer"))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
            tes = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
                   T5EncoderModel(T5Config.from_pretrained(folder / "text_encoder_2"))]
    finally:
        torch.set_default_dtype(default)
    toks = [CLIPTokenizer.from_pretrained(folder / "tokenizer"), T5Tokenizer.from_pretrained(folder / "tokenizer_2")]
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return {"family": "flux", "unet": tr, "vae": vae, "text_encoders": tes, "tokenizers": toks, "scheduler_config": sched}


def build_random(fam: str, folder: Path, device: str, dtype):
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from loratui.engine.loading import Components

    family = "sd1" if fam == "sd15" else "sdxl"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
        tes = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        toks = [CLIPTokenizer.from_pretrained(folder / "tokenizer")]
        if family == "sdxl":
            tes.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
            toks.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))
    for m in (unet, vae, *tes):
        m.to(dtype=dtype).eval()
    sched = DDPMScheduler.from_config(DDPMScheduler.load_config(folder / "scheduler"))
    return Components(family, unet, vae, tes, toks, sched, "epsilon", vae.config.scaling_factor, None,
                      family == "sdxl", f"random weights from the {fam} configs")


# ---------------------------------------------------------------------- FLOPs (meta device)


def step_flops(fam: str, res: int, batch: int, folder: Path | None) -> float:
    """FLOPs of one LoRA training step on a frozen base: text encoder(s) forward,
    U-Net forward and backward (to its input), counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    if folder is None:
        folder = Path(__import__("loratui.engine.configs", fromlist=["x"]).__file__).parent / fam
    unet_cfg = UNet2DConditionModel.load_config(folder / "unet")
    te_names = ["text_encoder"] + (["text_encoder_2"] if (folder / "text_encoder_2").is_dir() else [])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_cfg).requires_grad_(False)
        tes = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / n)).requires_grad_(False) for n in te_names]
        h = w = res // 8
        x = torch.randn(batch, unet.config.in_channels, h, w, requires_grad=True)
        ids = torch.zeros(batch, 77, dtype=torch.long)
        t = torch.zeros(batch, dtype=torch.long)
        kwargs = {}
        if unet.config.addition_embed_type == "text_time":
            n_time = unet.config.addition_time_embed_dim * 6
            pooled = unet.config.projection_class_embeddings_input_dim - n_time
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled), "time_ids": torch.zeros(batch, 6)}
    with FlopCounterMode(display=False) as counter:
        hidden = torch.cat([te(ids).last_hidden_state for te in tes], dim=-1)
        hidden = hidden[..., : unet.config.cross_attention_dim] if hidden.shape[-1] != unet.config.cross_attention_dim else hidden
        out = unet(x, t, hidden, **kwargs).sample
        out.float().pow(2).mean().backward()
    return float(counter.get_total_flops())


def peak_tflops(name: str) -> float | None:
    for part, tf in PEAK_BF16_TFLOPS:
        if part.lower() in name.lower():
            return tf
    return None


# ---------------------------------------------------------------------- the rows


def _no_8bit() -> str:
    return "" if has_package(EIGHT_BIT) else f"; AdamW instead of AdamW8bit ({EIGHT_BIT} not installed)"


def has_setting(dotted: str):
    """The declaration of a setting, or None when this build has no such setting."""
    from loratui.engine.schema import settings

    return next((s for s in settings() if s.dotted == dotted), None)


def on_value(info):
    """The value that turns a setting on: True, or its first choice that is not off."""
    if info.type is bool or info.type == "bool":
        return True
    choices = [c for c in (getattr(info, "choices", None) or ()) if c not in ("off", "no", "none", False)]
    return "memory" if "memory" in choices else (choices[0] if choices else True)


def path_row(c: Check, over: dict):
    def fn():
        if str(over.get("optimization__optimizer", "")).endswith("8bit") and not has_package(EIGHT_BIT):
            return "—", "n/a", f"{EIGHT_BIT} is not installed here (bench/gpu_wheels.sh carries it)"
        r = c.train("sd15", 512, 1, 4, **{"optimization__max_bad_steps": 1000, **over})  # random weights may overflow
        finite = [x for x in r.losses if math.isfinite(x)]
        value = f"{len(r.losses)} steps, loss {finite[-1]:.4f}" if finite else r.message[:60]
        return value, r.finished and bool(finite), "" if r.finished else r.message.splitlines()[0][:120]
    return fn


def setting_row(c: Check, dotted: str, over: dict):
    info = has_setting(dotted)
    if info is None:
        return lambda: ("not built", "n/a", f"no {dotted} setting in this build")
    return path_row(c, {**over, dotted.replace(".", "__"): on_value(info)})


def nvml_row():
    from loratui.engine.gpu import default_monitor

    if not has_package("pynvml"):
        return "—", "n/a", "nvidia-ml-py is not installed here (bench/gpu_wheels.sh carries it)"
    mon = default_monitor()
    samples = mon.sample()
    if not samples:
        return "no GPU", False, mon.reason
    s = samples[0]
    figures = {"util": s.util, "mem": s.mem_used, "temp": s.temp, "power": s.power, "limit": s.power_limit}
    missing = [k for k, v in figures.items() if v is None]
    gb = lambda v: f"{v / 2**30:.1f}" if v is not None else "?"  # noqa: E731
    value = f"{s.short_name()}: {s.util} %, {gb(s.mem_used)}/{gb(s.mem_total)} GB, {s.temp} °C, {s.power} W"
    return value, not missing, ("missing: " + ", ".join(missing)) if missing else ""


def wd14_row(c: Check):
    def fn():
        if not has_package("onnx"):
            return "—", "n/a", "onnx is not installed here (the test tagger is built with it)"
        if c.cuda:
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                return "—", "n/a", "this onnxruntime has no CUDA provider (onnxruntime-gpu is not installed here)"
        from PIL import Image

        from loratui.engine.captioners import CaptionSettings
        from loratui.engine.captioners.tiny import save_tiny_wd14
        from loratui.engine.captioners.wd14 import WD14Tagger

        d = save_tiny_wd14(c.tmp / "wd14", size=32)
        tagger = WD14Tagger.load(CaptionSettings(tagger="wd14", model=str(d)))
        tags = tagger.caption([Image.new("RGB", (32, 32), (255, 0, 0))])[0]
        on_cuda = tagger.provider == "CUDAExecutionProvider"
        tagger.close()
        ok = on_cuda if c.cuda else "n/a"
        return f"{tagger.provider}, {len(tags)} tags", ok, "" if on_cuda else "onnxruntime-gpu needed for CUDA"
    return fn


def sync_row(c: Check):
    def fn():
        r = c.train("sd15", 512, 1, 12, sync_window=range(4, 10))
        return f"{r.syncs} in 6 steps", r.finished and r.syncs == 0, "torch.cuda.set_sync_debug_mode warnings"
    return fn


def mfu_row(c: Check, fam: str, res: int, batch: int, compiled: bool, store: dict):
    def fn():
        over = {"optimization__torch_compile": True, "optimization__dynamo_backend": "inductor"} if compiled else {}
        b = 1 if c.dry else batch  # the dry run: the same code, smaller
        r = c.train(fam, res, b, c.warmup + c.steps, **over)
        if not r.finished:
            return r.message[:60], False, r.message.splitlines()[0][:120]
        st = r.step_time(c.warmup)
        store[(fam, res, batch, compiled)] = st
        flops = step_flops(fam, 64, b, c.model(fam)) if c.dry else step_flops(fam, res, batch, None)
        peak = peak_tflops(c.gpu_name)
        comp = next((m for m in r.logs if m.startswith("torch.compile")), "")
        note = f"{flops / 1e12:.3g} TFLOP/step, {st * 1000:.0f} ms/step" + (f"; {comp.split(': ', 1)[-1]}" if comp else "")
        if not c.cuda or peak is None:
            return f"{flops / st / 1e12:.3g} TFLOP/s", "info" if c.cuda else "n/a", note + ("; card not in the peak table" if c.cuda else "")
        mfu = flops / st / (peak * 1e12)
        limit = TARGETS[next(n for n, _ in ROWS if n.startswith(f"MFU {label(fam)} {res}² batch {batch}"))]
        return f"{mfu * 100:.1f} %", _meets(mfu * 100, limit), note + f"; peak {peak:.0f} TFLOP/s"
    return fn


def label(fam: str) -> str:
    return "SD1.5" if fam == "sd15" else "SDXL"


def _meets(value: float, target: str):
    if target.startswith("≥"):
        return value >= float(target[1:].strip(" %GB"))
    if target.startswith("≤"):
        return value <= float(target[1:].strip(" %GB"))
    return None


def vram_row(c: Check, fam: str, res: int, store: dict):
    def fn():
        r = c.train(fam, res, 1, 4, **LOW_VRAM)
        if not r.finished:
            return r.message[:60], False, r.message.splitlines()[0][:120]
        store[fam] = r.peak_bytes
        gb = r.peak_bytes / 1e9
        note = "max_memory_allocated while training" + _no_8bit()
        return f"{gb:.2f} GB", _meets(gb, TARGETS[f"peak VRAM {label(fam)} {res}² b1, low-VRAM profile"]), note
    return fn


def estimate_row(c: Check, fam: str, res: int, measured: dict):
    def fn():
        try:
            import loratui.engine.estimate as est
        except ImportError:
            return "not built", "n/a", "no engine.estimate in this build"
        from loratui.engine.schema import profile_from_dict

        d = {"model": {"base_model": str(c.model(fam))}, "dataset": {"train_data_dir": str(c.images(res)), "resolution": res},
             "output": {"output_dir": str(c.tmp / "out"), "output_name": "check"}}
        for dotted, value in LOW_VRAM.items():
            section, key = dotted.split("__")
            d.setdefault(section, {})[key] = value
        value = call_estimator(est, profile_from_dict(d))
        got = measured.get(fam)
        note = f"measured {got / 1e9:.2f} GB" if got else "measured: —"
        return (f"{value / 1e9:.2f} GB" if isinstance(value, (int, float)) else str(value)[:60]), None, note
    return fn


def call_estimator(est, profile):
    """The estimator's VRAM figure in bytes, whatever its entry point is called."""
    for name in ("estimate", "estimate_vram", "vram_estimate", "estimate_profile"):
        fn = getattr(est, name, None)
        if callable(fn):
            out = fn(profile)
            break
    else:
        raise RuntimeError(f"engine.estimate has no estimate function ({', '.join(n for n in dir(est) if not n.startswith('_'))})")
    for _ in range(3):  # e.g. Estimate.vram (a Figure) .total (bytes)
        attr = next((a for a in ("vram_bytes", "peak_bytes", "vram", "total_bytes", "total", "peak", "bytes")
                     if hasattr(out, a)), None)
        if attr is None or isinstance(out, (int, float)):
            break
        out = getattr(out, attr)
    if isinstance(out, (int, float)):
        return out * 1e9 if out < 1000 else out  # GB or bytes
    return out


def overhead_row(c: Check, eng_times: dict):
    def fn():
        import torch

        from step_overhead import baseline_run, per_step

        fam, res = "sd15", 512
        steps = c.warmup + c.steps
        pipe = None
        if not c.dry:
            from types import SimpleNamespace

            comp = build_random(fam, c.model(fam), c.device, torch.bfloat16)
            pipe = SimpleNamespace(unet=comp.unet, text_encoder=comp.text_encoders[0], tokenizer=comp.tokenizers[0], vae=comp.vae)
        base = per_step(baseline_run(c.model(fam), c.images(res), steps, 64 if c.dry else res, 1, device=c.device,
                                     dtype=torch.bfloat16 if c.cuda else None, pipe=pipe), c.warmup)
        del pipe
        eng = eng_times.get((fam, res, 1, False)) or c.train(fam, res, 1, steps).step_time(c.warmup)
        ratio = eng / base
        return f"{ratio:.3f}", _meets(ratio, "≤ 1.02") if c.cuda else "n/a", f"engine {eng * 1000:.1f} ms, loop {base * 1000:.1f} ms"
    return fn


def flux_row(c: Check, swap: int):
    def fn():
        over = dict(FLUX_GUIDE)
        if c.dry:  # the tiny FLUX: its text fits 16 tokens, its 3 blocks swap none; 8-bit AdamW needs CUDA
            over.update(model__t5xxl_max_token_length=16, optimization__optimizer="AdamW")
        else:
            over["optimization__blocks_to_swap"] = swap
        r = c.train("flux", 1024, 1, c.warmup + c.steps, **over)
        if not r.finished:
            return r.message[:60], False, r.message.splitlines()[0][:120]
        st = r.step_time(c.warmup)
        name = next(n for n, _ in ROWS if n.startswith("FLUX.1-dev") and ("blocks_to_swap" in n) == bool(swap))
        note = f"{st:.2f} s/it, max_memory_allocated" + (f"; {swap} blocks swapped" if swap else "") + _no_8bit()
        if not c.cuda:
            return "—", "n/a", f"{st * 1000:.0f} ms/step on the tiny FLUX (dry run)"
        # the row is the run's peak once its model is in main memory: the caches' text encoders, moving the
        # denoiser in, training -- a card that holds the training step must hold those too
        peak = max(r.peak_bytes, r.setup_peak_bytes) / 1e9
        note += f"; training {r.peak_bytes / 1e9:.2f} GB, before it {r.setup_peak_bytes / 1e9:.2f} GB (caches, moving in)"
        return f"{peak:.2f} GB", _meets(peak, TARGETS[name]), note
    return fn


COMPILE_COST = {"sd15": 120.0, "sdxl": 240.0}  # seconds, about (a row that would end past the budget is skipped)


def run_all(c: Check) -> list[Row]:
    times: dict = {}
    peaks: dict = {}
    c.row("fp16 + grad scaler", path_row(c, {"optimization__mixed_precision": "fp16"}), cuda_only=True)
    c.row("bf16", path_row(c, {"optimization__mixed_precision": "bf16"}), cuda_only=True)
    c.row("AdamW8bit", path_row(c, {"optimization__optimizer": "AdamW8bit"}), cuda_only=True)
    c.row("Lion8bit", path_row(c, {"optimization__optimizer": "Lion8bit"}), cuda_only=True)
    c.row("fp8 base", setting_row(c, "model.fp8_base", {}), cuda_only=has_setting("model.fp8_base") is not None)
    # the cache needs a frozen text encoder and captions that never change (as sd-scripts)
    c.row("text-encoder output cache", setting_row(c, "dataset.cache_text_encoder_outputs",
                                                   {"network__train_text_encoder": False, "dataset__shuffle_caption": False}))
    c.row("NVML panel figures", nvml_row, cuda_only=True)
    c.row("WD14 tagger on onnxruntime CUDA", wd14_row(c))
    c.row("host syncs in steady-state steps", sync_row(c), cuda_only=True)
    # the headline figures before the long rows: built on the GPU, moved to RAM, fp8, cached (~1-1.5 min each)
    c.row("FLUX.1-dev 1024² b1 fp8 base: peak VRAM", flux_row(c, 0), cost=60)
    c.row("FLUX.1-dev 1024² b1 fp8 base, blocks_to_swap 16: peak VRAM", flux_row(c, 16), cuda_only=True, cost=60)
    for fam, res, batch in (("sd15", 512, 1), ("sd15", 512, 8), ("sdxl", 1024, 1), ("sdxl", 1024, 4)):
        c.row(f"MFU {label(fam)} {res}² batch {batch}", mfu_row(c, fam, res, batch, False, times))
    for fam, res in (("sd15", 512), ("sdxl", 1024)):
        c.row(f"peak VRAM {label(fam)} {res}² b1, low-VRAM profile", vram_row(c, fam, res, peaks), cuda_only=True)
    for fam, res in (("sd15", 512), ("sdxl", 1024)):
        c.row(f"estimated VRAM {label(fam)} {res}² b1, low-VRAM profile", estimate_row(c, fam, res, peaks))
    c.row("engine ÷ minimal diffusers+peft loop, SD1.5 512² b1", overhead_row(c, times))
    for fam, res, batch in (("sd15", 512, 1), ("sd15", 512, 8), ("sdxl", 1024, 1), ("sdxl", 1024, 4)):
        # inductor on a CPU takes minutes: the dry run leaves these out (tests/test_fastpath.py compiles on the CPU)
        c.row(f"MFU {label(fam)} {res}² batch {batch}, torch.compile", mfu_row(c, fam, res, batch, True, times),
              cuda_only=True, cost=COMPILE_COST[fam])  # a cold inductor compile of forward and backward
    return c.rows


def table(rows: list[Row], header: str) -> str:
    cols = [("figure", [r.name for r in rows]), ("value", [r.value for r in rows]),
            ("target", [r.target for r in rows]), ("result", [r.result for r in rows]), ("note", [r.note for r in rows])]
    widths = [max(len(h), *(len(v) for v in vals)) for h, vals in cols]
    line = lambda cells: "  ".join(str(x).ljust(w) for x, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [header, line([h for h, _ in cols]), line(["-" * w for w in widths])]
    out += [line([r.name, r.value, r.target, r.result, r.note]) for r in rows]
    out.append("row seconds: " + ", ".join(f"{r.seconds:.0f}" for r in rows))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU: proves the script runs")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds; rows after it are skipped")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per speed row (after 3 warm-up steps)")
    ap.add_argument("--json", type=Path, help="also write the rows here, after each row "
                                              "(default with $OUT set: $OUT/gpu_check.json)")
    args = ap.parse_args(argv)
    if args.json is None and os.environ.get("OUT"):
        args.json = Path(os.environ["OUT"]) / "gpu_check.json"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: a library that tries fails at once
    _importable_loratui()

    import torch

    from loratui.engine import quiet_libraries

    quiet_libraries()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.dry_run else "cpu"
    header = (f"loratui gpu_check — {name}, torch {torch.__version__}"
              + (" — DRY RUN (tiny models, CPU)" if args.dry_run else ""))
    print(header, flush=True)

    def on_row(row: Row) -> None:  # as it is measured: a run cut off keeps what it had
        print(f"  {row.name}: {row.value} (target {row.target}) {row.result}" + (f" — {row.note}" if row.note else ""),
              f"[{row.seconds:.0f} s]", flush=True)
        if args.json:
            write_json(args.json, name, c.rows)

    c = Check(args.dry_run, args.budget, 2 if args.dry_run else args.steps, on_row)
    threads = torch.get_num_threads()
    if c.dry:
        torch.set_num_threads(1)  # tiny models: threads only fight each other
    previous = signal.signal(signal.SIGTERM, _terminated) if _main_thread() else None
    try:
        rows = run_all(c)
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(c.tmp, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(table(rows, f"{header}, {time.perf_counter() - c.t0:.0f} s"), flush=True)
    if args.json:
        write_json(args.json, name, rows)
    return 1 if any(r.result in ("FAIL", "error") for r in rows) else 0


def write_json(path: Path, device: str, rows: list[Row]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"device": device, "rows": [asdict(r) for r in rows]}, indent=1))
    os.replace(tmp, path)  # never half a file


def _terminated(signum, frame):  # a time limit's SIGTERM: end through the finally clauses, the rows kept
    raise SystemExit(128 + signum)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
