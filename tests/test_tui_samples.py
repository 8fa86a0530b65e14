"""Samples in the terminal: the half-block renderer, the dashboard's newest
sample, the gallery (Pilot tests and snapshots at 80×24 and 120×40)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loratui.engine.events import SampleSaved  # noqa: E402
from loratui.engine.runstate import RunState  # noqa: E402
from loratui.tui.bridge import Bridge  # noqa: E402
from test_tui_snapshots import SIZES, T0, events, fixed_env, make_app, settle_form  # noqa: E402,F401

SAMPLES = Path("/tmp/loratui-snapshot-samples")  # fixed: the names show on screen
PROMPTS = ["mychar, smiling", "mychar, full body, city street"]


def picture(path: Path, seed: int) -> Path:
    """A deterministic picture: a gradient with a disc whose place depends on ``seed``."""
    from PIL import Image, ImageDraw

    im = Image.new("RGB", (64, 64))
    px = im.load()
    for y in range(64):
        for x in range(64):
            px[x, y] = (x * 4, y * 4, (seed * 40) % 256)
    d = ImageDraw.Draw(im)
    cx = 12 + (seed * 7) % 40
    d.ellipse((cx, 20, cx + 20, 40), fill=(255, 240, 200))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def sample_events() -> list[SampleSaved]:
    out = []
    for epoch in (1, 2, 3):
        for i, prompt in enumerate(PROMPTS):
            p = picture(SAMPLES / f"mychar_v2_e{epoch:06d}_{i:02d}_20270115080000_{i + 1}.png", epoch * 3 + i)
            out.append(SampleSaved(path=str(p), prompt=prompt, index=i, epoch=epoch, step=epoch * 184, seed=i + 1,
                                   width=64, height=64, time=T0 + 100 * epoch))
    return out


@pytest.fixture
def samples_env(fixed_env):
    shutil.rmtree(SAMPLES, ignore_errors=True)
    yield sample_events()
    shutil.rmtree(SAMPLES, ignore_errors=True)


def test_halfblock_rows_two_pixels_a_cell_aspect_kept():
    from PIL import Image

    from loratui.tui.widgets.sample_view import UPPER_HALF, halfblock_rows

    im = Image.new("RGB", (4, 4), (255, 0, 0))
    for x in range(4):
        im.putpixel((x, 1), (0, 0, 255))
    rows = halfblock_rows(im, 8, 2)
    assert len(rows) == 2
    cells = [s for s in rows[0] if s.text == UPPER_HALF]
    assert len(cells) == 4  # a square picture in 8×2 cells: 4 cells wide, centred
    assert rows[0][0].text == "  "
    assert cells[0].style.color.triplet == (255, 0, 0) and cells[0].style.bgcolor.triplet == (0, 0, 255)
    assert sum(len(s.text) for s in rows[1]) == 8


async def drive_samples(pilot, samples) -> None:
    app = pilot.app
    await settle_form(pilot)
    state = RunState(profile_name="sd15-character", run_name="mychar_v2")
    app.run_state = state
    app.bridge = Bridge(app, state)
    for ev in events():
        state.apply(ev)
    for ev in samples:
        state.apply(ev)
    app._show_dashboard()
    await pilot.pause()
    app.screen.update_from(state, force=True)
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_dashboard_with_sample(snap_compare, samples_env, size):
    async def run(pilot):
        await drive_samples(pilot, samples_env)

    assert snap_compare(make_app(), terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gallery(snap_compare, samples_env, size):
    async def run(pilot):
        await drive_samples(pilot, samples_env)
        await pilot.press("g")
        await pilot.pause()
        await pilot.press("left", "down")
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=size, run_before=run)


async def test_sample_redrawn_only_when_a_new_one_arrives(samples_env):
    from loratui.screens.gallery import EnlargedSample, GalleryScreen
    from loratui.tui.widgets.sample_view import SampleView

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await drive_samples(pilot, samples_env[:2])
        dash = app.screen
        view = dash.query_one("#sample", SampleView)
        assert dash.has_class("-samples") and view.path == samples_env[1].path
        assert str(dash.query_one("#sample-box").border_title) == "epoch 1 · #2 ── g: all"
        draws = view.draws
        for _ in range(3):  # steps, log lines: the picture is not rebuilt
            dash.update_from(app.run_state, force=True)
            await pilot.pause()
        assert view.draws == draws
        app.run_state.apply(samples_env[2])
        dash.update_from(app.run_state, force=True)
        await pilot.pause()
        assert view.path == samples_env[2].path and view.draws == draws + 1
        # the gallery: prompts × epochs, the newest epoch selected; arrows move, enter enlarges
        app.run_state.apply(samples_env[3])
        await pilot.press("g")
        await pilot.pause()
        assert isinstance(app.screen, GalleryScreen)
        g = app.screen
        assert (len(g.grid.rows), len(g.grid.cols)) == (2, 2)
        assert g.selected().path == samples_env[0 + 2].path
        await pilot.press("down")
        assert g.selected().path == samples_env[3].path
        await pilot.press("left", "left", "up")
        assert g.selected().path == samples_env[0].path
        assert "#1: mychar, smiling" in str(g.query_one("#gallery-prompt").render())
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, EnlargedSample) and app.screen.ev.path == samples_env[0].path
        await pilot.press("escape")
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is dash


async def test_gallery_key_without_samples_says_how(fixed_env):
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await drive_samples(pilot, [])
        dash = app.screen
        assert not dash.has_class("-samples")
        await pilot.press("g")
        await pilot.pause()
        assert app.screen is dash


async def test_try_it_screen_prefills_trigger_words_and_renders_a_sheet(tiny_sd1_dir, tmp_path, fixed_env):
    from test_samples import _lora_files

    from PIL import Image

    from loratui.screens.tryit import TryItScreen
    from loratui.tui.widgets.sample_view import SampleView

    folder = tmp_path / "loras"
    folder.mkdir()
    lora = _lora_files(tiny_sd1_dir, folder)
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await settle_form(pilot)
        app.push_screen(TryItScreen(str(lora), str(tiny_sd1_dir)))
        await pilot.pause()
        scr = app.screen
        assert scr.query_one("#tryit-prompt").value == "toy"  # the most frequent tag of ss_tag_frequency
        scr.query_one("#tryit-weights").value = "1,x"
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert "--weights '1,x'" in str(scr.query_one("#tryit-status").render()) and not scr.busy
        scr.query_one("#tryit-prompt").value = "toy --s 2 --w 64 --h 64 --ss ddim"
        scr.query_one("#tryit-weights").value = "0,1"
        await pilot.press("ctrl+r")
        for _ in range(3000):
            await pilot.pause(0.05)
            if not scr.busy:
                break
        assert scr.sheet and Path(scr.sheet).is_file(), str(scr.query_one("#tryit-status").render())
        assert scr.query_one("#tryit-sheet", SampleView).path == scr.sheet
        assert Path(scr.sheet).parent == folder / "sample"
        assert Image.open(scr.sheet).size == (160 + 2 * 68, 24 + 68)  # one row: this file
        # every epoch's file of the run, one row each (toy-000001, then the final toy)
        epochs = scr.query_one("#tryit-epochs")
        assert not epochs.disabled and "2 in loras" in str(epochs.label)
        epochs.value = True
        first = scr.sheet
        await pilot.press("ctrl+r")
        for _ in range(3000):
            await pilot.pause(0.05)
            if not scr.busy:
                break
        assert scr.sheet != first and Image.open(scr.sheet).size == (160 + 2 * 68, 24 + 2 * 68)
