"""bench/gpu_check.py: its dry run (tiny models, CPU) is part of the suite, so
the script the first GPU run depends on cannot rot; its FLOP count and peak table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

import gpu_check  # noqa: E402


def test_the_dry_run_prints_every_row_and_runs_what_a_cpu_can(tmp_path, capsys):
    rc = gpu_check.main(["--dry-run", "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    assert [r["name"] for r in rows] == [name for name, _ in gpu_check.ROWS]
    assert all(r["name"] in out and r["target"] in out for r in rows)
    assert "DRY RUN" in out.splitlines()[0]
    streamed = out.split("\nfigure")[0]  # each row printed as it was measured, before the table
    assert all(f"  {r['name']}: " in streamed for r in rows), streamed
    broken = [r for r in rows if r["result"] in ("FAIL", "error", "skipped")]
    assert not broken and rc == 0, broken
    by = {r["name"]: r for r in rows}
    for name in ("MFU SD1.5 512² batch 1", "MFU SD1.5 512² batch 8", "MFU SDXL 1024² batch 1", "MFU SDXL 1024² batch 4"):
        value = by[name]["value"]
        assert value.endswith("TFLOP/s") and float(value.split()[0]) > 0, by[name]
        assert "TFLOP/step" in by[name]["note"] and "ms/step" in by[name]["note"]
    assert float(by["engine ÷ minimal diffusers+peft loop, SD1.5 512² b1"]["value"]) > 0
    assert by["WD14 tagger on onnxruntime CUDA"]["value"].startswith("CPUExecutionProvider")
    flux = by["FLUX.1-dev 1024² b1 fp8 base: peak VRAM"]  # the guide's FLUX settings train the tiny FLUX
    assert flux["result"] == "n/a" and flux["note"].endswith("ms/step on the tiny FLUX (dry run)"), flux
    for name in ("fp16 + grad scaler", "AdamW8bit", "peak VRAM SDXL 1024² b1, low-VRAM profile",
                 "MFU SDXL 1024² batch 4, torch.compile", "FLUX.1-dev 1024² b1 fp8 base, blocks_to_swap 16: peak VRAM"):
        assert by[name]["result"] == "n/a" and "needs CUDA" in by[name]["note"]


def test_full_size_sd15_step_flops_on_the_meta_device():
    b1 = gpu_check.step_flops("sd15", 512, 1, None)
    b2 = gpu_check.step_flops("sd15", 512, 2, None)
    # U-Net forward + backward to its input at 512² is about 2 × 0.8 TFLOP; the text encoder adds little
    assert 1.0e12 < b1 < 3.0e12, b1
    assert b2 == pytest.approx(2 * b1, rel=0.01)


@pytest.mark.parametrize("name, tflops", [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                          ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                          ("NVIDIA GeForce RTX 4090", 165.0), ("NVIDIA L4", 121.0),
                                          ("NVIDIA L40S", 362.0), ("Some Other Card", None)])
def test_peak_table_by_nvml_name(name, tflops):
    assert gpu_check.peak_tflops(name) == tflops


def test_a_row_that_would_end_past_the_budget_is_skipped_and_rows_reach_the_file_as_they_come(tmp_path):
    seen = []
    c = gpu_check.Check(dry=False, budget=30.0, steps=1, on_row=seen.append)
    name = "MFU SDXL 1024² batch 4, torch.compile"
    c.row(name, lambda: ("1", True, ""), cost=240.0)
    c.row("bf16", lambda: ("4 steps", True, ""))
    assert [r.result for r in seen] == ["skipped", "pass"]
    assert "~240 s more would pass the 30 s budget" in seen[0].note
    gpu_check.write_json(tmp_path / "rows.json", "cpu", c.rows)
    assert [r["name"] for r in json.loads((tmp_path / "rows.json").read_text())["rows"]] == [name, "bf16"]
