"""The models folder listing (headers only) and `loratui models`, on tiny files
the test writes; downloads against a local fake Hub (tests/fake_hub.py)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import FakeHub  # noqa: E402
from model_files import CHECKPOINTS, write_models_folder, write_safetensors  # noqa: E402

from loratui.engine.cli import run_command  # noqa: E402
from loratui.engine.events import Aborted, Control  # noqa: E402
from loratui.engine.modelstore import scan  # noqa: E402
from loratui.engine.modelstore.download import DownloadError, download  # noqa: E402


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    files = write_models_folder(root)
    monkeypatch.setenv("LORATUI_MODELS_DIR", str(root))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    return root, files


def _by_name(entries):
    return {e.name: e for e in entries}


def test_scan_reads_kind_family_precision_size_and_lora_summary(models):
    root, files = models
    got = _by_name(scan(root))
    assert {n: (e.kind, e.family, e.precision) for n, e in got.items() if e.ok} == {
        "sd1_model.safetensors": ("checkpoint", "sd1", "fp32"),
        "sd2_model.safetensors": ("checkpoint", "sd2", "bf16"),
        "sdxl_model.safetensors": ("checkpoint", "sdxl", "fp16"),
        "sdxl_fp8.safetensors": ("checkpoint", "sdxl", "fp8"),
        "sdxl_vae.safetensors": ("vae", "", "fp16"),
        "mychar_v1.safetensors": ("lora", "sdxl", "fp16"),
        "clip_l.safetensors": ("text_encoder", "", "fp16"),
        "t5xxl_fp8.safetensors": ("text_encoder", "", "fp8"),
    }
    assert got["clip_l.safetensors"].family_text == "CLIP-L" and got["t5xxl_fp8.safetensors"].family_text == "T5-XXL"
    assert got["sdxl_model.safetensors"].size == files["sdxl"].stat().st_size
    lora = got["mychar_v1.safetensors"].lora
    assert (lora.rank, lora.alpha, lora.epochs, lora.base_model) == (16, 8.0, "4/8", "sd_xl_base_1.0.safetensors")
    assert lora.triggers == ["mychar", "1girl", "solo"]
    assert got["mychar_v1.safetensors"].field == "network.network_weights"
    assert got["sdxl_vae.safetensors"].field == "model.vae"
    # broken files are named with what is wrong
    cut = got["cut_short.safetensors"]
    assert str(files["truncated"]) in cut.problem and "truncated" in cut.problem and "100 bytes missing" in cut.problem
    page = got["login_page.safetensors"]
    assert page.kind == "lora" and "web page" in page.problem


def test_a_file_in_the_wrong_folder_is_said(models, tmp_path):
    root, _files = models
    write_safetensors(root / "lora" / "oops_vae.safetensors", {"encoder.conv_in.weight": (4, 3, 3, 3),
                                                               "decoder.conv_in.weight": (8, 4, 3, 3)})
    e = _by_name(scan(root, hub=False))["oops_vae.safetensors"]
    assert e.kind == "vae" and "a vae in the lora folder" in e.note


def test_hub_cache_files_and_diffusers_repos_are_listed(models, tmp_path, tiny_sd1_dir, monkeypatch):
    root, _ = models
    cache = tmp_path / "hub"
    snap = cache / "models--me--tiny-sd1" / "snapshots" / ("a" * 40)
    import shutil

    shutil.copytree(tiny_sd1_dir, snap)
    (cache / "models--me--tiny-sd1" / "refs").mkdir()
    (cache / "models--me--tiny-sd1" / "refs" / "main").write_text("a" * 40)
    single = cache / "models--me--xl" / "snapshots" / ("b" * 40)
    write_safetensors(single / "xl.safetensors", CHECKPOINTS["sdxl"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    got = _by_name(e for e in scan(root) if e.source == "hub")
    assert got["me/tiny-sd1"].kind == "checkpoint" and got["me/tiny-sd1"].family == "sd1"
    assert got["me/tiny-sd1"].spec == "me/tiny-sd1" and got["me/tiny-sd1"].format == "diffusers"
    assert got["me/xl/xl.safetensors"].family == "sdxl" and got["me/xl/xl.safetensors"].spec == str(single / "xl.safetensors")


def test_cli_models_table_and_json(models, capsys):
    root, files = models
    assert run_command(["models", "--no-hub"]) == 1  # a broken file is there
    out = capsys.readouterr().out
    header = out.splitlines()[1]
    assert header.split() == ["KIND", "NAME", "FAMILY", "PREC", "SIZE", "WHERE", "DETAILS"]
    line = next(x for x in out.splitlines() if "mychar_v1" in x)
    assert line.split()[:5] == ["lora", "mychar_v1.safetensors", "SDXL", "fp16", "6"]
    assert "r16/8" in line and "tags: mychar, 1girl, solo" in line and "ep 4/8" in line
    assert "BROKEN" in next(x for x in out.splitlines() if "cut_short" in x)
    assert run_command(["models", "--json", "--no-hub"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["models_dir"] == str(root)
    rows = {Path(m["path"]).name: m for m in data["models"]}
    assert rows["sd2_model.safetensors"]["family"] == "sd2" and rows["sd2_model.safetensors"]["precision"] == "bf16"
    assert rows["cut_short.safetensors"]["problem"]


def test_an_empty_or_missing_models_folder_says_where_what_and_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no-hub-cache"))
    missing = tmp_path / "not-yet"
    assert run_command(["models", "--dir", str(missing)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"models folder {missing}" and len(out) == 2  # no table header for nothing
    hint = out[1]
    assert f"the models folder {missing} does not exist yet" in hint
    for sub in ("checkpoints/", "vae/", "lora/", "text_encoders/"):
        assert sub in hint
    assert "loratui models download REPO FILE" in hint and "--list" in hint
    # the setting's folder is created with its layout, then said to be empty
    monkeypatch.setenv("LORATUI_MODELS_DIR", str(tmp_path / "setting"))
    assert run_command(["models"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and f"the models folder {tmp_path / 'setting'} is empty" in out[1]
    assert sorted(p.name for p in (tmp_path / "setting").iterdir()) == ["checkpoints", "lora", "text_encoders", "vae"]


def test_models_dir_setting_is_remembered(tmp_path, monkeypatch):
    monkeypatch.delenv("LORATUI_MODELS_DIR", raising=False)
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    from loratui.engine.userdirs import default_models_dir, models_dir, set_models_dir

    assert models_dir() == default_models_dir() and default_models_dir().name == "models"
    set_models_dir(tmp_path / "mine")
    assert models_dir() == (tmp_path / "mine").resolve()
    assert json.loads((tmp_path / "cfg" / "state.json").read_text())["models_dir"] == str((tmp_path / "mine").resolve())


# --------------------------------------------------------------------------- download


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from huggingface_hub import constants

    src = write_safetensors(tmp_path / "src" / "sd1.safetensors", {**CHECKPOINTS["sd1"], "pad": (250_000,)}, "F32")
    fake = FakeHub(files={"me/sd1": {"sd1.safetensors": src.read_bytes(), "README.md": b"# sd1\n"}})
    url = fake.start()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setenv("LORATUI_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("loratui.engine.modelstore.download.PROGRESS_EVERY", 0.0)  # every chunk
    yield fake
    fake.stop()


def test_download_reports_progress_verifies_and_links_into_the_models_folder(hub, tmp_path):
    events = []
    res = download("me/sd1", on_progress=events.append)  # repo only: its one model file
    dest = tmp_path / "models" / "checkpoints" / "sd1.safetensors"
    assert res.spec == str(dest) and res.kind == "checkpoint"
    assert hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(hub.files["me/sd1"]["sd1.safetensors"]).digest()
    total = len(hub.files["me/sd1"]["sd1.safetensors"])
    downloading = [e for e in events if e.phase == "downloading"]
    assert downloading and all(e.total == total for e in events)
    assert [e.done for e in downloading] == sorted(e.done for e in downloading) and downloading[-1].done == total
    assert any(e.phase == "verifying" for e in events)
    assert "MB" in downloading[-1].line() and "100.0%" in downloading[-1].line()
    again = download("me/sd1", "sd1.safetensors")
    assert again.spec == str(dest) and "already" in again.note


def test_interrupted_download_resumes_and_the_final_name_appears_only_when_complete(hub, tmp_path):
    control = Control()
    data = hub.files["me/sd1"]["sd1.safetensors"]

    def stop_half_way(p):
        if p.done > len(data) // 2:
            control.abort()

    with pytest.raises(Aborted):
        download("me/sd1", "sd1.safetensors", on_progress=stop_half_way, control=control)
    models = tmp_path / "models"
    assert not [p for p in models.rglob("*.safetensors")]  # no final name yet
    partial = list(models.rglob("*.incomplete"))
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < len(data)
    kept = partial[0].stat().st_size
    hub.requests.clear()
    events = []
    res = download("me/sd1", "sd1.safetensors", on_progress=events.append)
    assert ("GET", "/me/sd1/resolve/main/sd1.safetensors", f"bytes={kept}-") in hub.requests
    assert Path(res.spec).read_bytes() == data and not list(models.rglob("*.incomplete"))
    assert events[0].done >= kept  # the progress starts where the first run stopped


def test_a_dropped_link_is_resumed_within_the_download(hub):
    hub.drop_after["sd1.safetensors"] = 200_000
    res = download("me/sd1", "sd1.safetensors")
    gets = [r for r in hub.requests if r[0] == "GET" and r[1].endswith("sd1.safetensors")]
    assert len(gets) == 2 and Path(res.spec).read_bytes() == hub.files["me/sd1"]["sd1.safetensors"]


def test_not_enough_disk_space_refuses_before_fetching(hub, monkeypatch):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DownloadError, match=r"not enough disk space: me/sd1 needs 1 MB more, 1 kB free"):
        download("me/sd1", "sd1.safetensors")
    assert not [r for r in hub.requests if r[0] in ("GET", "HEAD") and "resolve" in r[1]]


def test_checksum_mismatch_removes_the_file(hub, tmp_path):
    hub.wrong_sha.add("sd1.safetensors")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download("me/sd1", "sd1.safetensors")
    assert not (tmp_path / "models" / "checkpoints" / "sd1.safetensors").exists()
    assert not list((tmp_path / "models").rglob("*sd1.safetensors*"))  # neither final nor partial


def test_gated_missing_and_offline_say_what_to_do(hub, monkeypatch, capsys):
    hub.files["org/gated"] = {"x.safetensors": b"x"}
    hub.gated.add("org/gated")
    with pytest.raises(DownloadError, match="gated") as exc:
        download("org/gated", "x.safetensors")
    assert "hf auth login" in str(exc.value) and "HF_TOKEN" in str(exc.value)
    with pytest.raises(DownloadError, match="has no file nope.safetensors"):
        download("me/sd1", "nope.safetensors")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert run_command(["models", "download", "me/sd1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: offline: cannot reach 127.0.0.1 (no network) — download on a machine with network "
                   "and copy the file into the models folder"]


def test_cli_download_prints_progress_and_the_path(hub, tmp_path, capsys):
    assert run_command(["models", "download", "me/sd1", "sd1.safetensors"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "models" / "checkpoints" / "sd1.safetensors")
    assert "downloading sd1.safetensors" in err and "100.0%" in err
    assert run_command(["models", "download", "--list"]) == 0
    listed = capsys.readouterr().out
    assert "black-forest-labs/FLUX.1-dev flux1-dev.safetensors  (gated)" in listed
    assert "stabilityai/stable-diffusion-xl-base-1.0 sd_xl_base_1.0.safetensors" in listed


def _pipeline(hub, tmp_path):
    unet = write_safetensors(tmp_path / "u.safetensors", {"conv_in.weight": (100_000,)}).read_bytes()
    vae = write_safetensors(tmp_path / "v.safetensors", {"encoder.conv_in.weight": (80_000,)}).read_bytes()
    hub.files["me/pipe"] = {"model_index.json": b'{"_class_name": "StableDiffusionPipeline"}',
                            "unet/config.json": b"{}", "unet/diffusion_pytorch_model.safetensors": unet,
                            "unet/diffusion_pytorch_model.fp16.safetensors": unet, "unet/diffusion_pytorch_model.bin": unet,
                            "vae/config.json": b'{"a": 1}', "vae/diffusion_pytorch_model.safetensors": vae,
                            "v1-5.safetensors": unet}
    return hub.files["me/pipe"]


def _fetched(hub, files) -> int:
    """Bytes of file bodies the fake Hub was asked for (GET, from each Range start)."""
    total = 0
    for method, path, rng in hub.requests:
        name = path.split("/resolve/main/", 1)[-1]
        if method == "GET" and "/resolve/" in path:
            start = int(rng.split("=")[1].split("-")[0]) if rng else 0
            total += len(files[name]) - start
    return total


def test_a_diffusers_repo_lands_as_a_folder_without_variants(hub, tmp_path):
    files = _pipeline(hub, tmp_path)
    res = download("me/pipe")
    final = tmp_path / "models" / "checkpoints" / "pipe"
    assert res.spec == str(final) and res.kind == "checkpoint" and "diffusers" in res.note
    got = sorted(str(p.relative_to(final)) for p in final.rglob("*") if p.is_file())
    assert got == ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                   "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert all((final / n).read_bytes() == files[n] for n in got)
    assert not list((tmp_path / "models" / ".downloads").iterdir())  # nothing left half-way
    entry = next(e for e in scan(tmp_path / "models", hub=False) if e.format == "diffusers")
    assert entry.spec == str(final) and entry.kind == "checkpoint"
    hub.requests.clear()
    again = download("me/pipe")
    assert again.spec == str(final) and "already" in again.note and _fetched(hub, files) == 0


def test_a_pipeline_put_beside_another_folder_of_its_name_is_found_there_next_time(hub, tmp_path):
    files = _pipeline(hub, tmp_path)
    other = tmp_path / "models" / "checkpoints" / "pipe"
    other.mkdir(parents=True)
    (other / "notes.txt").write_text("someone else's folder")
    res = download("me/pipe")
    assert res.spec == str(other.with_name("pipe-2")) and (other / "notes.txt").is_file()
    hub.requests.clear()
    again = download("me/pipe")
    assert again.spec == res.spec and "already" in again.note and _fetched(hub, files) == 0
    assert not other.with_name("pipe-3").exists()


def test_an_interrupted_diffusers_download_resumes_and_appears_only_when_complete(hub, tmp_path):
    files = _pipeline(hub, tmp_path)
    wanted = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    total = sum(len(files[n]) for n in wanted)
    unet = len(files["unet/diffusion_pytorch_model.safetensors"])
    control = Control()
    stop_at = total - len(files["vae/diffusion_pytorch_model.safetensors"]) // 2  # half-way through the vae

    def stop(p):
        if p.phase == "downloading" and p.done > stop_at:
            control.abort()

    with pytest.raises(Aborted):
        download("me/pipe", on_progress=stop, control=control)
    models = tmp_path / "models"
    assert not (models / "checkpoints" / "pipe").exists()  # no final name while incomplete
    assert not [e for e in scan(models) if e.format == "diffusers"]  # nor listed anywhere
    work = models / ".downloads" / "me--pipe.partial"
    assert (work / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size == unet
    part = work / "vae" / "diffusion_pytorch_model.safetensors.incomplete"
    kept = part.stat().st_size
    assert 0 < kept < len(files["vae/diffusion_pytorch_model.safetensors"])
    first = _fetched(hub, files) - (len(files["vae/diffusion_pytorch_model.safetensors"]) - kept)
    # a dropped link in the second run too: resumed on the spot
    hub.requests.clear()
    hub.drop_after["vae/diffusion_pytorch_model.safetensors"] = 10_000
    events = []
    res = download("me/pipe", on_progress=events.append)
    final = models / "checkpoints" / "pipe"
    assert res.spec == str(final) and all((final / n).read_bytes() == files[n] for n in wanted)
    gets = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
    assert [r[1].split("/resolve/main/")[1] for r in gets] == ["vae/diffusion_pytorch_model.safetensors"] * 2
    assert gets[0][2] == f"bytes={kept}-"  # the partial file continues
    again_from = int(gets[1][2].split("=")[1].split("-")[0])
    assert again_from >= kept  # and continues again after the dropped link
    vae = len(files["vae/diffusion_pytorch_model.safetensors"])
    sent = 10_000 + (vae - again_from)  # what the fake Hub sent in the second run
    assert sent <= vae - kept + 10_000  # never more than the rest of the vae (plus the dropped bit)
    assert first < total  # and the first run fetched less than everything
    assert events[0].done >= total - len(files["vae/diffusion_pytorch_model.safetensors"]) + kept
    assert events[-1].done == events[-1].total == total
    assert not work.exists() and not list(models.rglob("*.incomplete"))


def test_a_diffusers_repo_already_in_the_hub_cache_is_used_from_there(hub, tmp_path):
    from huggingface_hub import hf_hub_download

    files = _pipeline(hub, tmp_path)
    for n in ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
              "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]:
        hf_hub_download("me/pipe", n, cache_dir=str(tmp_path / "cache"), endpoint=os.environ["HF_ENDPOINT"])
    hub.requests.clear()
    res = download("me/pipe")
    assert res.spec == "me/pipe" and "Hub cache" in res.note and _fetched(hub, files) == 0


def test_a_damaged_pipeline_file_is_fetched_again_and_the_rest_kept(hub, tmp_path):
    files = _pipeline(hub, tmp_path)
    hub.wrong_sha.add("vae/diffusion_pytorch_model.safetensors")
    with pytest.raises(DownloadError, match="vae/diffusion_pytorch_model.safetensors: checksum mismatch"):
        download("me/pipe")
    models = tmp_path / "models"
    assert not (models / "checkpoints" / "pipe").exists() and not list(models.rglob("*vae*/*.incomplete"))
    hub.wrong_sha.clear()
    hub.requests.clear()
    res = download("me/pipe")
    vae = "vae/diffusion_pytorch_model.safetensors"
    assert (Path(res.spec) / vae).read_bytes() == files[vae]
    assert _fetched(hub, files) == len(files[vae])  # only the damaged one


def test_a_full_disk_during_the_download_names_the_folder(hub, tmp_path, monkeypatch):
    import errno

    import huggingface_hub.file_download as fd

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fd, "http_get", full)
    with pytest.raises(DownloadError, match="the disk is full while downloading me/sd1/sd1.safetensors") as exc:
        download("me/sd1", "sd1.safetensors")
    assert str(tmp_path / "models" / ".downloads") in exc.value.hint and "resumes" in exc.value.hint


def test_not_enough_disk_space_for_the_rest_of_a_pipeline(hub, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    _pipeline(hub, tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(DownloadError, match=r"not enough disk space: me/pipe needs .* more, 1 kB free") as exc:
        download("me/pipe")
    assert "models folder on a bigger disk" in str(exc.value)
    assert not [r for r in hub.requests if "/resolve/" in r[1]]


def test_rate_and_eta_text():
    from loratui.engine.modelstore.rate import Rate

    r = Rate()
    r.update(0, now=0.0)
    assert r.text(0, 200_000_000) == "0 bytes / 200 MB"  # no rate yet: no ETA
    r.update(50_000_000, now=1.0)
    assert r.text(50_000_000, 200_000_000) == "50 MB / 200 MB  50 MB/s  ETA 3s"
    r.update(150_000_000, now=2.0)  # smoothed: 0.7 * 50 + 0.3 * 100
    assert r.rate == pytest.approx(65_000_000)
