"""`loratui dataset DIR`: the report, --json, and the actions (set repeats, balance,
make a kohya folder), with their exit codes and refusals."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from loratui.engine.cli import main

REPO = Path(__file__).resolve().parent.parent


def img(path: Path, colour=(200, 30, 30), size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, colour)
    for x in range(0, size[0], 8):  # some structure so different colours/shapes hash apart
        for y in range(size[1]):
            if (x // 8 + colour[1]) % 3 == 0:
                im.putpixel((x, y), (colour[2], colour[0], colour[1]))
    im.save(path)
    return path


@pytest.fixture
def ds(tmp_path) -> Path:
    root = tmp_path / "images"
    for i in range(2):
        img(root / "10_alice" / f"a{i}.png", (40 * i + 10, 20, 200))
        (root / "10_alice" / f"a{i}.txt").write_text("alice, red dress\n", encoding="utf-8")
    for i in range(6):
        img(root / "10_bob" / f"b{i}.png", (30, 25 * i + 5, 60))
    (root / "10_bob" / "b0.txt").write_text("bob, hat\n", encoding="utf-8")
    (root / "10_bob" / "broken.png").write_bytes(b"")
    return root


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["dataset", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def test_report_text(ds, capsys):
    code, out, err = run(capsys, ds, "--resolution", 64)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"dataset   {ds}  (resolution 64")
    alice = next(line for line in lines if line.strip().startswith("10_alice"))
    bob = next(line for line in lines if line.strip().startswith("10_bob"))
    # repeats, images, captions, samples/epoch, suggested, balanced
    assert alice.split()[1:6] == ["10", "2", "2/2", "100%", "20"]
    assert bob.split()[1:6] == ["10", "6", "1/6", "16%", "60"]
    assert alice.split()[-1] == "20" and bob.split()[-1] == "7"  # balanced: 80 samples / 2 → 2×20, 6×7
    assert any("64×64" in line and "8 images" in line and "80 samples/epoch" in line for line in lines)
    tag_lines = [line.split(None, 1) for line in lines[lines.index(next(x for x in lines if x.startswith("tags"))) + 1 :]]
    assert ["2", "alice"] in tag_lines and ["6", "bob"] in tag_lines  # bob: 1 caption + 5 class-token captions
    assert any(line.split()[:1] == ["unreadable"] and "broken.png" in line for line in lines)
    assert any(line.split()[:1] == ["no-caption"] and "10_bob: 5 of 6" in line for line in lines)


def test_report_json(ds, capsys):
    code, out, _ = run(capsys, ds, "--resolution", 64, "--json")
    assert code == 0
    data = json.loads(out)["report"]
    assert [(c["folder"].rsplit(os.sep, 1)[-1], c["images"], c["captioned"]) for c in data["concepts"]] == [
        ("10_alice", 2, 2),
        ("10_bob", 6, 1),
    ]
    assert data["buckets"] == [{"bucket": [64, 64], "images": 8, "samples": 80}]
    assert data["duplicates_checked"] is True
    assert {i["kind"] for i in data["issues"]} >= {"unreadable", "no-caption"}
    assert len(data["files"]) == 9


def test_problems_give_exit_1_and_usage_errors_exit_2(tmp_path, capsys):
    code, out, _ = run(capsys, tmp_path / "missing")
    assert code == 1 and "does not exist" in out
    code, _, err = run(capsys, tmp_path, "--resolution", 32)
    assert code == 2 and "--resolution: 32 is out of range: must be ≥ 64" in err
    code, _, err = run(capsys, tmp_path, "--name", "x")
    assert code == 2 and "--name goes with --make-kohya" in err
    code, _, err = run(capsys, tmp_path, "--make-kohya", tmp_path)
    assert code == 2 and "needs --name" in err
    code, _, err = run(capsys, tmp_path, "--dry-run")
    assert code == 2


def test_set_repeats(ds, capsys):
    code, out, _ = run(capsys, ds, "--set-repeats", "alice", 6, "--dry-run")
    assert code == 0 and "would rename 10_alice → 6_alice" in out
    assert (ds / "10_alice").is_dir()
    code, out, _ = run(capsys, ds, "--set-repeats", "10_alice", 6, "--resolution", 64)
    assert code == 0 and out.startswith("renamed 10_alice → 6_alice")
    assert sorted(p.name for p in (ds / "6_alice").iterdir()) == ["a0.png", "a0.txt", "a1.png", "a1.txt"]
    code, out, _ = run(capsys, ds, "--set-repeats", "bob", 6)
    assert code == 0 and out.startswith("renamed 10_bob → 6_bob")
    # refused: the target exists; nothing changes
    (ds / "3_bob").mkdir()
    before = snapshot(ds)
    code, _, err = run(capsys, ds, "--set-repeats", "6_bob", 3)
    assert code == 1 and "3_bob already exists" in err and "hint:" in err
    assert snapshot(ds) == before
    code, _, err = run(capsys, ds, "--set-repeats", "carol", 3)
    assert code == 1 and "no concept folder 'carol'" in err


def test_balance(ds, capsys):
    before = snapshot(ds)
    code, out, _ = run(capsys, ds, "--balance", "--dry-run", "--resolution", 64)
    assert code == 0 and "would rename 10_alice → 20_alice" in out and "would rename 10_bob → 7_bob" in out
    assert snapshot(ds) == before
    code, out, _ = run(capsys, ds, "--balance", "--resolution", 64, "--json")
    data = json.loads(out)
    assert sorted(Path(v).name for v in data["action"]["balance"]["renamed"].values()) == ["20_alice", "7_bob"]
    assert sorted(p.name for p in ds.iterdir()) == ["20_alice", "7_bob"]
    code, out, _ = run(capsys, ds, "--balance", "--resolution", 64)
    assert code == 0 and out.startswith("balanced already")


def test_make_kohya(tmp_path, capsys):
    src = tmp_path / "pics"
    for i in range(3):
        img(src / f"p{i}.png", (20, 60 * i, 90))
    (src / "p1.txt").write_text("mychar, smile\n", encoding="utf-8")
    before = snapshot(src)
    dest = tmp_path / "dataset"
    code, out, err = run(capsys, dest, "--make-kohya", src, "--name", "mychar", "--resolution", 64)
    assert code == 0, err
    assert out.startswith(f"made {dest / '9_mychar'}: 3 images copied, 1 captions copied, 9 repeats (suggested)")
    assert "9_mychar" in out.split("dataset   ", 1)[1]  # then the report of the new dataset
    assert snapshot(src) == before
    code, out, err = run(capsys, dest, "--make-kohya", src, "--name", "other", "--repeats", 4, "--link", "sym", "--json")
    assert code == 0, err
    action = json.loads(out)["action"]["make_kohya"]
    assert action["repeats"] == 4 and action["mode"] == "symlink"
    assert all((dest / "4_other" / f"p{i}.png").is_symlink() for i in range(3))
    code, _, err = run(capsys, dest, "--make-kohya", src, "--name", "mychar")
    assert code == 1 and "already exists; nothing was written" in err
    assert snapshot(src) == before


def test_the_console_script_runs_headless(ds):
    # a real process: no textual import, no traceback, exit status 0
    code = (
        "import sys; from loratui.engine.cli import main; rc = main(sys.argv[1:]); "
        "sys.exit(rc if 'textual' not in sys.modules else 99)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "dataset", str(ds), "--resolution", "64", "--no-decode"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "images not decoded" in proc.stdout and "Traceback" not in proc.stderr
