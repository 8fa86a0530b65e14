"""Aspect-ratio buckets against sd-scripts' numbers."""

from __future__ import annotations

import pytest

from loratui.engine.buckets import BucketManager, center_crop_offset, cover_size, make_bucket_resolutions
from loratui.engine.schema import DatasetSettings

# sd-scripts' make_bucket_resolutions((512, 512)) with its defaults (min 256, max 1024, step 64)
SD_SCRIPTS_512 = [
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256), (1024, 256),
]  # fmt: skip


def test_512_bucket_list_is_sd_scripts_list():
    assert make_bucket_resolutions((512, 512), 256, 1024, 64) == SD_SCRIPTS_512


def test_every_bucket_respects_area_step_and_sides():
    for reso, lo, hi, step in [((512, 512), 256, 1024, 64), ((1024, 1024), 256, 2048, 64), ((768, 512), 320, 960, 32)]:
        buckets = make_bucket_resolutions(reso, lo, hi, step)
        square = int((reso[0] * reso[1]) ** 0.5 // step * step)
        assert (square, square) in buckets
        for w, h in buckets:
            assert w % step == 0 and h % step == 0
            assert w * h <= reso[0] * reso[1]
            if (w, h) != (square, square):
                assert lo <= w <= hi and lo <= h <= hi
            assert (h, w) in buckets  # symmetric


def test_sdxl_buckets_include_the_well_known_ones():
    buckets = make_bucket_resolutions((1024, 1024), 256, 2048, 64)
    for b in [(1024, 1024), (896, 1152), (1152, 896), (832, 1216), (1216, 832), (768, 1344), (1344, 768)]:
        assert b in buckets


@pytest.mark.parametrize(
    "size, bucket, resized",
    [
        ((512, 512), (512, 512), (512, 512)),
        ((1024, 1024), (512, 512), (512, 512)),
        ((1000, 500), (704, 320), (704, 352)),  # AR 2.0 → nearest 2.2
        ((500, 1000), (320, 704), (352, 704)),
        ((600, 800), (448, 576), (448, 597)),  # AR 0.75 → 0.778
        ((1920, 1080), (640, 384), (683, 384)),  # AR 1.78 → 1.667 (error .11 vs .42 for 2.2)
        ((1, 1), (512, 512), (512, 512)),  # upscaled
        ((100, 3000), (256, 1024), (256, 7680)),  # extreme ratio: the narrowest bucket
    ],
)
def test_select_bucket_like_sd_scripts(size, bucket, resized):
    choice = BucketManager((512, 512)).select(*size)
    assert choice.bucket == bucket
    assert choice.resized == resized
    assert choice.ar_error == pytest.approx(bucket[0] / bucket[1] - size[0] / size[1])


def test_exact_bucket_size_is_kept():
    m = BucketManager((512, 512))
    assert m.select(576, 448).bucket == (576, 448)
    assert m.select(576, 448).resized == (576, 448)


def test_no_upscale_buckets_follow_the_image():
    m = BucketManager((512, 512), no_upscale=True)
    big = m.select(2000, 1000)  # shrunk to the area, sides rounded to the step
    assert big.bucket == (640, 320) and big.resized == (640, 320)
    small = m.select(300, 200)  # below the area: not resized, cropped to the step
    assert small.bucket == (256, 192) and small.resized == (300, 200)
    tiny = m.select(1, 1)  # sd-scripts would make a 0×0 bucket
    assert tiny.bucket == (64, 64) and tiny.resized == (64, 64)


def test_disabled_buckets_crop_everything_to_the_resolution():
    m = BucketManager((512, 768), enable=False)
    for size in [(1000, 500), (10, 10), (512, 768), (3000, 3000)]:
        c = m.select(*size)
        assert c.bucket == (512, 768)
        assert c.resized[0] >= 512 and c.resized[1] >= 768
        assert min(c.resized[0] - 512, c.resized[1] - 768) == 0  # one side fits exactly


def test_cover_and_centre_crop_geometry():
    assert cover_size((161, 64), (64, 64)) == (161, 64)
    assert center_crop_offset((161, 64), (64, 64)) == (48, 0)
    assert cover_size((100, 50), (64, 64)) == (128, 64)
    assert center_crop_offset((128, 64), (64, 64)) == (32, 0)


def test_from_settings_and_problems():
    ds = DatasetSettings(resolution=768, resolution_height=512, min_bucket_reso=256, max_bucket_reso=1024)
    m = BucketManager.from_settings(ds)
    assert m.resolution == (768, 512)
    assert all(w * h <= 768 * 512 for w, h in m.resos)
    assert m.problems() == []
    ds2 = DatasetSettings(resolution=2048, max_bucket_reso=1024)
    assert [p.key for p in BucketManager.from_settings(ds2).problems()] == ["dataset.max_bucket_reso"]
    ds3 = DatasetSettings(bucket_reso_steps=12, min_bucket_reso=252, max_bucket_reso=1020)
    (p,) = BucketManager.from_settings(ds3).problems()
    assert p.key == "dataset.bucket_reso_steps" and "multiple of 8" in p.message and p.is_error


def test_a_fixed_size_off_the_8_pixel_grid_is_cut_to_it_with_a_warning():
    # kohya_ss's "512,650" without buckets, as sd-scripts takes it: the VAE keeps 512×648
    m = BucketManager.from_settings(DatasetSettings(resolution=512, resolution_height=650, enable_bucket=False))
    choice = m.select(600, 800)
    assert choice.bucket == (512, 648)
    assert choice.resized[0] >= 512 and choice.resized[1] >= 648
    assert abs(choice.resized[0] / choice.resized[1] - 600 / 800) < 0.01
    (p,) = m.problems()
    assert p.key == "dataset.resolution_height" and not p.is_error
    assert "512×650" in p.message and "512×648" in p.message
    # on the grid: nothing to say; with buckets the size is only the area (512·650), as in sd-scripts
    assert BucketManager.from_settings(DatasetSettings(resolution=512, resolution_height=648,
                                                       enable_bucket=False)).problems() == []
    bucketed = BucketManager.from_settings(DatasetSettings(resolution=512, resolution_height=650))
    assert bucketed.problems() == [] and max(w * h for w, h in bucketed.resos) <= 512 * 650
    assert all(w % 64 == 0 and h % 64 == 0 for w, h in bucketed.resos)


def test_flow_models_need_16_pixel_blocks():
    from loratui.engine.schema import profile_from_dict
    from loratui.engine.training.prepare import family_option_problems

    def keys(family, **ds):
        p = profile_from_dict({"dataset": ds})
        return {x.key: x for x in family_option_problems(p, family) if x.is_error}

    bad = keys("flux", bucket_reso_steps=8, min_bucket_reso=256, max_bucket_reso=1024)
    assert "dataset.bucket_reso_steps" in bad and "16-pixel blocks" in bad["dataset.bucket_reso_steps"].message
    assert "dataset.bucket_reso_steps" in keys("sd3", bucket_reso_steps=8, min_bucket_reso=256, max_bucket_reso=1024)
    assert keys("flux", bucket_reso_steps=32) == {} and keys("sd1", bucket_reso_steps=8) == {}
    fixed = keys("flux", enable_bucket=False, resolution=512, resolution_height=648)
    assert list(fixed) == ["dataset.resolution_height"] and "e.g. 640" in fixed["dataset.resolution_height"].hint
    assert keys("sd1", enable_bucket=False, resolution=512, resolution_height=648) == {}
