"""The plan panel beside the form: the dataset report and the step calculator."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import work
from textual.message import Message
from textual.widgets import Static

from loratui.engine.plan import DatasetReport, StepPlan
from loratui.tui.widgets.plan_estimate import add_rows as add_estimate_rows


def render_plan(
    *,
    family: str,
    report: DatasetReport | None,
    plan: StepPlan | None,
    scanning: bool = False,
    scan_error: str = "",
    width: int = 32,
    compact: bool = False,
    problems: Sequence[str] = (),
    estimate=None,
) -> Text:
    """The panel's text. ``compact`` (80×24): three lines, the steps first.
    ``problems``: what else stops a run (model, output folder, LoRA weights,
    resume), from ``prepare_run``. ``estimate``: a ``plan_estimate.EstimateView``."""
    if compact:
        t = _render_compact(family, report, plan, scanning, scan_error)
        if estimate is not None and estimate.rows:
            t.append("\n" + "  ".join(f"{label.removeprefix('est. ')} {value}" for label, value, _ in estimate.rows[:1]
                                       + [r for r in estimate.rows if r[0] == "est. time"]), style="dim")
        for p in problems[:2]:
            t.append(f"\n✗ {p}", style="red")
        return t
    t = Text(no_wrap=False, overflow="fold")

    def row(label: str, value: str, style: str = "") -> None:
        t.append(f"{label:<12}", style="dim")
        t.append(value + "\n", style=style)

    row("family", family)
    if scan_error:
        t.append(scan_error + "\n", style="red")
    elif report is None:
        t.append(("scanning the dataset…" if scanning else "no dataset folder set") + "\n", style="dim italic")
    else:
        concepts = report.concepts
        row("concepts", f"{len(concepts)}" + ("  (scanning…)" if scanning else ""))
        name_w = max(8, width - 22)
        for c in concepts + report.reg_concepts:
            folder = f"{c.repeats}_{c.name}"
            if len(folder) > name_w:
                folder = folder[: name_w - 1] + "…"
            t.append(f" {folder:>{name_w}} {c.images:>4} img ", style="")
            if c.unreadable:
                t.append(f"{len(c.unreadable)} bad", style="red")
            elif c.missing_captions:
                t.append(f"{c.missing_captions} no cap", style="yellow")
            else:
                t.append("✓ caps", style="green")
            if c.is_reg:
                t.append(" reg", style="dim")
            t.append("\n")
        row("images", f"{report.images}" + (f"  {report.missing_captions} uncaptioned" if report.missing_captions else ""))
        for p in report.problems[:6]:
            t.append(f"✗ {p}\n", style="red")
        for w in report.warnings[:4]:
            t.append(f"! {w}\n", style="yellow")
    if plan is not None:
        row("images×rep", f"{plan.images_x_repeats:,} per epoch" + (f" +{plan.reg_samples} reg" if plan.reg_samples else ""))
        row("epochs", f"{plan.epochs}")
        row("batch × acc", f"{plan.batch_size} × {plan.grad_accum}")
        t.append("─" * max(8, width - 2) + "\n", style="dim")
        row("steps/epoch", f"{plan.steps_per_epoch:,}")
        row("steps", f"{plan.total_steps:,}" + ("  (max steps)" if plan.max_steps_cap else ""), style="bold")
        add_estimate_rows(t, row, estimate, width)
    for p in problems[:6]:
        t.append(f"✗ {p}\n", style="red")
    t.rstrip()
    return t


def _render_compact(family, report, plan, scanning, scan_error) -> Text:
    t = Text(no_wrap=True, overflow="ellipsis")
    if plan is not None:
        t.append(f"{plan.total_steps:,} steps", style="bold")
        t.append(
            f" = {plan.images_x_repeats:,} img×rep" + (f" +{plan.reg_samples} reg" if plan.reg_samples else "")
            + f" × {plan.epochs} epochs ÷ batch {plan.batch_size} ÷ acc {plan.grad_accum}"
            + (" (max steps)" if plan.max_steps_cap else ""),
            style="",
        )
        t.append("\n")
    t.append(f"family {family}  ", style="dim")
    if scan_error:
        t.append(scan_error, style="red")
    elif report is None:
        t.append("scanning the dataset…" if scanning else "no dataset folder set", style="dim italic")
    else:
        t.append(f"{len(report.concepts)} concept{'s' if len(report.concepts) != 1 else ''} · {report.images} images")
        if report.missing_captions:
            t.append(f" · {report.missing_captions} uncaptioned", style="yellow")
        bad = sum(len(c.unreadable) for c in report.concepts)
        if bad:
            t.append(f" · {bad} unreadable", style="red")
        for p in report.problems[:2]:
            t.append(f"\n✗ {p}", style="red")
        if not report.problems:
            for w in report.warnings[:1]:
                t.append(f"\n! {w}", style="yellow")
    return t


class PlanPanel(Static):
    """Shows what ``render_plan`` gives; the training screen feeds it."""

    class Checked(Message):
        """The checks of ``check_profile`` are in ``PlanPanel.problems``."""

    DEFAULT_CSS = """
    PlanPanel { height: 1fr; }
    """

    def __init__(self, **kw):
        super().__init__("", **kw)
        self.family = "auto"
        self.report: DatasetReport | None = None
        self.plan: StepPlan | None = None
        self.scanning = False
        self.scan_error = ""
        self.compact = False
        self.problems: list[str] = []
        self.found: list = []  # the same checks as engine Problems (their keys mark the form's fields)
        self.detected_family: str | None = None  # the family the last check found the base model to be
        self.found_warnings: list = []  # the checks' warnings (Problems) about a setting, e.g. one the family ignores
        self._checking = None  # the profile whose checks run now
        self.estimate = None  # plan_estimate.EstimateView of the last checked profile
        self._checking_estimate = None  # the profile whose estimate is being made
        self._last: str | None = None

    def show(self, **changes) -> None:
        for k, v in changes.items():
            setattr(self, k, v)
        family = self.family
        if family in ("auto", "") and self.detected_family:
            family = f"{self.detected_family} (auto)"  # what the checks found the base model to be
        text = render_plan(
            family=family,
            report=self.report,
            plan=self.plan,
            scanning=self.scanning,
            scan_error=self.scan_error,
            width=max(24, self.size.width or 32),
            compact=self.compact,
            problems=self.problems,
            estimate=self.estimate,
        )
        if text.markup != self._last:  # a redraw only when something changed
            self._last = text.markup
            self.update(text, layout=False)  # fixed size: no relayout of the long form

    def on_resize(self) -> None:
        self._last = None
        self.show()

    def check_profile(self, profile, scan=None) -> None:
        """Run the checks a training run starts with (``prepare_run``: the same
        as `loratui check`) off the UI thread; show what stops a run. Only the
        newest profile's result is shown. ``scan``: a scan of exactly
        ``profile.dataset`` already made (else the dataset is scanned again)."""
        self._checking = profile
        self._checking_estimate = profile
        self._check_worker(profile, scan)

    @work(thread=True, exclusive=True, group="plan-checks", exit_on_error=False)
    def _check_worker(self, profile, scan) -> None:
        from loratui.engine.training.prepare import prepare_run

        # overwrite: an existing final LoRA is no problem here — Start asks before replacing it
        prepared = prepare_run(profile, overwrite=True, scan=scan)
        found = [p for p in prepared.problems if p not in prepared.report.problems]
        warned = [p for p in prepared.profile_warnings if not p.is_error and p.key]
        self.app.call_from_thread(self._checked, profile, found, prepared.model.family, warned)
        view = None
        if profile is self._checking_estimate:  # (compute says why not, e.g. the model has problems)
            from loratui.tui.widgets.plan_estimate import compute

            busy = lambda: bool(getattr(self.app, "run_active", False))  # noqa: E731 - a run wants the CPU
            view = compute(prepared, getattr(self.app, "gpu_monitor", None), busy)
        self.app.call_from_thread(self._estimated, profile, view)

    def _estimated(self, profile, view) -> None:
        if profile is self._checking_estimate:
            self.show(estimate=view)

    def _checked(self, profile, found: list, family: str | None = None, warned: list | None = None) -> None:
        if profile is self._checking:
            self._checking = None
            self.found = found
            self.detected_family = family
            self.found_warnings = warned or []
            self.show(problems=[str(p) for p in found])
            self.post_message(self.Checked())

    @property
    def checking(self) -> bool:
        """A check of the form's profile is running."""
        return self._checking is not None
