"""Pilot tests of the training form: generated from the schema, one section at a
time, validation in place, the live plan panel, keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from textual.widgets import Input, Select, Static, Switch

from loratui.engine.schema import SECTION_TITLES, Profile, save_profile, settings
from loratui.screens.training import TrainingScreen
from loratui.tui.app import LoraTuiApp
from loratui.tui.widgets.dialogs import ChoiceDialog, PathPicker
from loratui.tui.widgets.fields import complete_path, format_value, parse_value
from loratui.tui.widgets.plan import PlanPanel

from pilot_wait import until


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LORATUI_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def make_profile(tmp_path: Path, dataset: Path, **sections) -> Path:
    data = {
        "model": {"base_model": str(tmp_path / "model")},
        "dataset": {"train_data_dir": str(dataset), "resolution": 64, "enable_bucket": False},
        "optimization": {"max_train_epochs": 10, "train_batch_size": 1, "mixed_precision": "no"},
        "output": {"output_dir": str(tmp_path / "out"), "output_name": "mylora"},
    }
    for sec, values in sections.items():
        data.setdefault(sec, {}).update(values)
    path = tmp_path / "mine.toml"
    save_profile(Profile.model_validate(data), path)
    return path


def app_for(path: Path) -> LoraTuiApp:
    return LoraTuiApp(path, gpu=False, check_live_runs=False)


async def edit(pilot, form: TrainingScreen, dotted: str, text: str):
    """Go to a field (its section shows) and type ``text`` over its value: all but
    the last character pasted, the last one typed as a key press."""
    await form.focus_field(dotted)
    await pilot.pause()
    field = form.fields[dotted]
    assert pilot.app.focused is field.editor
    field.editor.value = text[:-1]
    field.editor.cursor_position = len(text) - 1
    if text:
        await pilot.press(text[-1])
    await pilot.pause()
    return field


def plan_ready(form: TrainingScreen):
    panel = form.query_one(PlanPanel)
    return lambda: panel.plan is not None and not panel.scanning


# --------------------------------------------------------------------------- pure helpers


def test_values_round_trip_through_the_editor_format():
    for info in settings():
        if info.default is None:
            continue
        assert parse_value(info, format_value(info, info.default)) == info.default, info.dotted
    lr = next(s for s in settings() if s.dotted == "optimization.text_encoder_lr")
    assert format_value(lr, 5e-5) == "5e-5"
    assert parse_value(lr, "") is None  # optional: empty means unset
    with pytest.raises(ValueError, match="not a number"):
        parse_value(lr, "fast")


def test_path_completion(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images_old").mkdir()
    (tmp_path / "imagine.txt").write_text("x")
    assert complete_path(str(tmp_path / "ima")) == str(tmp_path / "images") + "/"
    assert complete_path(str(tmp_path / "imagi")) == str(tmp_path / "imagine.txt")
    assert complete_path(str(tmp_path / "imagi"), dirs_only=True) is None
    assert complete_path(str(tmp_path / "nothing-here")) is None


# --------------------------------------------------------------------------- the form


async def test_sections_and_fields_come_from_the_schema(env, synthetic_dataset):
    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        infos = settings()
        assert set(form.fields) == {s.dotted for s in infos}
        assert form.section == "model"
        # one section at a time; ctrl+n walks through all of them
        seen = []
        for _ in SECTION_TITLES:
            seen.append(form.section)
            here = [i for i in infos if i.section == form.section]
            # a Select takes its value when it mounts
            await until(pilot, lambda: all(form.fields[i.dotted].editor is not None
                                           and form.fields[i.dotted].editor.is_mounted for i in here),
                        f"the {form.section} section's editors to mount")
            await pilot.pause()
            for info in here:
                editor = form.fields[info.dotted].editor
                want = {"bool": Switch, "choice": Select}.get(info.type, Input)
                assert isinstance(editor, want), info.dotted
                assert editor.value == format_value(info, form.valid.get(info.dotted))
            await pilot.press("ctrl+n")
        assert seen == list(SECTION_TITLES) and form.section == "model"  # wrapped around
        assert form.fields["dataset.resolution"].editor.value == "64"
        assert form.fields["output.output_name"].editor.value == "mylora"
        # advanced settings are folded until ctrl+t
        await form.focus_field("optimization.learning_rate")
        await pilot.pause()
        adv = form.fields["optimization.max_grad_norm"]
        assert adv.info.advanced and not adv.display
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert adv.display
        assert form.valid is not None and not form.problems


async def test_validation_in_place_and_start_refused(env, synthetic_dataset):
    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        res = await edit(pilot, form, "dataset.resolution", "32")
        assert "must be ≥ 64" in res.error
        assert res.query_one(".below", Static).display and "✗ 32 is out of range: must be ≥ 64" in res.below_text
        assert "-invalid" in res.classes and form.valid is None and form.dirty
        assert "1 problem" in str(form.query_one("#problem-count").render())
        assert "Dataset [red]✗1" in form.query_one("#form").border_title
        await edit(pilot, form, "dataset.resolution", "1024")
        assert res.error == "" and "✗" not in res.below_text
        assert form.valid is not None and form.valid.dataset.resolution == 1024

        rank = await edit(pilot, form, "network.network_dim", "0")
        assert "out of range" in rank.error and "≥ 1" in rank.error
        await edit(pilot, form, "network.network_dim", "8x")  # letters do not go into a number
        assert rank.editor.value == "8" and rank.error == ""
        # the focused field shows its help (with the kohya name); the others do not
        assert "LoRA rank" in rank.below_text and "kohya: network_dim" in rank.below_text
        assert form.fields["network.network_alpha"].below_text == ""
        # a warning shows in place and does not block
        alpha = await edit(pilot, form, "network.network_alpha", "64")
        assert alpha.error == "" and "! 64 is larger than the rank" in alpha.below_text
        assert form.valid is not None
        # enter moves to the next field, like a paper form
        await pilot.press("enter")
        assert app.focused is form.fields["network.conv_dim"].editor

        # Start is refused with the list of problems
        await edit(pilot, form, "dataset.resolution", "40")
        await edit(pilot, form, "optimization.train_batch_size", "0")
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog)
        body = str(app.screen.query_one(".body", Static).render())
        assert "dataset.resolution" in body and "must be ≥ 64" in body and "optimization.train_batch_size" in body
        assert app.run_state is None  # nothing started
        await pilot.press("g")  # go to the first problem
        await pilot.pause()
        assert form.section == "dataset" and app.focused is res.editor


async def test_the_plan_follows_keystrokes_and_the_folder(env, synthetic_dataset, monkeypatch, tmp_path):
    monkeypatch.setattr(TrainingScreen, "WATCH_EVERY", 0.1)
    app = app_for(make_profile(env, synthetic_dataset))  # 6 images × 4 repeats = 24 per epoch
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        panel = form.query_one(PlanPanel)
        await until(pilot, plan_ready(form))
        assert panel.report.images == 6 and panel.plan.images_x_repeats == 24 and panel.plan.total_steps == 240
        text = str(panel.render())
        assert "240" in text and "4_shapes" in text and "✓ caps" in text
        await edit(pilot, form, "optimization.max_train_epochs", "5")
        assert panel.plan.total_steps == 120
        await edit(pilot, form, "optimization.train_batch_size", "2")
        assert panel.plan.total_steps == 60
        await edit(pilot, form, "optimization.gradient_accumulation_steps", "3")
        assert panel.plan.total_steps == 20  # 24 ÷ 2 = 12 batches ÷ 3 = 4 steps × 5 epochs
        # an image added on disk is picked up
        concept = synthetic_dataset / "4_shapes"
        shutil.copy(concept / "img_000.png", concept / "extra.png")  # no caption
        await until(pilot, lambda: panel.report.images == 7)
        assert panel.report.missing_captions == 1 and "1 no cap" in str(panel.render())
        # a typed folder that does not exist is reported
        missing = tmp_path / "nowhere"
        field = await edit(pilot, form, "dataset.train_data_dir", "")
        field.editor.value = str(missing)
        await until(pilot, lambda: panel.report is not None and panel.report.root == str(missing) and not panel.scanning)
        assert panel.report.problems and "✗" in str(panel.render())


async def test_the_plan_panel_shows_what_train_would_refuse(env, synthetic_dataset, tmp_path):
    from loratui.engine.training.prepare import prepare_run

    gone = tmp_path / "gone.safetensors"
    app = app_for(make_profile(env, synthetic_dataset, network={"network_weights": str(gone)}))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        panel = form.query_one(PlanPanel)
        await until(pilot, lambda: any(p.startswith("network.network_weights") for p in panel.problems))
        await until(pilot, lambda: form.checks_settled)
        # the same problems `loratui check` and `loratui train` report (less the dataset's, shown above them)
        expected = [str(p) for p in prepare_run(form.valid, overwrite=True).problems if p not in panel.report.problems]
        assert panel.problems == expected
        assert any(p.startswith("model.base_model") for p in panel.problems)  # the model folder does not exist
        assert "gone.safetensors" in str(panel.render())
        n = len(panel.report.problems) + len(panel.problems)
        # the status line follows on the panel's Checked message, one message later
        await until(pilot, lambda: "stop a run" in str(form.query_one("#problem-count").render()))
        assert f"✗ {n} problems stop a run" in str(form.query_one("#problem-count").render())
        # each path field says it once: the problem at the field, no "not found" note under it as well
        base, weights = form.fields["model.base_model"], form.fields["network.network_weights"]
        await until(pilot, lambda: base.error and weights.error)
        assert "does not exist" in base.below_text and "not found on this machine" not in base.below_text
        assert "gone.safetensors" in weights.below_text and not weights.below_text.endswith("not found")
        # Start is refused with the same list, before anything loads
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, ChoiceDialog) and app.run_state is None
        body = str(app.screen.query_one(".body", Static).render())
        assert "network.network_weights" in body and "gone.safetensors" in body
        await pilot.press("escape")
        await pilot.pause()
        # cleared in the form: that problem goes, the model's stays
        field = await edit(pilot, form, "network.network_weights", "")
        field.editor.value = ""
        await until(pilot, lambda: form.checks_settled and not any(p.startswith("network.") for p in panel.problems))
        assert any(p.startswith("model.base_model") for p in panel.problems)


async def test_the_plan_checks_reuse_the_forms_scan(env, synthetic_dataset, monkeypatch):
    import loratui.engine.dataset as dataset_mod
    import loratui.engine.training.prepare as prepare_mod

    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        await until(pilot, plan_ready(form))
        await until(pilot, lambda: form.checks_settled)
        scans, checks = [], []
        real_scan, real_prepare = dataset_mod.scan_dataset, prepare_mod.prepare_run
        monkeypatch.setattr(dataset_mod, "scan_dataset", lambda ds, **kw: scans.append(ds) or real_scan(ds, **kw))
        monkeypatch.setattr(prepare_mod, "prepare_run", lambda p, **kw: checks.append(kw) or real_prepare(p, **kw))
        # a setting that is not the dataset's: the checks run on the form's scan, the folder is not read again
        await edit(pilot, form, "network.network_dim", "8")
        await until(pilot, lambda: len(checks) == 1 and form.checks_settled)
        assert checks[0]["scan"] is not None and scans == []


async def test_pick_a_folder_and_leave_a_field(env, synthetic_dataset):
    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        await form.focus_field("dataset.reg_data_dir")
        await pilot.pause()
        await pilot.press("ctrl+g")
        await pilot.pause()
        picker = app.screen
        assert isinstance(picker, PathPicker)
        path_input = picker.query_one("#picker-path", Input)
        path_input.focus()
        path_input.value = str(synthetic_dataset)
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is form
        field = form.fields["dataset.reg_data_dir"]
        assert field.editor.value == str(synthetic_dataset) and app.focused is field.editor
        panel = form.query_one(PlanPanel)
        await until(pilot, lambda: panel.report is not None and panel.report.problems)
        assert any("same folder" in p for p in map(str, panel.report.problems))
        # the scan's problem names its setting, so that field shows it in red
        assert "is the same folder as train_data_dir" in form.fields["dataset.reg_data_dir"].error
        assert not form.fields["dataset.train_data_dir"].error
        # a letter types into the field; esc leaves it and the same letter is a command
        await pilot.press("p")
        assert field.editor.value.endswith("p")
        await pilot.press("escape", "p")
        await pilot.pause()
        assert type(app.screen).__name__ == "ProfilesScreen"


async def test_the_form_works_at_80x24(env, synthetic_dataset):
    app = app_for(make_profile(env, synthetic_dataset))
    async with app.run_test(size=(80, 24)) as pilot:
        form = app.form
        await until(pilot, plan_ready(form))
        assert "-narrow" in form.classes
        box, pane = form.query_one("#plan-box"), form.query_one("#form")
        assert box.region.y >= pane.region.bottom  # the plan sits under the form
        assert "240 steps" in str(form.query_one(PlanPanel).render())
        # the last field of the longest section can be reached and is scrolled into view
        await form.focus_field("optimization.noise_offset")
        f = form.fields["optimization.noise_offset"]
        sec = form.query_one("#sec-optimization")
        # the scroll comes after the next layout: wait for it (a loaded machine takes longer than 0.2 s)
        await until(pilot, lambda: sec.region.contains_region(f.query_one(".row").region))
        assert f.has_focus_within


async def test_settings_of_other_families_are_hidden(env, synthetic_dataset):
    """The form shows only the settings the family trains with (the families declare them,
    engine.families.settings_unused_by); a setting that holds a value stays shown."""
    flux_only = ("model.t5xxl", "model.guidance_scale", "model.timestep_sampling", "network.train_blocks")
    unet_only = ("model.v_parameterization", "model.clip_skip", "optimization.min_snr_gamma")
    app = app_for(make_profile(env, synthetic_dataset, model={"family": "sd1"}))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        await pilot.press("ctrl+t")  # advanced shown too: still hidden
        await pilot.pause()
        assert set(flux_only) <= form.hidden_for_family and not set(unet_only) & form.hidden_for_family
        assert not form.fields["model.t5xxl"].display and form.fields["model.clip_skip"].display
        assert form.fields["model.family"].below_text.startswith("SD 1.x: ") and "hidden" in form.fields["model.family"].below_text
        assert "model.base_model" not in form.hidden_for_family and "optimization.learning_rate" not in form.hidden_for_family

        form.fields["model.family"].editor.value = "flux"
        await until(pilot, lambda: "model.clip_skip" in form.hidden_for_family, "the flux fields")
        assert set(unet_only) <= form.hidden_for_family and not set(flux_only) & form.hidden_for_family
        assert "model.clip_g" in form.hidden_for_family and "model.training_shift" in form.hidden_for_family
        assert not form.fields["model.clip_skip"].display and form.fields["model.t5xxl"].display
        await form.focus_field("network.train_blocks")  # another section: built now, with the same rule
        await pilot.pause()
        assert form.fields["network.train_blocks"].display and not form.fields["network.train_unet"].has_class("-unused")

        form.fields["model.family"].editor.value = "sd3"
        await until(pilot, lambda: "model.clip_g" not in form.hidden_for_family, "the sd3 fields")
        assert "network.train_blocks" not in form.hidden_for_family  # the field being edited never vanishes
        await pilot.press("escape")  # left: it folds
        await pilot.pause()
        assert {"model.guidance_scale", "network.train_blocks", "model.clip_skip"} <= form.hidden_for_family
        assert not {"model.clip_g", "model.training_shift", "model.weighting_scheme"} & form.hidden_for_family

        form.fields["model.family"].editor.value = "auto"  # nothing known about the model: everything shown
        await until(pilot, lambda: not form.hidden_for_family, "every field shown")
        assert not form.hidden_for_family and form.fields["model.family"].below_text == ""


async def test_a_set_value_of_another_family_stays_shown(env, synthetic_dataset):
    app = app_for(make_profile(env, synthetic_dataset, model={"family": "flux", "clip_skip": 2},
                               optimization={"min_snr_gamma": 5.0}))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        await pilot.pause()
        assert "model.clip_skip" not in form.hidden_for_family and form.fields["model.clip_skip"].display
        assert "optimization.min_snr_gamma" not in form.hidden_for_family
        # the run's checks say at the field that FLUX ignores it
        await until(pilot, lambda: form.checks_settled and form.fields["optimization.min_snr_gamma"].warning)
        assert "no effect on flow-matching models" in form.fields["optimization.min_snr_gamma"].warning
        assert "model.v_parameterization" in form.hidden_for_family
        # back to its default: out of sight once the field is left
        await edit(pilot, form, "model.clip_skip", "1")
        assert "model.clip_skip" not in form.hidden_for_family  # not while it is being edited
        await pilot.press("escape")
        await pilot.pause()
        assert "model.clip_skip" in form.hidden_for_family and not form.fields["model.clip_skip"].display


async def test_auto_family_hides_what_the_detected_model_does_not_use(env, synthetic_dataset):
    model = env / "fluxdir"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')  # the header names the family
    app = app_for(make_profile(env, synthetic_dataset, model={"base_model": str(model)}))
    async with app.run_test(size=(120, 40)) as pilot:
        form = app.form
        await until(pilot, lambda: form.checks_settled and form.query_one(PlanPanel).detected_family == "flux")
        await pilot.pause()
        assert form.form_family() == "flux" and form.valid.model.family == "auto"
        assert "family      flux (auto)" in str(form.query_one(PlanPanel).render())  # the plan says what was found
        assert {"model.v_parameterization", "model.clip_skip"} <= form.hidden_for_family
        assert "model.t5xxl" not in form.hidden_for_family
        # the files a transformer-only model needs are in sight (not folded), under their names
        for key, label in (("model.clip_l", "CLIP-L"), ("model.t5xxl", "T5-XXL"), ("model.ae", "AE (FLUX VAE)")):
            assert not form.fields[key].info.advanced and form.fields[key].display
            assert str(form.fields[key].query_one(".label").render()) == label
        assert form.fields["model.family"].below_text.startswith("FLUX.1: ")
