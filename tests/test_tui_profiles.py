"""Profiles: the user's folder (XDG), the catalogue, and switching in the app with
unsaved changes (save / discard / cancel), save-as from a bundled profile, diff,
duplicate, delete, the command palette, a remapped key."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, OptionList

from loratui.engine.schema import Profile, ProfileError, load_profile
from loratui.engine.userdirs import (
    bundled_profiles,
    check_name,
    config_dir,
    delete_user_profile,
    find_profile,
    last_profile,
    list_profiles,
    load_keymap,
    keymap_path,
    new_name_problem,
    read_origin,
    remember_last_profile,
    save_user_profile,
    unique_name,
    user_profiles_dir,
)
from loratui.screens.help import HelpScreen, binding_rows
from loratui.screens.profiles import ProfilesScreen
from loratui.tui.app import FIRST_RUN_HINT, LoraTuiApp
from loratui.tui.widgets.dialogs import ChoiceDialog, NameDialog
from pilot_wait import until


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_user_folder_and_catalogue(env):
    assert config_dir() == env / "cfg"
    names = [e.name for e in bundled_profiles()]
    assert {"demo", "sd15-character", "sdxl-style", "low-vram-8gb"} <= set(names)
    base = load_profile(find_profile("bundled/sd15-character").path)
    p = base.model_copy(update={"network": base.network.model_copy(update={"network_dim": 32})})
    path = save_user_profile(p, "mychar", origin="bundled/sd15-character")
    assert path == user_profiles_dir() / "mychar.toml"
    assert read_origin(path) == "bundled/sd15-character"
    assert load_profile(path).network.network_dim == 32
    entries = list_profiles()
    assert entries[0].name == "mychar" and not entries[0].bundled and entries[0].origin == "bundled/sd15-character"
    assert find_profile("mychar").path == path
    assert unique_name("mychar") == "mychar-2" and unique_name("other") == "other"
    assert check_name("a/b") and check_name("") and check_name("ok name-1") is None
    assert "exists already" in new_name_problem("mychar") and new_name_problem("mychar", keep=path) is None
    # rewriting a profile keeps its author's comments in place (no <file>.orig copy)
    commented = user_profiles_dir() / "mine.toml"
    commented.write_text('[model]\nclip_skip = 2  # anime models\n')
    save_user_profile(load_profile(commented), "mine")
    assert "clip_skip = 2  # anime models" in commented.read_text()
    assert not commented.with_name("mine.toml.orig").exists()
    delete_user_profile(commented)
    with pytest.raises(ProfileError):
        save_user_profile(p, "mychar", overwrite=False)
    with pytest.raises(ProfileError, match="cannot be deleted"):
        delete_user_profile(find_profile("bundled/demo").path)
    delete_user_profile(path)
    assert not path.exists()
    # the last used profile survives restarts, and a vanished one is forgotten
    assert last_profile() is None
    remember_last_profile(find_profile("bundled/demo").path)
    assert last_profile() == find_profile("bundled/demo").path.resolve()
    keymap_path().write_text('[keys]\nrun.start = "ctrl+g"\n"screen.profiles" = "o"\nbad = 3\n')
    keys, problems = load_keymap()
    assert keys == {"run.start": "ctrl+g", "screen.profiles": "o"}
    assert len(problems) == 1 and "keys.bad" in problems[0]


def highlighted_command(app) -> str:
    """The command palette's highlighted hit ("" while it has none)."""
    if not isinstance(app.screen, CommandPalette):
        return ""
    hits = app.screen.query_one(CommandList)
    if hits.highlighted is None:
        return ""
    return str(hits.get_option_at_index(hits.highlighted).hit.text)


def user_profile(env, name: str, **network) -> Path:
    p = Profile.model_validate({"network": {"network_dim": 8, **network}, "output": {"output_name": name}})
    return save_user_profile(p, name)


