"""The training form's plan: the dataset scan (in a worker thread, again when a
dataset folder changes on disk), the step plan on every keystroke, and the
checks `loratui train` makes (``prepare_run``) once the typing settles.

``PlanChecks`` is a part of ``TrainingScreen`` (a mixin); its message handlers go
by name (``on_scan_done``...), which Textual finds on every class of the screen.
"""

from __future__ import annotations

import os
from typing import Any

from textual import work
from textual.message import Message

from loratui.engine.schema import DatasetSettings
from loratui.tui.widgets.plan import PlanPanel


class ScanDone(Message):
    def __init__(self, key: tuple, result: Any, error: str, settings: DatasetSettings | None = None) -> None:
        super().__init__()
        self.key = key
        self.result = result
        self.error = error
        self.settings = settings  # what was scanned


class DatasetChanged(Message):
    """A dataset folder changed on disk."""


class PlanChecks:
    """The plan panel's side of the form (part of ``TrainingScreen``)."""

    def _dataset_module(self):
        if self._dataset_api is None:
            try:
                import loratui.engine.dataset as mod

                self._dataset_api = mod
            except ImportError:
                self._dataset_api = False
        return self._dataset_api or None

    def _scan_settings(self) -> DatasetSettings:
        ds = self.best_effort().dataset
        return ds.model_copy(
            update={
                "train_data_dir": os.path.expanduser(ds.train_data_dir.strip()),
                "reg_data_dir": os.path.expanduser(ds.reg_data_dir.strip()),
            }
        )

    def _request_scan(self, immediate: bool = False) -> None:
        if self._scan_timer is not None:
            self._scan_timer.stop()
            self._scan_timer = None
        if immediate:
            self._start_scan()
        else:
            self._scan_timer = self.set_timer(0.3, self._start_scan)

    def _start_scan(self) -> None:
        self._scan_timer = None
        if not self.query(PlanPanel):  # the timer outlived the screen's widgets (the app is quitting)
            return
        ds = self._scan_settings()
        key = (ds.train_data_dir, ds.reg_data_dir, ds.caption_extension)
        self._scan_key = key
        if not ds.train_data_dir:
            self._scan_result, self._scan_error, self._scan_used = None, "", None
            self._scan_signature = None
            self._update_plan()
            self._update_status_line()
            return
        panel = self.query_one(PlanPanel)
        panel.show(scanning=True)
        self._scan_worker(ds, key)

    @work(thread=True, exclusive=True, group="scan", exit_on_error=False)
    def _scan_worker(self, ds: DatasetSettings, key: tuple) -> None:
        signature = dataset_signature(ds)
        mod = self._dataset_module()
        if mod is None:
            self.post_message(ScanDone(key, None, "the dataset scanner is not available (engine.dataset)"))
            return
        try:
            result = mod.scan_dataset(ds)
        except Exception as exc:  # the scanner reports problems in its report; anything else lands here
            self.post_message(ScanDone(key, None, f"cannot scan {ds.train_data_dir}: {exc}"))
            return
        self._scan_signature = signature
        self.post_message(ScanDone(key, result, "", ds))

    def on_scan_done(self, event: ScanDone) -> None:
        if event.key != self._scan_key:
            return  # an older folder
        self._scan_result, self._scan_error, self._scan_used = event.result, event.error, event.settings
        self.query_one(PlanPanel).show(scanning=False)
        self._update_plan()
        self._mark_fields()
        self._update_status_line()

    def _update_plan(self) -> None:
        panel = self.query_one(PlanPanel)
        profile = self.best_effort()
        family = profile.model.family
        scan = self._scan_result
        report = getattr(scan, "report", None)
        plan = None
        if scan is not None:
            mod = self._dataset_module()
            try:
                plan = mod.plan_for(profile, scan) if mod else None
            except Exception:  # a half-typed value (batch 0): plan with the last valid settings
                try:
                    plan = mod.plan_for(self._last_good, scan) if mod else None
                except Exception:
                    plan = None
        panel.show(family=family, report=report, plan=plan, scan_error=self._scan_error)
        self._request_checks()

    def _request_checks(self) -> None:
        """After the typing settles: the checks `loratui train` and `loratui check`
        make before loading a model (prepare_run: model file, output folder,
        network weights, resume state), in the plan panel."""
        if self._checks_timer is not None:
            self._checks_timer.stop()
        self._checks_timer = self.set_timer(0.5, self._run_checks)

    def on_plan_panel_checked(self, event: PlanPanel.Checked) -> None:
        self._mark_fields()
        self._update_status_line()
        self._show_family_fields()  # the family the check detected (model.family auto)

    @property
    def checks_settled(self) -> bool:
        """The plan panel shows the checks of the form as it is now."""
        panel = self.query_one(PlanPanel)
        return self._checks_timer is None and not panel.checking and not panel.scanning

    def _run_checks(self) -> None:
        self._checks_timer = None
        panel = next(iter(self.query(PlanPanel)), None)
        if panel is None:  # the timer outlived the screen's widgets (the app is quitting)
            return
        if self.valid is None or not self.valid.dataset.train_data_dir:
            panel.show(problems=[], found=[])
            self._mark_fields()
        elif not panel.scanning:  # (a scan in progress asks for the checks again when it is done)
            # the form's own scan when it is of exactly these settings, else prepare_run scans
            same = self._scan_result is not None and self._scan_used == self.valid.dataset
            panel.check_profile(self.valid, scan=self._scan_result if same else None)

    def _watch_dataset(self) -> None:
        """Every 2 s: rescan when a dataset folder changed on disk."""
        try:
            current = self.app.screen is self
        except Exception:  # noqa: BLE001 - the app is shutting down (no screen on the stack)
            return
        if not current or self._scan_signature is None or self._scan_key is None:
            return
        self._check_signature()

    @work(thread=True, exclusive=True, group="watch", exit_on_error=False)
    def _check_signature(self) -> None:
        ds = self._scan_settings()
        if dataset_signature(ds) != self._scan_signature:
            self.post_message(DatasetChanged())

    def on_dataset_changed(self, event: DatasetChanged) -> None:
        self._request_scan(immediate=True)


def dataset_signature(ds: DatasetSettings) -> tuple:
    """Modification times of the dataset folders and their concept folders: adding,
    removing or renaming an image or a caption changes one of them."""
    out = []
    for root in (ds.train_data_dir, ds.reg_data_dir):
        if not root:
            continue
        try:
            out.append((root, os.stat(root).st_mtime_ns))
            with os.scandir(root) as it:
                for e in it:
                    if e.is_dir():
                        out.append((e.path, e.stat().st_mtime_ns))
        except OSError:
            out.append((root, None))
    return tuple(sorted(out, key=lambda x: x[0]))
