"""Terminal graphics for samples: which terminals are asked, and kitty / sixel
pictures on the dashboard (textual-image), half blocks everywhere else."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loratui.tui import graphics  # noqa: E402
from test_tui_samples import drive_samples, samples_env  # noqa: E402,F401
from test_tui_snapshots import fixed_env, make_app  # noqa: E402,F401


def never_ask() -> str:
    raise AssertionError("the terminal was asked")


@pytest.mark.parametrize("env", [
    {"TERM": "xterm-256color"},                                  # plain SSH
    {"TERM": "screen-256color", "KITTY_WINDOW_ID": "1"},         # screen inside kitty
    {"TERM": "xterm-kitty", "TMUX": "/tmp/tmux-0/default,1,0"},  # tmux inside kitty
    {"TERM": "linux"},
    {},
])
def test_terminals_without_graphics_are_not_asked(env):
    assert graphics.choose(env, isatty=True, ask=never_ask) == "halfblock"


@pytest.mark.parametrize("env", [
    {"TERM": "xterm-kitty"},
    {"TERM": "xterm-ghostty"},
    {"TERM": "foot"},
    {"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"},
    {"TERM": "xterm-256color", "KONSOLE_VERSION": "240802"},
])
def test_terminals_with_graphics_are_asked_and_their_answer_taken(env):
    asked = []
    assert graphics.choose(env, isatty=True, ask=lambda: asked.append(1) or "sixel") == "sixel"
    assert asked == [1]
    assert graphics.choose(env, isatty=True, ask=lambda: "halfblock") == "halfblock"  # it said no
    assert graphics.choose(env, isatty=False, ask=never_ask) == "halfblock"  # not a terminal


def test_the_setting_forces_a_mode_or_names_itself_when_wrong(monkeypatch):
    assert graphics.choose({"TERM": "xterm", "LORATUI_GRAPHICS": "kitty"}, True, ask=lambda: "halfblock") == "kitty"
    assert graphics.choose({"TERM": "xterm-kitty", "LORATUI_GRAPHICS": "halfblock"}, True, ask=never_ask) == "halfblock"
    with pytest.raises(graphics.GraphicsSettingError, match="LORATUI_GRAPHICS='kity' is not one of auto, kitty"):
        graphics.choose({"LORATUI_GRAPHICS": "kity"}, True, ask=never_ask)
    monkeypatch.setenv("LORATUI_GRAPHICS", "kity")
    assert graphics.setup() == "halfblock" and graphics.mode() == "halfblock"
    assert graphics.problem.startswith("LORATUI_GRAPHICS='kity'") and "half blocks" in graphics.problem
    monkeypatch.delenv("LORATUI_GRAPHICS")
    assert graphics.setup() == "halfblock" and graphics.problem is None  # pytest's stdout: not a terminal


@pytest.fixture
def mode(request):
    graphics.set_mode(request.param)
    yield request.param
    graphics.set_mode("halfblock")


@pytest.mark.parametrize("mode", ["kitty", "sixel"], indirect=True)
async def test_the_dashboard_shows_samples_as_terminal_graphics(mode, samples_env, capfd):
    from textual.geometry import Region
    from textual_image.widget import SixelImage, TGPImage

    from loratui.tui.widgets.sample_view import SampleView

    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await drive_samples(pilot, samples_env[:2])
        view = app.screen.query_one("#sample", SampleView)
        picture = view.query_one(TGPImage if mode == "kitty" else SixelImage)
        assert view.graphics == mode and picture.image == samples_env[1].path
        assert picture.size.width > 0 and picture.size.height > 0
        assert all(s.text.strip() == "" for s in view._strips())  # no half blocks underneath
        if mode == "kitty":
            # textual-image sends the picture straight to the terminal (a kitty transmission
            # and a placement); the cells are placeholders that name it
            assert "\x1b_Ga=p," in capfd.readouterr().out
        else:
            impl = picture.children[0]
            lines = impl.render_lines(Region(0, 0, impl.size.width, impl.size.height))
            assert any("\x1bP" in seg.text for strip in lines for seg in strip)  # a sixel DCS
        draws = view.draws
        for _ in range(3):  # steps, log lines: the picture stays, and is not sent again
            app.screen.update_from(app.run_state, force=True)
            await pilot.pause()
        assert view.draws == draws and picture.image == samples_env[1].path
        assert "\x1b_G" not in capfd.readouterr().out
        app.run_state.apply(samples_env[2])
        app.screen.update_from(app.run_state, force=True)
        await pilot.pause()
        assert view.draws == draws + 1 and picture.image == samples_env[2].path
        if mode == "kitty":
            assert "\x1b_Ga=p," in capfd.readouterr().out


@pytest.mark.parametrize("mode", ["kitty"], indirect=True)
async def test_a_broken_sample_file_is_a_line_not_a_crash(mode, samples_env, tmp_path):
    from loratui.tui.widgets.sample_view import SampleView

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    app = make_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await drive_samples(pilot, samples_env[:1])
        view = app.screen.query_one("#sample", SampleView)
        view.show(str(bad))
        await pilot.pause()
        assert view._picture.image is None
        assert "cannot read the sample" in "".join(s.text for s in view._strips()[0])
        view.show(str(tmp_path / "gone.png"))
        await pilot.pause()
        assert "sample file missing" in "".join(s.text for s in view._strips()[0])


def test_half_block_images_are_kept_at_most_512_pixels_a_side(tmp_path):
    """64 cached 2048² samples were 768 MB decoded; no terminal shows more than 512 in half blocks."""
    from PIL import Image

    from loratui.tui.widgets.sample_view import _load_rgb, halfblock_rows

    path = tmp_path / "sample.png"
    Image.new("RGB", (2048, 1024), (200, 10, 10)).save(path)
    im = _load_rgb(str(path), path.stat().st_mtime)
    assert im.size == (512, 256) and im.mode == "RGB"
    rows = halfblock_rows(im, 40, 10)
    assert len(rows) == 10 and any("#c80a0a" in str(seg.style) for seg in rows[5])
