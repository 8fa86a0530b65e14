"""Tiny caption models built offline, for tests and the demo.

``save_tiny_wd14(folder)``: a WD14-shaped ONNX tagger (NHWC float32 input
[batch, size, size, 3] in 0-255 BGR, sigmoid scores out) + its selected_tags.csv.
Its scores are a fixed function of the image's mean colour, so a plain red,
green, blue or white image gets known tags:

    score(tag) = sigmoid(W[:, tag] . mean_bgr / 255 + b[tag])

``save_tiny_blip(folder)``: a BlipForConditionalGeneration with a 1-layer
vision and text model, random (seeded) weights and a small word-level
BertTokenizer vocabulary; it writes word salads of exactly ``max_length - 1``
words (it never emits the end token), deterministically.
"""

from __future__ import annotations

from pathlib import Path

# (name, category, weights for mean B, G, R in 0..1, bias)
TINY_WD14_TAGS: list[tuple[str, int, tuple[float, float, float], float]] = [
    ("general", 9, (2.0, 0.0, 0.0), 0.0),
    ("sensitive", 9, (0.0, 0.0, 3.0), 0.0),
    ("questionable", 9, (0.0, 0.0, 0.0), -1.0),
    ("explicit", 9, (0.0, 0.0, 0.0), -2.0),
    ("red_theme", 0, (-4.0, -4.0, 4.0), 0.0),
    ("blue_theme", 0, (4.0, -4.0, -4.0), 0.0),
    ("green_theme", 0, (-4.0, 4.0, -4.0), 0.0),
    ("white_background", 0, (2.0, 2.0, 2.0), -4.0),
    ("^_^", 0, (0.0, 0.0, 2.0), -1.5),
    ("long_hair", 0, (0.0, 0.0, 2.0), -1.0),
    ("dim_tag", 0, (0.0, 0.0, 0.0), -0.2),
    ("hatsune_miku", 4, (0.0, 4.0, 0.0), -1.0),
    ("kagamine_rin", 4, (0.0, 1.5, 0.0), 0.0),
]


def tiny_wd14_scores(rgb_mean: tuple[float, float, float]) -> dict[str, float]:
    """The scores the tiny tagger gives an image whose mean colour is ``rgb_mean`` (0-255)."""
    import math

    r, g, b = (c / 255.0 for c in rgb_mean)
    out = {}
    for name, _cat, (wb, wg, wr), bias in TINY_WD14_TAGS:
        z = wb * b + wg * g + wr * r + bias
        out[name] = 1.0 / (1.0 + math.exp(-z))
    return out


def save_tiny_wd14(
    folder: str | Path, size: int = 32, batch: int | None = None, one_at_a_time: bool = False
) -> Path:
    """Write ``model.onnx`` + ``selected_tags.csv`` to ``folder``. ``batch``: a
    fixed batch dimension (None: dynamic, as the real taggers). ``one_at_a_time``:
    declare a dynamic batch but fail on more than one image, as some exports do."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    k = len(TINY_WD14_TAGS)
    w = np.array([t[2] for t in TINY_WD14_TAGS], dtype=np.float32).T  # [3, K]
    b = np.array([t[3] for t in TINY_WD14_TAGS], dtype=np.float32)
    n = batch if batch else "batch"
    x = helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [n, size, size, 3])
    y = helper.make_tensor_value_info("predictions_sigmoid", TensorProto.FLOAT, [n, k])
    inits = [
        numpy_helper.from_array(np.array([255.0], dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "B"),
    ]
    nodes = [
        helper.make_node("Div", ["input_1:0", "scale"], ["x01"]),
        helper.make_node("ReduceMean", ["x01", "axes"], ["mean"], keepdims=0),
        helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "B"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["predictions_sigmoid"]),
    ]
    if one_at_a_time:
        inits.append(numpy_helper.from_array(np.array([1, k], dtype=np.int64), "one_row"))
        nodes[-1] = helper.make_node("Reshape", ["logits", "one_row"], ["logits1"])
        nodes.append(helper.make_node("Sigmoid", ["logits1"], ["predictions_sigmoid"]))
    graph = helper.make_graph(nodes, "tiny_wd14", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], producer_name="loratui-tiny")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(folder / "model.onnx"))
    lines = ["tag_id,name,category,count"]
    for i, (name, cat, _w, _b) in enumerate(TINY_WD14_TAGS):
        lines.append(f"{1000 + i},{name},{cat},{100 - i}")
    (folder / "selected_tags.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


TINY_BLIP_WORDS = (
    "a photo of the an with on in and is red green blue yellow white black circle square triangle "
    "shape shapes background plain picture drawing small large toy colour bright dark simple "
    "two one there at next to"
).split()


def save_tiny_blip(folder: str | Path, seed: int = 0, image_size: int = 32, max_positions: int = 24) -> Path:
    """Write a tiny BLIP captioner (model + BlipProcessor) with ``save_pretrained``."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:  # the Pillow backend (no torchvision needed, no warning about it)
        from transformers import BlipImageProcessorPil as BlipImageProcessor
    except ImportError:  # older transformers
        from transformers import BlipImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = specials + list(TINY_BLIP_WORDS)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    ids = {t: i for i, t in enumerate(vocab)}
    import inspect

    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5
        tokenizer = BertTokenizer(vocab=ids, do_lower_case=True, bos_token="[DEC]")
    else:  # transformers 4
        tokenizer = BertTokenizer(vocab_file=str(vocab_file), do_lower_case=True, bos_token="[DEC]")
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(vocab),
            hidden_size=32,
            encoder_hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=max_positions,
            bos_token_id=ids["[DEC]"],
            eos_token_id=ids["[SEP]"],
            pad_token_id=ids["[PAD]"],
            sep_token_id=ids["[SEP]"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
            initializer_range=0.5,  # the default (1e-10) makes every image look the same
        ),
        projection_dim=32,
        image_text_hidden_size=32,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    # Random weights: make the special tokens unlikely so captions are words, and
    # the end token too, so every caption runs to max_length (known lengths in tests).
    with torch.no_grad():
        bias = model.text_decoder.cls.predictions.bias
        for t in specials:
            bias[ids[t]] = -1e4
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder
