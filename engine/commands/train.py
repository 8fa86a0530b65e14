"""`loratui train PROFILE.toml [--set section.key=value ...]` — headless training."""

from __future__ import annotations

import argparse
import signal
import sys

NAME = "train"
HELP = "train a LoRA from a profile, headless (progress on stdout, final path last)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("profile", help="profile .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a setting, e.g. --set network.network_dim=16 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing final LoRA of the same name")
    p.add_argument("--resume", metavar="STATE_DIR", default=None, help="resume from a saved state folder (<name>-state-stepNNNNNNNN), or 'latest' for the newest one of this output name")
    p.add_argument("--gpus", type=int, metavar="N", default=None,
                   help="train on N GPUs of this machine, data-parallel (the same as --set compute.processes=N; "
                        "on a machine without a GPU, N CPU processes)")


def load_for_cli(path: str, overrides: list[str]):
    """Load + validate a profile; print the problems and return None when invalid."""
    from loratui.engine.schema import ProfileError, load_profile, resolve_paths

    try:
        return resolve_paths(load_profile(path, overrides))
    except ProfileError as exc:
        print(f"{path}: {len(exc.problems)} problem(s):" if len(exc.problems) > 1 else "", file=sys.stderr, end="\n" if len(exc.problems) > 1 else "")
        for line in exc.problems:
            print(f"  {line}" if len(exc.problems) > 1 else line, file=sys.stderr)
        return None


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.gpus is not None:
        if args.gpus < 1:
            print(f"loratui train: --gpus {args.gpus}: give the number of GPUs to use, 1 or more", file=sys.stderr)
            return 2
        overrides.append(f"compute.processes={args.gpus}")
    profile = load_for_cli(args.profile, overrides)
    if profile is None:
        return 2
    if profile.compute.world_size > 1:
        return run_launched(profile, args)
    from loratui.engine.console import ConsolePrinter
    from loratui.engine.run import start_run

    handle = start_run(profile, overwrite=args.overwrite, resume=args.resume)
    printer = ConsolePrinter()
    signals = _Signals(handle.control)
    old_int = signal.signal(signal.SIGINT, signals.on_sigint)
    old_term = signal.signal(signal.SIGTERM, signals.on_sigterm)
    try:
        result = None
        for ev in handle.iter_events():
            printer(ev)
            result = ev
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    handle.join()
    return _finish(result)


def _finish(result) -> int:
    """Print the LoRA a run ended with (the last line of `loratui train`); its exit code."""
    from loratui.engine.events import Finished

    if isinstance(result, Finished):
        if result.path:
            _diffusers_note(result.path)
            print(result.path)
            return 0
        last = result.summary.get("last_saved", "")
        if last:
            print(last)
        return 3  # stopped before the end
    return 1


class _Signals:
    """Ctrl+C once: stop at the next step boundary with a save; twice: abort. SIGTERM: stop."""

    def __init__(self, control):
        self.control = control
        self.interrupts = 0

    def on_sigint(self, signum, frame) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            print("\nstopping: saving at the next step boundary (Ctrl+C again to abort without saving)", file=sys.stderr)
            self.control.stop()
        else:
            self.control.abort()

    def on_sigterm(self, signum, frame) -> None:
        self.control.stop()


def run_launched(profile, args: argparse.Namespace) -> int:
    """More than one process: start them through accelerate's launcher and
    follow the run's metrics file; Ctrl+C and SIGTERM go through its control file."""
    from loratui.engine.console import ConsolePrinter
    from loratui.engine.control_file import control_path, send
    from loratui.engine.events import TERMINAL_EVENTS, Failed, Finished, Request
    from loratui.engine.launch import launch
    from loratui.engine.metrics import MetricsTail

    c = profile.compute
    try:
        launched = launch(profile, resume=args.resume, overwrite=args.overwrite)
    except OSError as exc:
        print(f"loratui train: output.output_dir: cannot prepare the run folder: {exc}", file=sys.stderr)
        return 1
    where = f"{c.world_size} processes" + (f" on {c.machines} machines (this is machine {c.machine_rank})" if c.machines > 1 else "")
    print(f"started {where} through accelerate launch; their output: {launched.log_path}", file=sys.stderr)
    ctl = control_path(profile.output.output_dir, profile.output.output_name)
    interrupts = 0

    def ask(req: Request, reason: str) -> None:
        try:
            send(ctl, req, reason)
        except OSError as exc:
            print(f"loratui train: cannot write {ctl}: {exc}; stopping the processes", file=sys.stderr)
            launched.signal()

    def on_sigint(signum, frame) -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            print("\nstopping: saving at the next step boundary (Ctrl+C again to abort without saving)", file=sys.stderr)
            ask(Request.STOP, "Ctrl+C")
        elif interrupts == 2:
            ask(Request.ABORT, "Ctrl+C twice")
        else:
            launched.signal(signal.SIGKILL)

    old_int = signal.signal(signal.SIGINT, on_sigint)
    old_term = signal.signal(signal.SIGTERM, lambda *_: ask(Request.STOP, "SIGTERM"))
    printer = ConsolePrinter()
    tail = MetricsTail(launched.metrics_path) if c.machine_rank == 0 else None
    result = None
    try:
        while True:
            ended = launched.poll() is not None
            for ev in tail.read()[0] if tail is not None else []:
                if ev.time < launched.started - 1:
                    continue  # an earlier run's events
                printer(ev)
                result = ev if isinstance(ev, TERMINAL_EVENTS) else result
            if ended:
                break
            try:
                launched.wait(0.25)
            except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
                pass
        launched.finish()
        if tail is not None and not isinstance(result, TERMINAL_EVENTS):
            for ev in tail.read()[0]:
                printer(ev)
                result = ev if isinstance(ev, TERMINAL_EVENTS) else result
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    if tail is None:  # not the main machine: the processes' exit code says it
        bad = launched.failure()
        if bad:
            print(f"loratui train: {bad[0]} — {bad[1]}", file=sys.stderr)
        return 0 if bad is None else 1
    if not isinstance(result, (Finished, Failed)):
        bad = launched.failure() or ("the run ended without a word", f"see {launched.log_path}")
        printer(Failed(message=bad[0], hint=bad[1]))
    return _finish(result)


def _diffusers_note(path: str) -> None:
    """An SD3 LoRA: say how diffusers gets to load it (it cannot read sd-scripts' SD3 names)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            version = str((f.metadata() or {}).get("ss_base_model_version", ""))
    except (OSError, ValueError, RuntimeError, SafetensorError):  # a note only: never what decides the exit code
        return
    if version.startswith("sd3"):
        print(f"note: AUTOMATIC1111/Forge and ComfyUI load it as it is; for diffusers' load_lora_weights, "
              f"`loratui convert {path} --to diffusers` writes a copy it reads", file=sys.stderr)
