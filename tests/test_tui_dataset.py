"""Pilot tests of the dataset screen, hosted by a minimal app (as any app may push it):
tables filled from the inspection, repeats / caption edits on disk, balancing,
captioning the images that lack captions with a tiny WD14 tagger, one snapshot."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from textual.app import App
from textual.binding import Binding
from textual.widgets import DataTable, Input, TabbedContent, TextArea

from loratui.engine.captioners import CaptionSettings
from loratui.engine.captioners.tiny import save_tiny_wd14
from loratui.screens.captioning import CaptionProgress
from loratui.screens.dataset import DatasetScreen
from loratui.tui.widgets.dataset_dialogs import CaptionEditor, CaptionJobDialog, ConfirmDialog, RepeatsDialog

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 40, 220), (230, 220, 40), (200, 60, 200), (30, 200, 200)]


class Host(App):
    """The smallest app that pushes the screen, as tui/app.py does."""

    def __init__(self, screen: DatasetScreen) -> None:
        super().__init__()
        self.dataset_screen = screen

    def on_mount(self) -> None:
        self.push_screen(self.dataset_screen)


def picture(path: Path, i: int, size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, COLOURS[i % len(COLOURS)])
    for x in range(0, size[0], 4 + i):  # stripes: every picture hashes apart
        for y in range(size[1] // 2):
            im.putpixel((x, y), (255, 255, 255))
    im.save(path)
    return path


def make_dataset(root: Path) -> Path:
    """2_alice: 2 captioned; 4_bob: 3 pictures, one captioned, plus an empty file."""
    for i in range(2):
        picture(root / "2_alice" / f"a{i}.png", i)
        (root / "2_alice" / f"a{i}.txt").write_text(f"alice, smile, pose{i}\n", encoding="utf-8")
    for i in range(3):
        picture(root / "4_bob" / f"b{i}.png", i + 2)
    (root / "4_bob" / "b0.txt").write_text("bob, hat\n", encoding="utf-8")
    (root / "4_bob" / "zero.png").write_bytes(b"")
    return root


@pytest.fixture
def ds(tmp_path) -> Path:
    return make_dataset(tmp_path / "images")


async def settle(pilot, screen: DatasetScreen, timeout: float = 20.0) -> None:
    """Wait for the scan (and any captioning) to finish."""
    for _ in range(int(timeout / 0.05)):
        await pilot.pause(0.05)
        if screen.inspection is not None and not screen.scanning and not screen.captioning and not screen.error:
            return
        if screen.error and not screen.scanning:
            return
    raise AssertionError("the dataset screen never finished scanning")


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def errors(app: App) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


# --------------------------------------------------------------------------- showing


async def test_tables_show_the_inspection(ds):
    screen = DatasetScreen(str(ds), resolution=64)
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, screen)
        concepts = screen.query_one("#concepts", DataTable)
        assert [r[:5] for r in rows(concepts)] == [
            ["2_alice", "2", "2", "2/2", "4"],
            ["4_bob", "4", "3 +1✗", "1/3", "12"],
        ]
        images = screen.query_one("#images", DataTable)
        assert [r[0] for r in rows(images)] == ["a0.png", "a1.png"]
        assert rows(images)[0][1:] == ["64×64", "64×64", "alice, smile, pose0"]
        # the highlighted concept picks the images; the caption pane follows the image cursor
        await pilot.press("down")
        await pilot.pause()
        assert [r[0] for r in rows(images)] == ["b0.png", "b1.png", "b2.png", "zero.png"]
        assert rows(images)[1][3] == "(none)" and rows(images)[3][1] == "unreadable"
        images.focus()
        await pilot.press("down")
        await pilot.pause()
        view = str(screen.query_one("#caption-view").render())
        assert "no .txt caption: trains as 'bob'" in view
        # tags, buckets, problems tabs
        await pilot.press("2")
        assert screen.query_one("#ds-tabs", TabbedContent).active == "tab-tags"
        tags = {r[2]: r[0] for r in rows(screen.query_one("#tags", DataTable))}
        assert tags["alice"] == "2" and tags["bob"] == "3" and tags["smile"] == "2" and tags["hat"] == "1"
        await pilot.press("3")
        assert rows(screen.query_one("#buckets", DataTable)) == [["64×64", "5", "16"]]
        await pilot.press("4")
        problems = rows(screen.query_one("#problems", DataTable))
        assert ["unreadable", "4_bob/zero.png: empty file (0 bytes)"] in problems
        assert any(r[0] == "no-caption" and "4_bob: 2 of 3" in r[1] for r in problems)
        # esc leaves the screen
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, DatasetScreen)


async def test_every_binding_has_an_id_and_shows_in_the_footer():
    ids = [b.id for b in DatasetScreen.BINDINGS if isinstance(b, Binding)]
    assert len(ids) == len(DatasetScreen.BINDINGS) and all(i and i.startswith("dataset.") for i in ids)
    assert len(set(ids)) == len(ids)
    keys = {b.key.split(",")[0] for b in DatasetScreen.BINDINGS if b.show}
    assert {"escape", "r", "e", "c", "b", "g", "x"} <= keys


async def test_no_folder_says_what_to_do():
    screen = DatasetScreen()
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await pilot.pause()
        assert "no image folder" in str(screen.query_one("#ds-status-text").render())
        assert screen.inspection is None


# --------------------------------------------------------------------------- editing


async def test_edit_repeats_renames_the_folder_and_refuses_an_existing_one(ds):
    screen = DatasetScreen(str(ds), resolution=64)
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, screen)
        await pilot.press("r")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, RepeatsDialog)
        field = dialog.query_one(Input)
        assert field.value == "2"
        field.value = ""
        await pilot.press("0", "enter")  # refused in place: out of range
        assert isinstance(app.screen, RepeatsDialog)
        assert "1 to" in str(dialog.query_one("#repeats-error").render())
        field.value = ""
        await pilot.press("6", "enter")
        await settle(pilot, screen)
        assert sorted(p.name for p in ds.iterdir()) == ["4_bob", "6_alice"]
        assert sorted(p.name for p in (ds / "6_alice").iterdir()) == ["a0.png", "a0.txt", "a1.png", "a1.txt"]
        assert [r[0] for r in rows(screen.query_one("#concepts", DataTable))] == ["4_bob", "6_alice"]
        assert screen._concept_key == "6_alice"  # the cursor stays on the renamed concept
        # 9_alice exists: refused, nothing renamed
        (ds / "9_alice").mkdir()
        await pilot.press("g")
        await settle(pilot, screen)
        screen.query_one("#concepts", DataTable).move_cursor(row=1)
        await pilot.pause()
        await pilot.press("r")
        await pilot.pause()
        app.screen.query_one(Input).value = ""
        await pilot.press("9", "enter")
        await pilot.pause()
        assert (ds / "6_alice").is_dir() and not any((ds / "9_alice").iterdir())
        assert any("9_alice already exists" in m for m in errors(app))


async def test_edit_caption_writes_the_file_and_esc_writes_nothing(ds):
    screen = DatasetScreen(str(ds), resolution=64)
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, screen)
        screen.query_one("#images", DataTable).focus()
        await pilot.press("down", "e")
        await pilot.pause()
        editor = app.screen
        assert isinstance(editor, CaptionEditor)
        area = editor.query_one(TextArea)
        assert area.text == "alice, smile, pose1"
        area.load_text("alice, red hat")
        await pilot.press("escape")
        await pilot.pause()
        assert (ds / "2_alice" / "a1.txt").read_text(encoding="utf-8") == "alice, smile, pose1\n"
        await pilot.press("enter")  # enter on an image row opens the editor too
        await pilot.pause()
        app.screen.query_one(TextArea).load_text("alice, red hat\n")
        await pilot.press("ctrl+s")
        await settle(pilot, screen)
        assert (ds / "2_alice" / "a1.txt").read_text(encoding="utf-8") == "alice, red hat\n"
        assert rows(screen.query_one("#images", DataTable))[1][3] == "alice, red hat"
        assert "alice, red hat" in str(screen.query_one("#caption-view").render())
        # an image without a caption gets its first caption file
        screen.query_one("#concepts", DataTable).move_cursor(row=1)
        await pilot.pause()
        images = screen.query_one("#images", DataTable)
        images.focus()
        images.move_cursor(row=2)
        await pilot.press("e")
        await pilot.pause()
        app.screen.query_one(TextArea).load_text("bob, scarf")
        await pilot.press("ctrl+s")
        await settle(pilot, screen)
        assert (ds / "4_bob" / "b2.txt").read_text(encoding="utf-8") == "bob, scarf\n"
        assert [r[3] for r in rows(screen.query_one("#concepts", DataTable))] == ["2/2", "2/3"]


async def test_balance_renames_after_asking(ds):
    screen = DatasetScreen(str(ds), resolution=64)
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, screen)
        # 2×2 + 3×4 = 16 samples; 8 each: alice 2×4, bob 3×3 (nearest)
        assert [r[6] for r in rows(screen.query_one("#concepts", DataTable))] == ["4", "3"]
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmDialog)
        await pilot.press("n")
        await pilot.pause()
        assert sorted(p.name for p in ds.iterdir()) == ["2_alice", "4_bob"]
        await pilot.press("b")
        await pilot.pause()
        await pilot.press("y")
        await settle(pilot, screen)
        assert sorted(p.name for p in ds.iterdir()) == ["3_bob", "4_alice"]
        assert [r[:2] for r in rows(screen.query_one("#concepts", DataTable))] == [["3_bob", "3"], ["4_alice", "4"]]


# --------------------------------------------------------------------------- captioning


async def test_caption_the_missing_images_with_a_tagger(ds, tmp_path):
    tagger = save_tiny_wd14(tmp_path / "tagger", size=16)
    before = {p: p.read_bytes() for p in ds.rglob("*.txt")}
    seen: list = []
    screen = DatasetScreen(
        str(ds), resolution=64, caption_settings=CaptionSettings(model=str(tagger), trigger="mychar"), tab="captions"
    )
    app = Host(screen)
    async with app.run_test(size=(100, 32), message_hook=seen.append) as pilot:
        await settle(pilot, screen)
        for _ in range(40):  # tab="captions" opens the captioner once the scan is in
            if isinstance(app.screen, CaptionJobDialog):
                break
            await pilot.pause(0.05)
        dialog = app.screen
        assert isinstance(dialog, CaptionJobDialog)
        assert dialog.missing_all == 2
        await pilot.press("ctrl+s")
        await settle(pilot, screen, timeout=60)
        summary = screen.last_caption_summary
        assert (summary.written, summary.skipped_existing, summary.failed) == (2, 0, [])
        for name in ("b1", "b2"):
            text = (ds / "4_bob" / f"{name}.txt").read_text(encoding="utf-8")
            assert text.startswith("mychar, ")  # the trigger word first, then the tagger's tags
        for p, data in before.items():
            assert p.read_bytes() == data  # captions that existed are untouched
        assert [r[3] for r in rows(screen.query_one("#concepts", DataTable))] == ["2/2", "3/3"]
        progress = [m.event for m in seen if isinstance(m, CaptionProgress) and getattr(m.event, "phase", "") == "captioning"]
        assert progress and progress[-1].current == progress[-1].total == 2


async def test_a_captioner_that_cannot_load_is_reported_not_raised(ds, tmp_path):
    screen = DatasetScreen(str(ds), resolution=64, caption_settings=CaptionSettings(model=str(tmp_path / "no-model")))
    app = Host(screen)
    async with app.run_test(size=(100, 32)) as pilot:
        await settle(pilot, screen)
        await pilot.press("c")
        await pilot.pause()
        assert isinstance(app.screen, CaptionJobDialog)
        await pilot.press("ctrl+s")
        await settle(pilot, screen, timeout=30)
        status = str(screen.query_one("#ds-status-text").render())
        assert status.startswith("captioning failed:") and "no-model" in status
        assert not (ds / "4_bob" / "b1.txt").exists()
        assert isinstance(app.screen, DatasetScreen)


# --------------------------------------------------------------------------- snapshot


def test_snapshot_80x24(tmp_path, monkeypatch, snap_compare):
    monkeypatch.chdir(tmp_path)
    make_dataset(Path("images"))
    screen = DatasetScreen("images", resolution=64)

    async def loaded(pilot):
        await settle(pilot, screen)

    assert snap_compare(Host(screen), terminal_size=(80, 24), run_before=loaded)
