"""Tiny model files with real headers, written without torch: a folder laid out
as kohya_ss / the WebUIs do (checkpoints/, vae/, lora/, text_encoders/) with one
file of each family, each precision, a LoRA with ss_* metadata and broken files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8}
U = "model.diffusion_model."
VAE = {"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)}


def write_safetensors(path: Path, tensors: dict[str, tuple[int, ...]], dtype: str = "F16",
                      metadata: dict[str, str] | None = None, dtypes: dict[str, str] | None = None) -> Path:
    header: dict = {}
    off = 0
    for name, shape in tensors.items():
        dt = (dtypes or {}).get(name, dtype)
        n = SIZES[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + bytes(off))
    return path


CHECKPOINTS = {
    "sd1": {**VAE, U + "input_blocks.0.0.weight": (32, 4, 3, 3),
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (77, 768)},
    "sd2": {**VAE, U + "input_blocks.0.0.weight": (32, 4, 3, 3), "cond_stage_model.model.token_embedding.weight": (8, 4)},
    "sdxl": {**VAE, U + "input_blocks.0.0.weight": (32, 4, 3, 3), U + "label_emb.0.0.weight": (8, 16),
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
             "conditioner.embedders.1.model.positional_embedding": (77, 1280)},
}

LORA_META = {
    "ss_sd_model_name": "sd_xl_base_1.0.safetensors",
    "ss_base_model_version": "sdxl_base_v1-0",
    "ss_network_module": "networks.lora",
    "ss_network_dim": "16",
    "ss_network_alpha": "8.0",
    "ss_epoch": "4",
    "ss_num_epochs": "8",
    "ss_output_name": "mychar_v1",
    "ss_tag_frequency": json.dumps({"10_mychar": {"mychar": 20, "1girl": 15, "smile": 4, "solo": 9}}),
}


def write_models_folder(root: Path) -> dict[str, Path]:
    """One file per case; returns them by a short name."""
    out: dict[str, Path] = {}
    prec = {"sd1": "F32", "sd2": "BF16", "sdxl": "F16"}
    for fam, tensors in CHECKPOINTS.items():
        out[fam] = write_safetensors(root / "checkpoints" / f"{fam}_model.safetensors", tensors, prec[fam])
    out["fp8"] = write_safetensors(root / "checkpoints" / "sdxl_fp8.safetensors", CHECKPOINTS["sdxl"], "F8_E4M3")
    out["vae"] = write_safetensors(root / "vae" / "sdxl_vae.safetensors",
                                   {"encoder.conv_in.weight": (8, 3, 3, 3), "decoder.conv_in.weight": (8, 4, 3, 3)})
    out["lora"] = write_safetensors(root / "lora" / "mychar_v1.safetensors", {
        "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (16, 64),
        "lora_unet_input_blocks_4_1_proj_in.lora_up.weight": (64, 16),
        "lora_unet_input_blocks_4_1_proj_in.alpha": (),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (16, 32),
    }, metadata=LORA_META)
    out["clip_l"] = write_safetensors(root / "text_encoders" / "clip_l.safetensors", {
        "text_model.embeddings.token_embedding.weight": (16, 768), "text_model.final_layer_norm.weight": (768,)})
    out["t5"] = write_safetensors(root / "text_encoders" / "t5xxl_fp8.safetensors", {
        "shared.weight": (8, 4096), "encoder.block.0.layer.0.SelfAttention.q.weight": (4, 4)}, "F8_E4M3")
    full = write_safetensors(root / "checkpoints" / "cut_short.safetensors", CHECKPOINTS["sd1"], "F32")
    data = full.read_bytes()
    full.write_bytes(data[: len(data) - 100])
    out["truncated"] = full
    (root / "lora" / "login_page.safetensors").write_bytes(b"<!DOCTYPE html><html><body>Sign in</body></html>")
    out["html"] = root / "lora" / "login_page.safetensors"
    return out
