"""The bad-input catalogue, end to end: every input a user can get wrong, fed
to ``run_training`` (as the app and ``loratui train`` run it) or to the
``loratui train`` / ``loratui check`` commands.

For each case: the run either refuses with a message that names the file or
the field and says what to do, or trains on and warns (images in odd modes
must train); no traceback reaches the user; nothing that existed is changed.

The low-level detail of each check lives with its module and is tested there
(tests/test_dataset.py for images, captions and folders, tests/test_models.py
for model files, tests/test_schema.py for profiles, tests/test_lora.py for
LoRA files, tests/test_resume.py and tests/test_faults.py for states and
faults); here each case goes through the whole run once.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loratui.engine.events import Control, Failed, Finished, LogEvent, PhaseChanged, RunPlanned, StepEvent, WarningEvent
from loratui.engine.schema import profile_from_dict
from loratui.engine.train import run_training


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models train fastest on one thread


# --------------------------------------------------------------------------- a sandbox per case


@dataclass
class Sandbox:
    root: Path
    model: Path
    data: Path  # images/ with 1_toy/ holding two good captioned images
    out: Path
    profile: dict = field(default_factory=dict)  # nested overrides of the profile
    toml: str | None = None  # profile file text for the CLI cases
    resume: str | None = None
    patches: list[Callable] = field(default_factory=list)

    @property
    def concept(self) -> Path:
        return self.data / "1_toy"

    def set(self, dotted: str, value) -> None:
        section, key = dotted.split(".")
        self.profile.setdefault(section, {})[key] = value


def good_png(path: Path, size=(64, 64), colour=(200, 60, 60)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def noise_image(path: Path, fmt="PNG") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def profile_dict(sb: Sandbox) -> dict:
    d = {
        "model": {"base_model": str(sb.model)},
        "dataset": {"train_data_dir": str(sb.data), "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64},
        "network": {"network_dim": 4, "network_alpha": 2.0},
        "optimization": {"optimizer": "AdamW", "learning_rate": 1e-3, "max_train_epochs": 1, "train_batch_size": 1,
                         "max_train_steps": 2, "mixed_precision": "no", "lr_scheduler": "constant"},
        "output": {"output_dir": str(sb.out), "output_name": "tiny", "save_every_n_epochs": 0},
    }
    for section, values in sb.profile.items():
        d.setdefault(section, {}).update(values)
    return d


def toml_text(d: dict) -> str:
    import tomli_w

    return tomli_w.dumps(d)


def snapshot(*roots: Path) -> dict[str, tuple]:
    out = {}
    for root in roots:
        if not root.exists() and not root.is_symlink():
            continue
        for dirpath, dirnames, filenames in os.walk(root):  # does not follow symlinks: loops are fine
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = Path(dirpath, name)
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p))
                else:
                    out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
    return out


# --------------------------------------------------------------------------- the cases


@dataclass
class Case:
    setup: Callable[[Sandbox], None]
    outcome: str  # "refused": Failed before training | "failed": Failed later | "trains": Finished | "cli": rc 2
    expect: list[str]  # substrings of the message (Failed message + hint, the warnings, or the CLI output)
    via: str = "run"  # "run": run_training | "train" / "check": the CLI command in-process
    removed_ok: tuple[str, ...] = ()  # files the run may delete (leftovers of an interrupted save)


def _bomb_png(path: Path) -> None:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _single_file(path: Path, family: str, **kw) -> Path:
    """A header-valid single-file checkpoint with the keys that identify a family."""
    from safetensors.torch import save_file

    tensors = {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
    }
    if family == "sd2":
        tensors["cond_stage_model.model.token_embedding.weight"] = torch.zeros(8, 4)
        g = torch.Generator().manual_seed(0)
        v = torch.randn(320, generator=g)
        tensors["model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"] = v / v.std(unbiased=False) * 0.2
    else:
        tensors["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 4)
    save_file(tensors, str(path), **kw)
    return path


def _sdxl_lora(path: Path) -> Path:
    from safetensors.torch import save_file

    sd = {}
    for name, dim in (("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 640),
                      ("lora_te2_text_model_encoder_layers_0_self_attn_q_proj", 1280)):
        sd[f"{name}.lora_down.weight"] = torch.zeros(4, dim)
        sd[f"{name}.lora_up.weight"] = torch.zeros(dim, 4)
        sd[f"{name}.alpha"] = torch.tensor(4.0)
    save_file(sd, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    return path


def _pickled_code_ckpt(path: Path) -> None:
    import pickle
    import zipfile

    # a torch zip checkpoint whose pickle calls os.system: what weights_only refuses
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    data = pickle.dumps({"state_dict": Evil()}, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", data)
        z.writestr("archive/version", "3\n")


def case(setup=None, *, outcome, expect, via="run", removed_ok=()):
    return Case(setup or (lambda sb: None), outcome, expect, via, removed_ok)


def _set(**values):
    def setup(sb: Sandbox) -> None:
        for dotted, v in values.items():
            sb.set(dotted.replace("__", "."), v)

    return setup


def _then(*fns):
    def setup(sb: Sandbox) -> None:
        for fn in fns:
            fn(sb)

    return setup


def _cli_profile(mutate: Callable[[dict], str | None]):
    """A profile file; ``mutate`` edits the dict, or returns the whole text."""

    def setup(sb: Sandbox) -> None:
        d = profile_dict(sb)
        text = mutate(d)
        sb.toml = text if text is not None else toml_text(d)

    return setup


def _rank8_lora(sb: Sandbox) -> Path:
    import shutil

    return Path(shutil.copy(sb.root.parent / "rank8.safetensors", sb.root / "rank8.safetensors"))


def _disk_full(sb: Sandbox) -> None:
    def patch(monkeypatch):
        import safetensors.torch as st
        from safetensors import SafetensorError

        real = st.save_file

        def save_file(tensors, filename, metadata=None):
            if Path(filename).parent == sb.out:
                Path(filename).write_bytes(b"\x00" * 1024)
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            return real(tensors, filename, metadata=metadata)

        monkeypatch.setattr(st, "save_file", save_file)

    sb.patches.append(patch)


def _leftovers(sb: Sandbox) -> None:
    sb.out.mkdir()
    (sb.out / ".loratui-tmp-abc123.safetensors").write_bytes(b"\x00" * 100)
    (sb.out / ".loratui-tmp-xyz789").mkdir()
    (sb.out / ".loratui-tmp-xyz789" / "training.pt").write_bytes(b"\x00" * 100)
    (sb.out / "older-lora.safetensors").write_bytes(b"a LoRA of another run")


def _other_profile_state(sb: Sandbox) -> None:
    """A complete state folder saved by a run of another profile."""
    import shutil

    src = sb.root.parent / "other-state"
    dst = sb.root / "other-state"
    shutil.copytree(src, dst)
    sb.resume = str(dst)


CASES: dict[str, Case] = {
    # ---- images
    "zero-byte-image": case(
        lambda sb: (sb.concept / "empty.png").write_bytes(b""), outcome="trains",
        expect=["1_toy: 1 unreadable image(s) skipped: empty.png: empty file (0 bytes)"]),
    "truncated-png": case(
        lambda sb: _truncate(noise_image(sb.concept / "cut.png")), outcome="trains",
        expect=["unreadable image(s) skipped: cut.png: truncated or corrupt"]),
    "truncated-jpeg": case(
        lambda sb: _truncate(noise_image(sb.concept / "cut.jpg", "JPEG")), outcome="trains",
        expect=["unreadable image(s) skipped: cut.jpg: truncated or corrupt"]),
    "text-file-named-png": case(
        lambda sb: (sb.concept / "notes.png").write_text("shopping list\n"), outcome="trains",
        expect=["unreadable image(s) skipped: notes.png: not an image (a text file)"]),
    "cmyk-jpeg-trains": case(
        lambda sb: Image.new("CMYK", (64, 64), (0, 255, 255, 0)).save(sb.concept / "cmyk.jpg"), outcome="trains",
        expect=[]),
    "16-bit-png-trains": case(
        lambda sb: Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(sb.concept / "deep.png"),
        outcome="trains", expect=[]),
    "palette-png-trains": case(
        lambda sb: Image.new("RGB", (64, 64), (10, 200, 30)).convert("P", palette=Image.ADAPTIVE).save(sb.concept / "pal.png"),
        outcome="trains", expect=[]),
    "alpha-png-trains": case(
        lambda sb: Image.new("RGBA", (64, 64), (0, 0, 255, 90)).save(sb.concept / "alpha.png"), outcome="trains",
        expect=[]),
    "one-pixel-image": case(
        lambda sb: good_png(sb.concept / "dot.png", size=(1, 1)), outcome="trains",
        expect=["1 image(s) enlarged more than 2× to fit their bucket (blurry): dot.png (1×1)"]),
    "20000x20000-header": case(
        lambda sb: _bomb_png(sb.concept / "bomb.png"), outcome="trains",
        expect=["bomb.png: 20000×20000 pixels is too large to decode safely", "not decoded — downscale it"]),
    "unsupported-image-type": case(
        lambda sb: Image.new("RGB", (64, 64)).save(sb.concept / "anim.gif"), outcome="trains",
        expect=["1 file(s) of a type not trained on skipped (anim.gif) — convert them to png or jpg"]),
    # ---- captions
    "non-utf8-caption": case(
        lambda sb: (sb.concept / "a.txt").write_bytes("toy, café crème\n".encode("cp1252")), outcome="trains",
        expect=["a.txt: caption is not UTF-8; read it as Windows-1252 — check its accents and save it as UTF-8"]),
    "empty-caption": case(
        lambda sb: (sb.concept / "a.txt").write_text("  \n"), outcome="trains",
        expect=["empty caption file(s) a.txt; using the class tokens 'toy'"]),
    "binary-caption": case(
        lambda sb: (sb.concept / "a.txt").write_bytes(b"\x00\x01\x02 binary"), outcome="trains",
        expect=["a.txt: caption is not a text file; using the class tokens"]),
    # ---- folders
    "folder-without-number-prefix": case(
        lambda sb: good_png(sb.data / "extra" / "x.png"), outcome="trains",
        expect=["extra has no <repeats>_ number prefix, skipped (1 images not used) — rename it e.g. to 10_extra"]),
    "only-folders-without-number-prefix": case(
        lambda sb: sb.concept.rename(sb.data / "toy"), outcome="refused",
        expect=["dataset.train_data_dir: no usable concept folder in", "(toy lack the <repeats>_ prefix) — rename them like 10_toy"]),
    "repeats-0": case(
        lambda sb: good_png(sb.data / "0_more" / "m.png"), outcome="refused",
        expect=["0_more: repeats is 0, so its images would never be used — rename it to 1_more or more"]),
    "nested-folders": case(
        lambda sb: good_png(sb.concept / "sub" / "deep.png"), outcome="trains",
        expect=["nested folders are not scanned (1 images inside not used) — move the images up"]),
    "symlink-loop": case(
        lambda sb: (os.symlink(sb.data / "9_self", sb.data / "9_self"), os.symlink(sb.concept, sb.concept / "loop")),
        outcome="trains", expect=["9_self is a broken or looping symbolic link, skipped", "loop: nested folders"]),
    "missing-dataset-folder": case(
        _set(dataset__train_data_dir="/nonexistent/images"), outcome="refused",
        expect=["dataset.train_data_dir: /nonexistent/images does not exist — check the path"]),
    "empty-dataset-folder": case(
        lambda sb: [p.unlink() for p in sb.concept.iterdir()] and sb.concept.rmdir(), outcome="refused",
        expect=["is empty — add a <repeats>_<name> folder of images"]),
    "reg-folder-same-as-train": case(
        lambda sb: sb.set("dataset.reg_data_dir", str(sb.data)), outcome="refused",
        expect=["dataset.reg_data_dir: is the same folder as train_data_dir — regularization images go in their own folder"]),
    # ---- base model
    "missing-model-path": case(
        lambda sb: sb.set("model.base_model", str(sb.root / "models" / "v1-5.safetensors")), outcome="refused",
        expect=["model.base_model:", "v1-5.safetensors does not exist — check the path"]),
    "model-path-is-an-image": case(
        lambda sb: sb.set("model.base_model", str(good_png(sb.root / "cat.png"))), outcome="refused",
        expect=["cat.png", "PNG image", "not a base model"]),
    "truncated-safetensors": case(
        lambda sb: (_truncate(_single_file(sb.root / "cut.safetensors", "sd1"), 0.6),
                    sb.set("model.base_model", str(sb.root / "cut.safetensors"))),
        outcome="refused", expect=["cut.safetensors", "truncated", "download it again"]),
    "ckpt-that-runs-code": case(
        lambda sb: (_pickled_code_ckpt(sb.root / "evil.ckpt"), sb.set("model.base_model", str(sb.root / "evil.ckpt"))),
        outcome="refused", expect=["evil.ckpt refused: it needs code to unpickle", "Use the .safetensors version"]),
    "sd2-v-prediction-without-the-flag": case(
        lambda sb: (_single_file(sb.root / "sd21-768.safetensors", "sd2"),
                    sb.set("model.base_model", str(sb.root / "sd21-768.safetensors")),
                    _cli_profile(lambda d: None)(sb)),
        via="check", outcome="warns", expect=["looks like an SD 2.x 768-v model", "model.v_parameterization"]),
    # ---- profile file
    "unknown-profile-key": case(
        _cli_profile(lambda d: d["network"].update(netwrok_dim=8)), via="train", outcome="cli",
        expect=["case.toml:network.netwrok_dim: unknown setting (check the spelling; `loratui check` lists valid keys)"]),
    "wrong-type": case(
        _cli_profile(lambda d: d["network"].update(network_dim="eight")), via="train", outcome="cli",
        expect=["case.toml:network.network_dim: 'eight' is not a whole number"]),
    "negative-learning-rate": case(
        _cli_profile(lambda d: d["optimization"].update(learning_rate=-1e-4)), via="train", outcome="cli",
        expect=["case.toml:optimization.learning_rate: -0.0001 is out of range: must be > 0"]),
    "rank-0": case(
        _cli_profile(lambda d: d["network"].update(network_dim=0)), via="check", outcome="cli",
        expect=["case.toml:network.network_dim: 0 is out of range: must be ≥ 1"]),
    "profile-not-toml": case(
        _cli_profile(lambda d: "model:\n  base_model: sd15.safetensors\n"), via="train", outcome="cli",
        expect=["case.toml: is not valid TOML"]),
    "profile-file-missing": case(
        lambda sb: setattr(sb, "toml", None), via="train", outcome="cli", expect=["case.toml: no such file"]),
    "alpha-greater-than-rank": case(
        _set(network__network_alpha=16.0), outcome="trains",
        expect=["network.network_alpha: 16 is larger than the rank 4", "alpha ≤ rank is usual"]),
    "optimizer-args-not-key-value": case(
        _set(optimization__optimizer_args="weight_decay=0.1 betas"), outcome="refused",
        expect=["optimization.optimizer_args: 'betas' is not key=value — e.g. weight_decay=0.1 betas=0.9,0.99"]),
    # ---- output
    "unwritable-output-folder": case(
        _set(output__output_dir="/sys/loratui-output"), outcome="refused",
        expect=["output.output_dir: /sys/loratui-output is not writable (nothing can be created in /sys)",
                "choose a folder you can write to"]),
    "output-folder-is-a-file": case(
        lambda sb: (sb.out.write_text("not a folder"),), outcome="refused",
        expect=["output.output_dir:", "is a file, not a folder — choose a folder"]),
    "disk-full-during-a-save": case(
        _disk_full, outcome="failed",
        expect=["the disk is full: could not write tiny.safetensors in", "no half-written file was left"]),
    "leftovers-of-an-interrupted-save": case(
        _leftovers, outcome="trains", removed_ok=(".loratui-tmp-abc123.safetensors", ".loratui-tmp-xyz789"),
        expect=["removed 2 leftover(s) of an interrupted save", ".loratui-tmp-abc123.safetensors, .loratui-tmp-xyz789",
                "the files saved before are intact"]),
    # ---- LoRA weights and states
    "network-weights-of-another-architecture": case(
        lambda sb: sb.set("network.network_weights", str(_sdxl_lora(sb.root / "sdxl-style.safetensors"))),
        outcome="failed", expect=["sdxl-style.safetensors", "The LoRA was made for SDXL but the base model is SD 1.x",
                                  "clear network_weights to start a new one"]),
    "network-weights-of-another-rank": case(
        lambda sb: sb.set("network.network_weights", str(_rank8_lora(sb))), outcome="trains",
        expect=["network.network_weights: rank8.safetensors has rank(s) 8, not network.network_dim 4",
                "training continues at the file's ranks"]),
    "network-weights-missing": case(
        _set(network__network_weights="/nonexistent/old.safetensors"), outcome="refused",
        expect=["network.network_weights: /nonexistent/old.safetensors does not exist — point it at a LoRA .safetensors file"]),
    "state-from-another-profile": case(
        _other_profile_state, outcome="refused",
        expect=["output.resume: the profile differs from the one other-state was trained with",
                "network.network_dim: 8 in the state, 4 now", "undo these changes to resume, or start a new run"]),
}


# --------------------------------------------------------------------------- module fixtures


@pytest.fixture(scope="module")
def shared(tiny_sd1_dir, tmp_path_factory):
    """Built once: a rank-8 LoRA of the tiny model and the state of a run of another profile."""
    root = tmp_path_factory.mktemp("bad-inputs")
    data = root / "data"
    good_png(data / "2_other" / "o.png")
    d = {
        "model": {"base_model": str(tiny_sd1_dir)},
        "dataset": {"train_data_dir": str(data), "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64},
        "network": {"network_dim": 8, "network_alpha": 8.0},
        "optimization": {"max_train_epochs": 1, "train_batch_size": 1, "mixed_precision": "no", "max_train_steps": 2},
        "output": {"output_dir": str(root / "out"), "output_name": "other", "save_every_n_epochs": 0},
    }
    control = Control()

    def stop_after_first(ev):
        if isinstance(ev, StepEvent):
            control.stop()

    result = run_training(profile_from_dict(d), stop_after_first, control)
    assert isinstance(result, Finished) and result.stopped_early
    (root / "out" / "other-step00000001.safetensors").rename(root / "rank8.safetensors")
    (root / "out" / "other-state-step00000001").rename(root / "other-state")
    return root


@pytest.fixture
def sandbox(shared, tiny_sd1_dir):
    root = shared / f"case-{len(list(shared.glob('case-*')))}"
    sb = Sandbox(root=root, model=tiny_sd1_dir, data=root / "images", out=root / "out")
    for i, colour in enumerate([(200, 60, 60), (60, 60, 200)]):
        good_png(sb.concept / f"{'ab'[i]}.png", colour=colour)
        (sb.concept / f"{'ab'[i]}.txt").write_text(f"toy, number {i}\n")
    return sb


def run_case(sb: Sandbox, c: Case, capsys) -> tuple[str, object, list]:
    """(all text the user sees, the terminal event or return code, events)."""
    if c.via in ("train", "check"):
        from loratui.engine.cli import run_command

        rc = run_command([c.via, str(sb.root / "case.toml")])
        cap = capsys.readouterr()
        return cap.out + cap.err, rc, []
    events: list = []
    result = run_training(profile_from_dict(profile_dict(sb)), events.append, Control(), resume=sb.resume)
    text = "\n".join(
        getattr(e, "message", "") + "\n" + getattr(e, "hint", "")
        for e in events
        if isinstance(e, (Failed, WarningEvent, LogEvent))
    )
    return text, result, events


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, sandbox, capsys, monkeypatch):
    c = CASES[name]
    c.setup(sandbox)
    for patch in sandbox.patches:
        patch(monkeypatch)
    if sandbox.toml is not None:
        (sandbox.root / "case.toml").write_text(sandbox.toml)
    watched = [sandbox.root, sandbox.model]
    before = snapshot(*watched)
    text, result, events = run_case(sandbox, c, capsys)

    assert "Traceback" not in text and "internal error" not in text
    for part in c.expect:
        assert part in text, f"{part!r} not in:\n{text}"

    if c.outcome == "cli":
        assert result == 2
    elif c.outcome == "warns":
        assert result == 0 and "warning" in text
    elif c.outcome == "trains":
        assert isinstance(result, Finished) and not result.stopped_early, result
        planned = next(e for e in events if isinstance(e, RunPlanned))
        assert planned.report.images >= 2
        if not c.expect:  # an image in an odd mode: trained on, not skipped
            assert planned.report.images == 3 and not planned.report.concepts[0].unreadable
            assert not [e for e in events if isinstance(e, WarningEvent) and "unreadable" in e.message]
    else:
        assert isinstance(result, Failed), result
        loaded = any(isinstance(e, PhaseChanged) and e.phase == "loading_model" for e in events)
        if c.outcome == "refused":  # said before any model loads, and nothing written
            assert result.message.startswith("cannot start:") and not loaded
            assert not any(isinstance(e, StepEvent) for e in events)

    after = snapshot(*watched)
    changed = [p for p in before if p not in after or after[p] != before[p]]
    changed = [p for p in changed if not any(part in p for part in c.removed_ok)]
    assert not changed, f"changed or removed: {changed}"
    new = [p for p in after if p not in before]
    assert all(p.startswith(str(sandbox.out)) for p in new), f"written outside the output folder: {new}"
    if c.outcome in ("refused", "cli"):
        assert not new, f"a refused run wrote {new}"


# --------------------------------------------------------------------------- check and train agree

REFUSED = [name for name, c in CASES.items() if c.outcome == "refused" and c.via == "run"]


@pytest.mark.parametrize("name", REFUSED)
def test_check_reports_what_train_refuses(name, sandbox, capsys, monkeypatch):
    """`loratui check` on the same profile (and --resume) says "not ready" and
    prints every problem the run refused with."""
    c = CASES[name]
    c.setup(sandbox)
    for patch in sandbox.patches:
        patch(monkeypatch)
    _text, result, _events = run_case(sandbox, c, capsys)
    assert isinstance(result, Failed) and result.message.startswith("cannot start:"), result
    refused = [line.strip() for line in result.message.split("\n")[1:] if line.strip()]
    assert refused

    (sandbox.root / "check.toml").write_text(toml_text(profile_dict(sandbox)))
    from loratui.engine.cli import run_command

    rc = run_command(["check", str(sandbox.root / "check.toml")] + (["--resume", sandbox.resume] if sandbox.resume else []))
    out = capsys.readouterr().out
    assert rc == 1 and "not ready" in out and "ready to train" not in out
    for line in refused:
        assert line in out, f"{line!r} (refused by train) not in check's output:\n{out}"
    for part in c.expect:
        assert part in out
