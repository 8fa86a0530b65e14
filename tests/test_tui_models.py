"""Pilot tests of the models screen (M): the table of model files read from
headers, picking one fills the form's field, a download with its progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, ProgressBar, Static

sys.path.insert(0, str(Path(__file__).parent))
from fake_hub import FakeHub  # noqa: E402
from model_files import CHECKPOINTS, write_models_folder, write_safetensors  # noqa: E402
from test_tui_form import app_for, make_profile, until  # noqa: E402

from loratui.screens.models import COLUMNS, DownloadDialog, ModelsScreen  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LORATUI_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


async def open_models(pilot, app) -> ModelsScreen:
    await pilot.press("escape", "M")
    await until(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.entries)
    return app.screen


def rows(screen: ModelsScreen) -> dict[str, list[str]]:
    table = screen.query_one(DataTable)
    out = {}
    for i in range(table.row_count):
        cells = [str(c) for c in table.get_row_at(i)]
        out[cells[1]] = cells
    return out


async def test_the_models_screen_lists_headers_and_fills_the_form(env, synthetic_dataset):
    files = write_models_folder(env / "models")
    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(160, 40)) as pilot:
        form = app.form
        screen = await open_models(pilot, app)
        table = screen.query_one(DataTable)
        assert [str(c.label) for c in table.columns.values()] == list(COLUMNS)
        got = rows(screen)
        assert got["sdxl_model.safetensors"][:5] == ["checkpoint", "sdxl_model.safetensors", "SDXL", "fp16", "202 kB"]
        assert got["sd2_model.safetensors"][2:4] == ["SD 2.x", "bf16"]
        assert got["sdxl_fp8.safetensors"][3] == "fp8"
        assert got["t5xxl_fp8.safetensors"][:4] == ["text encoder", "t5xxl_fp8.safetensors", "T5-XXL", "fp8"]
        lora = got["mychar_v1.safetensors"]
        assert lora[0] == "lora" and "r16/8" in lora[6] and "tags: mychar, 1girl, solo" in lora[6]
        broken = got["cut_short.safetensors"][6]
        assert broken.startswith("BROKEN:") and str(files["truncated"]) in broken and "truncated" in broken
        assert "web page" in got["login_page.safetensors"][6]
        # enter on the LoRA fills network_weights and goes back to the form
        table.move_cursor(row=[e.name for e in screen.entries].index("mychar_v1.safetensors"))
        await pilot.pause()
        assert "network.network_weights" in str(screen.query_one("#details", Static).render())
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is form)
        assert form.fields["network.network_weights"].editor.value == str(files["lora"])
        # a broken file is refused, a checkpoint fills base_model
        screen = await open_models(pilot, app)
        names = [e.name for e in screen.entries]
        screen.query_one(DataTable).move_cursor(row=names.index("cut_short.safetensors"))
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen
        screen.query_one(DataTable).move_cursor(row=names.index("sd1_model.safetensors"))
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is form)
        assert form.fields["model.base_model"].editor.value == str(files["sd1"])


async def test_download_from_the_models_screen(env, synthetic_dataset, monkeypatch):
    from huggingface_hub import constants

    src = write_safetensors(env / "src.safetensors", {**CHECKPOINTS["sdxl"], "pad": (100_000,)}, "F16")
    hub = FakeHub(files={"me/xl": {"xl.safetensors": src.read_bytes()}})
    monkeypatch.setenv("HF_ENDPOINT", hub.start())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 16 * 1024)
    monkeypatch.setattr("loratui.engine.modelstore.download.PROGRESS_EVERY", 0.0)
    write_safetensors(env / "models" / "checkpoints" / "a.safetensors", CHECKPOINTS["sd1"])
    app = app_for(make_profile(env, synthetic_dataset))
    try:
        async with app.run_test(size=(160, 40)) as pilot:
            screen = await open_models(pilot, app)
            await pilot.press("g")
            await until(pilot, lambda: isinstance(app.screen, DownloadDialog))
            box = app.screen.query_one("#repo", Input)
            box.focus()
            box.value = "me/xl xl.safetensors"
            await pilot.press("enter")
            await until(pilot, lambda: app.screen is screen and "xl.safetensors" in rows(screen))
            dest = env / "models" / "checkpoints" / "xl.safetensors"
            assert dest.read_bytes() == src.read_bytes()
            assert rows(screen)["xl.safetensors"][2] == "SDXL"
            assert screen.entries[screen.query_one(DataTable).cursor_row].spec == str(dest)  # the new one is highlighted
            last = screen.last_progress
            assert last.done == last.total == len(src.read_bytes()) and "100.0%" in last.line()
            bar = screen.query_one("#dl-bar", ProgressBar)
            assert bar.total == bar.progress == len(src.read_bytes())
    finally:
        hub.stop()


async def test_an_empty_models_folder_says_where_what_and_how(env, synthetic_dataset):
    app = app_for(make_profile(env, synthetic_dataset))  # the models folder does not exist yet
    async with app.run_test(size=(160, 40)) as pilot:
        await pilot.press("escape", "M")
        await until(pilot, lambda: isinstance(app.screen, ModelsScreen) and app.screen.root)
        screen = app.screen
        status = lambda: str(screen.query_one("#status", Static).render())  # noqa: E731
        await until(pilot, lambda: "no model files" in status())
        text = " ".join(status().split())
        assert f"the models folder {env / 'models'} does not exist yet" in text
        assert all(sub in text for sub in ("checkpoints/", "vae/", "lora/", "text_encoders/")) and "press g" in text
        assert screen.query_one(DataTable).row_count == 0
        (env / "models").mkdir()
        await pilot.press("r")
        await until(pilot, lambda: "is empty" in " ".join(status().split()))


async def test_choose_the_models_folder_from_the_screen(env, synthetic_dataset, monkeypatch):
    from loratui.engine.userdirs import models_dir
    from loratui.tui.widgets.dialogs import PathPicker

    monkeypatch.delenv("LORATUI_MODELS_DIR")
    write_safetensors(env / "first" / "checkpoints" / "one.safetensors", CHECKPOINTS["sd1"])
    write_safetensors(env / "other" / "vae" / "two.safetensors", {"encoder.conv_in.weight": (4, 3, 3, 3)})
    from loratui.engine.userdirs import set_models_dir

    set_models_dir(env / "first")
    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(160, 40)) as pilot:
        screen = await open_models(pilot, app)
        assert "one.safetensors" in rows(screen)
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, PathPicker))
        box = app.screen.query_one("#picker-path", Input)
        box.focus()
        box.value = str(env / "other")
        await pilot.press("enter")
        await until(pilot, lambda: app.screen is screen and "two.safetensors" in rows(screen))
        assert "one.safetensors" not in rows(screen)
        assert models_dir() == (env / "other").resolve()
