"""engine.inspection: the dataset inspection, suggested repeats, balancing, and the
edits (repeats, captions, kohya folder) that must never lose a file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loratui.engine.dataset import scan_dataset
from loratui.engine.schema import DatasetSettings
from loratui.engine.inspection import (
    NEAR_DUPLICATE_BITS,
    InspectError,
    apply_balance,
    dataset_settings,
    find_concept,
    hash_distance,
    image_fingerprint,
    inspect_dataset,
    load_caption,
    make_kohya_folder,
    save_caption,
    set_repeats,
    suggest_epochs,
    suggest_repeats,
)


def photo(path: Path, size=(96, 96), seed=0, fmt=None, quality=None) -> Path:
    """A smooth picture with structure (gradients + blobs), like a photo for the hashes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for c in range(3):
        for _ in range(4):
            cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(w / 6, w / 2)
            img[..., c] += rng.uniform(60, 200) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    img = np.clip(img, 0, 255).astype(np.uint8)
    kw = {"quality": quality} if quality else {}
    Image.fromarray(img).save(path, format=fmt, **kw)
    return path


def flat(path: Path, colour, size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def tree(root: Path) -> dict[str, str]:
    """Every file under root → sha256 (+ the folder listing), to prove nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


@pytest.fixture
def ds(tmp_path) -> Path:
    """images/10_alice: 4 photos (3 captioned) + an exact copy + a JPEG re-encode + 3 bad files;
    images/3_bob: 6 photos (96×96), one 192×64 and one tiny 16×16; all captioned."""
    root = tmp_path / "images"
    a = root / "10_alice"
    for i in range(4):
        photo(a / f"a{i}.png", seed=i)
    for i in range(3):
        (a / f"a{i}.txt").write_text(f"alice, smile, tag{i}\n", encoding="utf-8")
    (a / "copy_of_a0.png").write_bytes((a / "a0.png").read_bytes())
    photo(a / "a1_reencoded.jpg", seed=1, fmt="JPEG", quality=85)
    (a / "empty.png").write_bytes(b"")
    (a / "notes.png").write_text("this is not a picture\n")
    data = (a / "a2.png").read_bytes()
    (a / "cut.png").write_bytes(data[: len(data) // 2])
    b = root / "3_bob"
    for i in range(4):
        photo(b / f"b{i}.png", seed=100 + i)
    photo(b / "wide.png", size=(192, 64), seed=200)
    photo(b / "tiny.png", size=(16, 16), seed=201)
    for p in b.glob("*.png"):
        p.with_suffix(".txt").write_text("bob, smile\n", encoding="utf-8")
    return root


# --------------------------------------------------------------------------- inspection


def test_concepts_captions_buckets_tags(ds):
    # a profile's dataset section gives the bucket settings (its folder is replaced by the one given)
    settings = DatasetSettings(train_data_dir="elsewhere", resolution=128, min_bucket_reso=64, max_bucket_reso=256)
    insp = inspect_dataset(ds, settings=settings)
    assert insp.resolution == 128 and insp.root == ds
    by = {c.folder_name: c for c in insp.concepts}
    assert set(by) == {"10_alice", "3_bob"}
    alice, bob = by["10_alice"], by["3_bob"]
    assert (alice.repeats, alice.images, alice.captioned, alice.unreadable) == (10, 6, 3, 3)
    assert alice.missing_captions == 3 and alice.coverage == 0.5
    assert (bob.repeats, bob.images, bob.captioned) == (3, 6, 6)
    assert insp.samples_per_epoch == 6 * 10 + 6 * 3
    # buckets at 128 px (sides 64…256, step 64): the 3:1 image gets the 192×64 bucket
    wide = next(im for im in insp.images if im.name == "wide.png")
    assert wide.size == (192, 64) and wide.bucket == (192, 64) and not wide.tiny
    square = next(im for im in insp.images if im.name == "b0.png")
    assert square.bucket == (128, 128) and square.size == (96, 96)
    table = {b: (n, s) for b, n, s in insp.bucket_table()}
    assert sum(n for n, _ in table.values()) == 12
    assert sum(s for _, s in table.values()) == insp.samples_per_epoch
    # tag table: "smile" is in every caption; uncaptioned alice images train as "alice"
    tags = dict(insp.tag_table())
    assert tags["smile"] == 3 + 6
    assert tags["alice"] == 6  # 3 captions say it, 3 images have only the class tokens
    assert tags["bob"] == 6 and tags["tag0"] == 1
    assert insp.tag_table()[0][1] >= insp.tag_table()[-1][1]
    assert dict(insp.tag_table("3_bob")) == {"bob": 6, "smile": 6}
    assert sorted(p.name for p in insp.missing_caption_images()) == ["a1_reencoded.jpg", "a3.png", "copy_of_a0.png"]


def test_problems_unreadable_tiny_duplicates(ds):
    insp = inspect_dataset(ds, resolution=128)
    bad = {im.name: im.problem for im in insp.images if im.problem}
    assert set(bad) == {"empty.png", "notes.png", "cut.png"}
    assert "0 bytes" in bad["empty.png"] and "text" in bad["notes.png"] and "truncated" in bad["cut.png"]
    tiny = [im.name for im in insp.images if im.tiny]
    assert tiny == ["tiny.png"]  # 16×16 enlarged 8× to a 128×128 bucket
    exact = [g for g in insp.duplicates if g.kind == "exact"]
    near = [g for g in insp.duplicates if g.kind == "near"]
    assert [sorted(p.name for p in g.paths) for g in exact] == [["a0.png", "copy_of_a0.png"]]
    assert [sorted(p.name for p in g.paths) for g in near] == [["a1.png", "a1_reencoded.jpg"]]
    assert 0 <= near[0].distance <= NEAR_DUPLICATE_BITS
    kinds = [i.kind for i in insp.issues()]
    assert kinds.count("unreadable") == 3 and kinds.count("tiny") == 1
    assert kinds.count("duplicate") == 1 and kinds.count("near-duplicate") == 1
    assert kinds.count("no-caption") == 1  # one line for alice
    # the issues name the files
    text = "\n".join(i.message for i in insp.issues())
    assert "copy_of_a0.png" in text and "tiny.png" in text and "cut.png" in text
    # the scan's summary warnings for the same things are not repeated
    assert not any("unreadable image(s)" in w for w in map(str, insp.warnings))
    json.dumps(insp.to_dict())  # all plain data


def test_distinct_pictures_are_not_near_duplicates(tmp_path):
    root = tmp_path / "ds"
    for i in range(8):
        photo(root / "1_x" / f"p{i}.png", seed=10 + i)
    flat(root / "1_x" / "red.png", (220, 30, 30))
    flat(root / "1_x" / "blue.png", (30, 30, 220))  # same (zero) dHash as red, different colour
    insp = inspect_dataset(root, resolution=64)
    assert insp.duplicates == []
    r, _ = image_fingerprint(root / "1_x" / "red.png")
    b, _ = image_fingerprint(root / "1_x" / "blue.png")
    assert hash_distance(r, b) == 0  # only the colour check keeps them apart


def test_damage_inside_the_file_is_found_by_the_decode(tmp_path):
    root = tmp_path / "ds"
    p = photo(root / "2_x" / "ok.png", seed=1)
    broken = root / "2_x" / "broken.png"
    data = bytearray(photo(tmp_path / "src.png", seed=2).read_bytes())
    mid = len(data) // 2
    data[mid : mid + 40] = bytes(40)  # zero a run of compressed pixel data; the file ends as a PNG should
    broken.write_bytes(bytes(data))
    quick = inspect_dataset(root, resolution=64, decode=False)
    assert {im.name for im in quick.images if im.problem} == set()  # headers look fine
    assert not quick.decoded
    full = inspect_dataset(root, resolution=64)
    assert {im.name: bool(im.problem) for im in full.images} == {"broken.png": True, "ok.png": False}
    assert "corrupt" in next(im.problem for im in full.images if im.name == "broken.png")
    c = full.concepts[0]
    assert (c.images, c.unreadable) == (1, 1)
    assert p.exists()


def test_missing_folder_and_flat_folder_come_back_as_problems(tmp_path):
    insp = inspect_dataset(tmp_path / "nope")
    assert insp.concepts == [] and "does not exist" in str(insp.problems[0])
    for i in range(5):
        photo(tmp_path / "pics" / f"{i}.png", seed=i)
    insp = inspect_dataset(tmp_path / "pics")
    assert insp.problems and "--make-kohya" in insp.hints[0] and "suggested repeats 5" in insp.hints[0]


def test_bad_resolution_is_refused_with_the_reason(tmp_path):
    with pytest.raises(InspectError, match="must be ≥ 64"):
        dataset_settings(tmp_path, 32)
    # any size from 64 up is an area for the buckets (as in sd-scripts); the largest bucket covers it
    assert dataset_settings(tmp_path, 500).resolution == 500
    assert dataset_settings(tmp_path, 1100).max_bucket_reso == 1152
    with pytest.raises(InspectError, match="caption_extension"):
        dataset_settings(tmp_path, 512, "txt")


# --------------------------------------------------------------------------- guidance


def test_suggested_repeats_follow_the_product_numbers():
    assert [suggest_epochs(n) for n in (5, 20, 30, 50, 80, 150)] == [15, 15, 8, 8, 5, 3]
    for n in (5, 10, 15, 20, 25, 40, 60):
        s = suggest_repeats(n)
        assert s.repeats >= 1 and s.steps == n * s.repeats * s.epochs
        assert 100 <= s.steps <= 750, (n, s)  # character 100–400 / style 300–750
    big = suggest_repeats(150)
    assert 1000 <= big.steps <= 2000  # careful LoRA from 100+ images
    assert suggest_repeats(10).repeats == 3  # 10 × 3 × 15 = 450
    assert suggest_repeats(25, epochs=20).repeats == 1  # PRODUCT: 25 images, 20 epochs → 500 steps
    assert suggest_repeats(0).steps == 0


def test_balance_plan_is_the_training_rule_and_apply_renames(tmp_path):
    root = tmp_path / "ds"
    for i in range(2):
        flat(root / "10_few" / f"f{i}.png", (10 * i, 0, 0))
    for i in range(8):
        flat(root / "10_many" / f"m{i}.png", (0, 10 * i, 0))
    insp = inspect_dataset(root, resolution=64, decode=False)
    plan = insp.balance_plan()
    scan = scan_dataset(dataset_settings(root, 64).model_copy(update={"balance_concepts": True}))
    assert {str(k): v for k, v in plan.items()} == scan.adjusted_repeats  # same rule as training
    # 2×10 + 8×10 = 100 samples; 50 each: 2×25, 8×6
    assert {k.name: v for k, v in plan.items()} == {"10_few": (10, 25), "10_many": (10, 6)}
    before = tree(root)
    done = apply_balance(plan)
    assert sorted(p.name for p in done.values()) == ["25_few", "6_many"]
    after = tree(root)
    assert sorted(v for v in after.values()) == sorted(v for v in before.values())  # same files, renamed folders
    again = inspect_dataset(root, resolution=64, decode=False)
    assert again.balance_plan() == {}


def test_apply_balance_checks_every_target_first(tmp_path):
    root = tmp_path / "ds"
    flat(root / "10_few" / "f.png", (1, 2, 3))
    for i in range(4):
        flat(root / "10_many" / f"m{i}.png", (0, 10 * i, 0))
    (root / "4_many").mkdir()  # where 10_many would go: blocks the plan
    (root / "4_many" / "keep.txt").write_text("mine")
    blocked = {root / "10_few": (10, 20), root / "10_many": (10, 4)}  # 20_few is free, 4_many is not
    before = tree(root)
    with pytest.raises(InspectError, match="already exists; nothing was renamed"):
        apply_balance(blocked)
    assert tree(root) == before


# --------------------------------------------------------------------------- edits


def test_set_repeats_renames_and_refuses_an_existing_target(tmp_path):
    root = tmp_path / "ds"
    photo(root / "10_x" / "a.png")
    (root / "6_x").mkdir()
    (root / "6_x" / "other.png").write_bytes(b"keep me")
    before = tree(root)
    with pytest.raises(InspectError, match="6_x already exists"):
        set_repeats(root / "10_x", 6)
    assert tree(root) == before
    new = set_repeats(root / "10_x", 4)
    assert new == root / "4_x" and (new / "a.png").is_file() and not (root / "10_x").exists()
    assert set_repeats(new, 4) == new  # no change
    with pytest.raises(InspectError, match="out of range"):
        set_repeats(new, 0)
    with pytest.raises(InspectError, match="not a whole number"):
        set_repeats(new, "many")
    (root / "plain").mkdir()
    with pytest.raises(InspectError, match="no <repeats>_ prefix"):
        set_repeats(root / "plain", 3)


def test_find_concept(tmp_path):
    root = tmp_path / "ds"
    for name in ("10_alice", "3_bob", "5_bob"):
        (root / name).mkdir(parents=True)
    assert find_concept(root, "10_alice") == root / "10_alice"
    assert find_concept(root, "alice") == root / "10_alice"
    assert find_concept(root, str(root / "3_bob")) == root / "3_bob"
    with pytest.raises(InspectError, match="names 2 folders"):
        find_concept(root, "bob")
    with pytest.raises(InspectError, match="there are: 10_alice, 3_bob, 5_bob"):
        find_concept(root, "carol")


def test_save_caption_is_atomic_and_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    img = photo(tmp_path / "1_x" / "a.png")
    cap = tmp_path / "1_x" / "a.txt"
    assert load_caption(img) == ("", None)
    assert save_caption(img, "  alice, smile \n\n") == cap
    assert cap.read_text(encoding="utf-8") == "alice, smile\n"
    os.chmod(cap, 0o640)
    save_caption(img, "alice, frown")
    assert cap.read_text(encoding="utf-8") == "alice, frown\n" and (cap.stat().st_mode & 0o777) == 0o640
    assert load_caption(img) == ("alice, frown", None)

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(InspectError, match="No space left"):
        save_caption(img, "this never lands")
    monkeypatch.undo()
    assert cap.read_text(encoding="utf-8") == "alice, frown\n"
    assert sorted(p.name for p in cap.parent.iterdir()) == ["a.png", "a.txt"]  # no temporary left


def test_caption_found_case_insensitively_and_non_utf8_is_warned(tmp_path):
    img = photo(tmp_path / "1_x" / "b.png")
    odd = tmp_path / "1_x" / "b.TXT"
    odd.write_bytes("caf\xe9, cr\xe8me".encode("cp1252"))
    text, warning = load_caption(img)
    assert text == "café, crème" and "UTF-8" in warning
    save_caption(img, text)
    assert odd.read_text(encoding="utf-8") == "café, crème\n"
    assert not (tmp_path / "1_x" / "b.txt").exists() or (tmp_path / "1_x" / "b.txt").samefile(odd)


def test_make_kohya_folder_copy_never_touches_the_source(tmp_path):
    src = tmp_path / "pics"
    for i in range(4):
        photo(src / f"p{i}.png", seed=i)
    (src / "p0.txt").write_text("mychar, smile\n", encoding="utf-8")
    (src / "P1.TXT").write_text("mychar, hat\n", encoding="utf-8")  # matched ignoring case, as the scan does
    (src / "broken.png").write_bytes(b"")
    (src / "sub").mkdir()
    before = tree(src)
    res = make_kohya_folder(src, tmp_path / "dataset", "mychar")
    assert tree(src) == before
    assert res.repeats == suggest_repeats(4).repeats == 7 and res.images == 4 and res.captions == 2
    assert res.folder == tmp_path / "dataset" / "7_mychar"
    assert [s.split(":")[0] for s in res.skipped] == ["broken.png"]
    assert sorted(p.name for p in res.folder.iterdir()) == ["p0.png", "p0.txt", "p1.png", "p1.txt", "p2.png", "p3.png"]
    assert (res.folder / "p2.png").read_bytes() == (src / "p2.png").read_bytes()
    assert not os.path.samefile(res.folder / "p2.png", src / "p2.png")
    # editing the caption in the new folder leaves the source's alone
    save_caption(res.folder / "p0.png", "changed")
    assert (src / "p0.txt").read_text(encoding="utf-8") == "mychar, smile\n"
    insp = inspect_dataset(tmp_path / "dataset", resolution=64, decode=False)
    assert [(c.folder_name, c.images, c.captioned) for c in insp.concepts] == [("7_mychar", 4, 2)]
    # never replaces an existing folder
    with pytest.raises(InspectError, match="already exists; nothing was written"):
        make_kohya_folder(src, tmp_path / "dataset", "mychar")
    assert not any(p.name.startswith(".loratui") for p in (tmp_path / "dataset").iterdir())


def test_make_kohya_folder_links(tmp_path):
    src = tmp_path / "pics"
    for i in range(2):
        photo(src / f"p{i}.png", seed=i)
    (src / "p0.txt").write_text("x\n")
    hard = make_kohya_folder(src, tmp_path / "ds", "hard", repeats=5, mode="hardlink")
    assert hard.folder.name == "5_hard"
    assert os.path.samefile(hard.folder / "p0.png", src / "p0.png")
    assert not os.path.samefile(hard.folder / "p0.txt", src / "p0.txt")  # captions are always copies
    sym = make_kohya_folder(src, tmp_path / "ds", "sym", repeats=2, mode="symlink")
    link = sym.folder / "p1.png"
    assert link.is_symlink() and Path(os.readlink(link)) == (src / "p1.png").resolve()
    save_caption(hard.folder / "p0.png", "edited")
    assert (src / "p0.txt").read_text() == "x\n"


def test_make_kohya_folder_refusals(tmp_path):
    src = tmp_path / "pics"
    photo(src / "a.png")
    with pytest.raises(InspectError, match="inside the source folder"):
        make_kohya_folder(src, src, "x")
    with pytest.raises(InspectError, match="inside the source folder"):
        make_kohya_folder(src, src / "out", "x")
    with pytest.raises(InspectError, match="name"):
        make_kohya_folder(src, tmp_path / "d", "a/b")
    with pytest.raises(InspectError, match="does not exist"):
        make_kohya_folder(tmp_path / "none", tmp_path / "d", "x")
    (tmp_path / "nested" / "inner").mkdir(parents=True)
    photo(tmp_path / "nested" / "inner" / "a.png")
    with pytest.raises(InspectError, match="no images") as exc:
        make_kohya_folder(tmp_path / "nested", tmp_path / "d", "x")
    assert "inner" in exc.value.hint
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