async def test_first_start_opens_the_demo_with_a_hint(env):
    app = LoraTuiApp(gpu=False, check_live_runs=False, prepare_demo=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert app.session.name == "demo" and app.session.bundled
        assert FIRST_RUN_HINT in str(app.form.query_one("#hint").render())


async def test_switching_with_unsaved_changes_asks_save_discard_cancel(env):
    a, b = user_profile(env, "alpha"), user_profile(env, "beta", network_dim=4)
    app = LoraTuiApp(a, gpu=False, check_live_runs=False)
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        rank = form.fields["network.network_dim"]
        await form.focus_field("network.network_dim")
        rank.editor.value = "16"
        # the edit travels Input -> field -> form as messages: wait for it, not for a quiet spell
        await until(pilot, lambda: form.dirty, "the form to see the edit")
        assert "alpha *" in str(form.query_one("#title").render())

        async def pick_beta():
            await pilot.press("escape", "p")
            await pilot.pause()
            assert isinstance(app.screen, ProfilesScreen)
            ol = app.screen.query_one(OptionList)
            ol.highlighted = next(i for i in range(ol.option_count) if ol.get_option_at_index(i).id == str(b))
            await pilot.pause()
            details = str(app.screen.query_one("#details").render())
            assert "beta" in details and "rank 4" in details
            await pilot.press("enter")
            await pilot.pause()

        await pick_beta()
        assert isinstance(app.screen, ChoiceDialog) and "Unsaved changes in alpha" in app.screen.title_text
        await pilot.press("escape")  # cancel: nothing changes
        await pilot.pause()
        assert app.session.name == "alpha" and rank.editor.value == "16"
        await pilot.press("escape")  # leave the profiles screen
        await pilot.pause()

        await pick_beta()
        await pilot.press("s")  # save, then switch
        await pilot.pause()
        assert app.session.name == "beta" and load_profile(a).network.network_dim == 16
        assert rank.editor.value == "4" and not form.dirty
        assert app.screen is form

        await form.focus_field("network.network_dim")
        rank.editor.value = "64"
        await until(pilot, lambda: form.dirty, "the form to see the edit")
        await pilot.press("escape", "p")
        await pilot.pause()
        ol = app.screen.query_one(OptionList)
        ol.highlighted = next(i for i in range(ol.option_count) if ol.get_option_at_index(i).id == str(a))
        await pilot.press("enter")
        await pilot.pause()
        await pilot.press("d")  # discard
        await pilot.pause()
        assert app.session.name == "alpha" and rank.editor.value == "16"
        assert load_profile(b).network.network_dim == 4  # beta untouched
        assert last_profile() == a.resolve()


async def test_save_a_bundled_profile_as_your_own_and_see_the_diff(env):
    bundled = find_profile("bundled/sd15-character").path
    app = LoraTuiApp(bundled, gpu=False, check_live_runs=False)
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        assert "(bundled: ctrl+s saves a copy)" in str(form.query_one("#title").render())
        epochs = form.fields["optimization.max_train_epochs"]
        await form.focus_field("optimization.max_train_epochs")
        epochs.editor.value = "12"
        await until(pilot, lambda: form.dirty, "the form to see the edit")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, NameDialog)
        name_input = app.screen.query_one(Input)
        name_input.value = "mychar"
        await pilot.press("enter")
        await pilot.pause()
        saved = user_profiles_dir() / "mychar.toml"
        assert saved.is_file() and read_origin(saved) == "bundled/sd15-character"
        assert load_profile(saved).optimization.max_train_epochs == 12
        assert app.session.name == "mychar" and not app.session.bundled and not form.dirty
        assert load_profile(bundled).optimization.max_train_epochs == 8  # the bundled file is untouched

        await pilot.press("escape", "p")
        await pilot.pause()
        screen = app.screen
        details = str(screen.query_one("#details").render())
        assert "differs from bundled/sd15-character" in details
        assert "optimization.max_train_epochs" in details and "8 → 12" in details

        # duplicate it, then delete the copy
        await pilot.press("n")
        await pilot.pause()
        assert isinstance(app.screen, NameDialog)
        assert app.screen.query_one(Input).value == "mychar-copy"
        await pilot.press("enter")
        await pilot.pause()
        copy = user_profiles_dir() / "mychar-copy.toml"
        assert copy.is_file() and read_origin(copy) == "mychar"
        assert "no differences" in str(screen.query_one("#details").render())
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog)
        await pilot.press("y")
        await pilot.pause()
        assert not copy.exists()
        # the open profile cannot be deleted from under the form
        ol = screen.query_one(OptionList)
        ol.highlighted = next(i for i in range(ol.option_count) if ol.get_option_at_index(i).id == str(saved))
        await pilot.press("d")
        await pilot.pause()
        assert saved.exists() and app.screen is screen


