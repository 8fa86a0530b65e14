"""After a captioning job, `w` shows each image (its half-block thumbnail and file name)
beside the caption written, and `e` fixes one in place."""

from __future__ import annotations

import sys
from pathlib import Path

from textual.widgets import DataTable, TextArea

sys.path.insert(0, str(Path(__file__).parent))
from test_tui_dataset import Host, ds, rows, settle  # noqa: E402,F401

from loratui.engine.captioners import CaptionSettings  # noqa: E402
from loratui.engine.captioners.tiny import save_tiny_wd14  # noqa: E402
from loratui.screens.dataset import DatasetScreen  # noqa: E402
from loratui.tui.widgets.caption_results import CaptionResults, thumbnail  # noqa: E402
from loratui.tui.widgets.dataset_dialogs import CaptionEditor, CaptionJobDialog  # noqa: E402


async def test_written_captions_beside_their_images_and_fixed_in_place(ds, tmp_path):
    tagger = save_tiny_wd14(tmp_path / "tagger", size=16)
    screen = DatasetScreen(str(ds), resolution=64, caption_settings=CaptionSettings(model=str(tagger), trigger="mychar"))
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, screen)
        await pilot.press("w")  # nothing written yet
        await pilot.pause()
        assert app.screen is screen
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, CaptionJobDialog)
        await pilot.press("ctrl+s")
        await settle(pilot, screen, timeout=60)
        await pilot.press("w")
        await pilot.pause()
        results = app.screen
        assert isinstance(results, CaptionResults)
        table = results.query_one(DataTable)
        got = [(cell.split("\n")[-1], caption) for cell, caption in rows(table)]  # picture above, file name under it
        assert [r[0] for r in got] == ["b1.png", "b2.png"]
        assert all("▀" in cell for cell, _ in rows(table))
        for (name, caption) in got:
            assert caption == (ds / "4_bob" / name).with_suffix(".txt").read_text().strip()
            assert caption.startswith("mychar, ")
        table.move_cursor(row=1)
        await pilot.press("e")
        await pilot.pause()
        assert isinstance(app.screen, CaptionEditor)
        app.screen.query_one(TextArea).text = "mychar, fixed by hand"
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is results
        assert (ds / "4_bob" / "b2.txt").read_text().strip() == "mychar, fixed by hand"
        cell, caption = rows(table)[1]
        assert (cell.split("\n")[-1], caption) == ("b2.png", "mychar, fixed by hand")
        await pilot.press("escape")
        await settle(pilot, screen)
        assert app.screen is screen


def test_thumbnail_hook_names_the_file():
    assert str(thumbnail(Path("/data/10_x/img 1.png"))) == "img 1.png"


def test_thumbnail_draws_the_picture_above_the_name(tmp_path):
    from PIL import Image

    from loratui.tui.widgets.caption_results import THUMB_COLS, THUMB_ROWS

    img = tmp_path / "red.png"
    Image.new("RGB", (60, 60), (255, 0, 0)).save(img)
    t = thumbnail(img)
    lines = str(t).split("\n")
    assert lines[-1] == "red.png" and len(lines) == THUMB_ROWS + 1
    assert "▀" in lines[1] and len(lines[1]) == THUMB_COLS
    assert any(span.style.color and span.style.color.name == "#ff0000" for span in t.spans)
