from __future__ import annotations

import os

import pytest

from loratui.engine.fsutil import TMP_PREFIX, atomic_dir, atomic_write_text, remove_leftovers
from loratui.engine.plan import plan_steps


def test_guide_example_25_images_20_epochs_batch_1():
    assert plan_steps(25, batch_size=1, grad_accum=1, epochs=20).total_steps == 500


def test_repeats_batch_accumulation_and_max_steps():
    p = plan_steps(30 * 10, batch_size=2, grad_accum=2, epochs=8)
    assert (p.batches_per_epoch, p.steps_per_epoch, p.total_steps) == (150, 75, 600)
    capped = plan_steps(300, batch_size=2, grad_accum=1, epochs=8, max_train_steps=400)
    assert capped.total_steps == 400 and capped.max_steps_cap and capped.epochs == 3
    odd = plan_steps(7, batch_size=2, grad_accum=1, epochs=1)
    assert odd.steps_per_epoch == 4  # the last, smaller batch still counts
    assert "= 4 steps" in odd.describe()


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_write_failure_keeps_old_file(tmp_path):
    from loratui.engine.fsutil import atomic_save

    target = tmp_path / "a.bin"
    target.write_bytes(b"old")

    def writer(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_save(target, writer)
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_dir_and_leftovers(tmp_path):
    target = tmp_path / "state"
    atomic_dir(target, lambda d: (d / "x").write_text("1"))
    atomic_dir(target, lambda d: (d / "y").write_text("2"))
    assert sorted(p.name for p in target.iterdir()) == ["y"]
    (tmp_path / f"{TMP_PREFIX}abc.safetensors").write_bytes(b"partial")
    (tmp_path / f"{TMP_PREFIX}dir").mkdir()
    removed = remove_leftovers(tmp_path)
    assert len(removed) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]