async def test_command_palette_help_and_a_remapped_key(env):
    keymap_path().parent.mkdir(parents=True, exist_ok=True)
    keymap_path().write_text('[keys]\n"screen.profiles" = "o"\n')
    path = user_profile(env, "alpha")
    app = LoraTuiApp(path, gpu=False, check_live_runs=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("o")
        await pilot.pause()
        assert isinstance(app.screen, ProfilesScreen)
        await pilot.press("escape", "question_mark")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        rows = {r[3]: r for r in binding_rows(app)}
        assert rows["screen.profiles"][1] == "o"
        for needed in ("run.start", "run.pause", "run.save_now", "run.stop", "app.interrupt", "profile.save",
                       "screen.form", "app.help", "app.quit"):
            assert needed in rows
        assert len(rows) == len(binding_rows(app))  # ids are unique
        await pilot.press("escape")
        await pilot.pause()
        # every profile is one palette search away
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"sdxl")
        # the palette searches in a worker: wait for its hit to be the highlighted one
        await until(pilot, lambda: highlighted_command(app) == "Open profile: sdxl-style", "the palette's hit")
        await pilot.press("enter")
        await until(pilot, lambda: app.session.name == "sdxl-style", "the profile to open")
        assert app.session.name == "sdxl-style" and app.session.bundled


async def test_import_a_kohya_config_from_the_profiles_screen(env):
    config = Path(__file__).parent / "fixtures" / "kohya" / "gui_sd15_locon_messy.json"
    app = LoraTuiApp(gpu=False, check_live_runs=False, prepare_demo=False)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("p")
        await pilot.pause()
        assert isinstance(app.screen, ProfilesScreen)
        await pilot.press("m")
        await pilot.pause()
        assert isinstance(app.screen, NameDialog)
        app.screen.query_one(Input).value = str(env / "missing.json")
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, NameDialog)  # refused: no such file
        app.screen.query_one(Input).value = str(config)
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, NameDialog)
        assert app.screen.query_one(Input).value == "gui_sd15_locon_messy"
        app.screen.query_one(Input).value = "from-kohya"
        await pilot.press("enter")
        await pilot.pause()
        saved = user_profiles_dir() / "from-kohya.toml"
        assert saved.is_file()
        assert load_profile(saved).network.network_type == "locon"
        assert isinstance(app.screen, ChoiceDialog)  # the import report


async def test_a_bundled_profiles_details_say_what_it_is_for_and_its_memory_settings(env):
    """Picking among the bundled profiles: each shows its first comment line (the card it is
    made for) and the settings that decide its memory."""
    app = LoraTuiApp(find_profile("bundled/sd15-character").path, gpu=False, check_live_runs=False)
    async with app.run_test(size=(130, 40)) as pilot:
        await pilot.press("p")
        await pilot.pause()
        ol = app.screen.query_one(OptionList)
        flux = str(find_profile("bundled/flux-dev-12gb").path)
        ol.highlighted = next(i for i in range(ol.option_count) if ol.get_option_at_index(i).id == flux)
        await pilot.pause()
        details = " ".join(str(app.screen.query_one("#details").render()).split())  # (wrapped lines joined)
        assert "FLUX.1-dev LoRA on a 12 GB GPU (RTX 3060 12 GB, 4070)." in details
        assert ("memory 1024×1024, bf16, checkpointing, latents cached (disk), text-encoder outputs cached (disk), "
                "fp8 base, 16 blocks swapped") in details
