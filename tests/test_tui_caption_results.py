"""After a captioning job, `w` shows each image (its thumbnail hook: the file name)
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
        got = rows(table)
        assert [r[0] for r in got] == ["b1.png", "b2.png"]
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
        assert rows(table)[1] == ["b2.png", "mychar, fixed by hand"]
        await pilot.press("escape")
        await settle(pilot, screen)
        assert app.screen is screen


def test_thumbnail_hook_names_the_file():
    assert str(thumbnail(Path("/data/10_x/img 1.png"))) == "img 1.png"
