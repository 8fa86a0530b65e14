"""WD14 tagger (SmilingWolf's Danbooru taggers) through onnxruntime.

Model: ``model.onnx`` + ``selected_tags.csv`` (columns tag_id,name,category,count;
category 9 = rating, 0 = general, 4 = character), from a Hub repo or a folder.

Preprocessing, as SmilingWolf's own demo (huggingface.co/spaces/SmilingWolf/wd-tagger,
which runs the v2 and the v3 taggers through the same code) and sd-scripts'
finetune/tag_images_by_wd14_tagger.py do it:

1. transparency composited onto white, image converted to RGB;
2. padded to a square with white, the image centred (left/top pad = (side - w) // 2);
3. resized to the model's input size (read from the ONNX input shape
   [batch, height, width, 3]: 448 for the v2 and v3 taggers) with bicubic filtering,
   as the demo does (sd-scripts uses area/Lanczos; the difference is a resampling detail);
4. float32 in 0-255, no mean/std normalisation;
5. channels reversed RGB -> BGR. This holds for the v3 taggers too: the demo that
   ships with them flips to BGR for every model it serves;
6. stacked NHWC.

A tag is kept when its score is >= the threshold (sd-scripts' rule; the demo uses >).
The rating is the arg-max of the rating scores.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from loratui.engine.captioners.common import CaptionError, CaptionSettings, parse_tag_list, tag_key
from loratui.engine.captioners.hub import download, looks_like_repo_id
from loratui.engine.events import Control, LogEvent, WarningEvent

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from PIL import Image as PILImage

MODEL_FILE = "model.onnx"
TAGS_FILE = "selected_tags.csv"
FILES_WHAT = f"{MODEL_FILE} and {TAGS_FILE}"

RATING, GENERAL, CHARACTER = 9, 0, 4

# Tags whose underscore is part of the face (the list SmilingWolf's demo keeps).
KAOMOJIS = frozenset(
    {
        "0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
        ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||",
    }
)  # fmt: skip


def display_tag(name: str, replace_underscores: bool = True) -> str:
    if not replace_underscores or name in KAOMOJIS:
        return name
    return name.replace("_", " ")


# --------------------------------------------------------------------------- model files


@dataclass(frozen=True)
class TagList:
    names: list[str]
    categories: list[int]
    rating: list[int] = field(default_factory=list)
    general: list[int] = field(default_factory=list)
    character: list[int] = field(default_factory=list)


def load_tags(path: str | Path) -> TagList:
    """Read selected_tags.csv. Raises CaptionError naming the file on any problem."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise CaptionError(f"{path} is empty", hint="it should be the selected_tags.csv that came with model.onnx")
    header = [h.strip().lower() for h in rows[0]]
    if "name" not in header or "category" not in header:
        raise CaptionError(
            f"{path}: expected a header with 'name' and 'category' columns (tag_id,name,category,count), "
            f"got {','.join(rows[0])}"
        )
    i_name, i_cat = header.index("name"), header.index("category")
    names: list[str] = []
    cats: list[int] = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        try:
            names.append(row[i_name])
            cats.append(int(row[i_cat]))
        except (IndexError, ValueError):
            raise CaptionError(f"{path}, line {lineno}: expected name and a numeric category, got {row!r}") from None
    tl = TagList(names, cats)
    for i, c in enumerate(cats):
        {RATING: tl.rating, GENERAL: tl.general, CHARACTER: tl.character}.get(c, []).append(i)
    if not tl.general and not tl.character:
        raise CaptionError(f"{path} has no general (0) or character (4) tags")
    return tl


def resolve_model(
    model: str, *, on_event: Callable[[object], None], control: Control
) -> tuple[Path, Path]:
    """(model.onnx, selected_tags.csv) for a local folder / model.onnx path / Hub repo id."""
    p = Path(model).expanduser()
    if p.is_file() and p.suffix.lower() == ".onnx":
        onnx_path, csv_path = p, p.with_name(TAGS_FILE)
        if not csv_path.is_file():
            raise CaptionError(f"{csv_path} is missing", hint=f"put the tagger's {TAGS_FILE} next to {p.name}")
        return onnx_path, csv_path
    if p.is_dir():
        missing = [f for f in (MODEL_FILE, TAGS_FILE) if not (p / f).is_file()]
        if missing:
            raise CaptionError(
                f"{p} has no {' and no '.join(missing)}",
                hint=f"a WD14 tagger folder holds {FILES_WHAT} (as in the SmilingWolf/wd-* repos)",
            )
        return p / MODEL_FILE, p / TAGS_FILE
    if p.exists():
        raise CaptionError(f"{p} is neither a folder nor a .onnx file", hint=f"pass a folder with {FILES_WHAT}")
    if not looks_like_repo_id(model):
        raise CaptionError(
            f"model folder {model} does not exist",
            hint=f"pass a folder with {FILES_WHAT}, or a Hub repo id such as SmilingWolf/wd-vit-tagger-v3",
        )
    files = download(model, [TAGS_FILE, MODEL_FILE], what=FILES_WHAT, on_event=on_event, control=control)
    return files[MODEL_FILE], files[TAGS_FILE]


# --------------------------------------------------------------------------- onnxruntime


def _nvidia_present() -> bool:
    """An NVIDIA driver here: its /proc entry, any /dev/nvidiaN (a container given GPU 1 only
    has /dev/nvidia1), or WSL2's GPU device (/dev/dxg, no /dev/nvidia*)."""
    import glob

    return (os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/dxg")
            or bool(glob.glob("/dev/nvidia[0-9]*")))


def open_session(onnx_path: Path, device: str = "auto") -> tuple[object, list[str]]:
    """An InferenceSession on the CUDA provider when asked for / available, else
    the CPU. Returns (session, notes) — notes say why the GPU was not used."""
    import onnxruntime as ort

    notes: list[str] = []
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not want_cuda:
        notes.append("this onnxruntime has no CUDA provider (install onnxruntime-gpu); tagging on the CPU")
    if want_cuda and device == "auto" and not _nvidia_present():
        want_cuda = False
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if want_cuda else ["CPUExecutionProvider"]
    if want_cuda:
        # The CUDA/cuDNN libraries may come from the nvidia-* pip packages torch installed.
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            ort.preload_dlls()
        ort.set_default_logger_severity(4)  # a failing CUDA provider logs errors; we report it ourselves
    try:
        session = ort.InferenceSession(str(onnx_path), providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptionError(
            f"cannot load {onnx_path}: {first}",
            hint="the file may be incomplete or not an ONNX model; download it again",
        ) from None
    finally:
        if want_cuda:
            ort.set_default_logger_severity(2)  # onnxruntime's default (warnings)
    if want_cuda and "CUDAExecutionProvider" not in session.get_providers():
        notes.append(
            "onnxruntime could not start its CUDA provider (CUDA/cuDNN libraries of the version this "
            "onnxruntime-gpu was built for were not found); tagging on the CPU"
        )
    return session, notes


@dataclass
class WD14Tagger:
    session: object
    tags: TagList
    input_name: str
    output_name: str
    size: int
    model_batch: int | None  # fixed batch dimension of the model, None when dynamic
    settings: CaptionSettings
    provider: str = "CPUExecutionProvider"
    on_event: Callable[[object], None] = field(default=lambda e: None, repr=False)

    @classmethod
    def load(
        cls,
        settings: CaptionSettings,
        *,
        on_event: Callable[[object], None] = lambda e: None,
        control: Control | None = None,
    ) -> "WD14Tagger":
        control = control or Control()
        model = settings.model_id()
        onnx_path, csv_path = resolve_model(model, on_event=on_event, control=control)
        tags = load_tags(csv_path)
        session, notes = open_session(onnx_path, settings.device)
        for n in notes:
            on_event(WarningEvent(n))
        inp = session.get_inputs()[0]
        out = session.get_outputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise CaptionError(
                f"{onnx_path}: input shape {shape} is not [batch, size, size, 3]",
                hint="this is not a WD14-style tagger (NHWC input expected)",
            )
        if inp.type != "tensor(float)":
            raise CaptionError(f"{onnx_path}: input type {inp.type}, expected float32")
        n_out = out.shape[-1] if out.shape else None
        if isinstance(n_out, int) and n_out != len(tags.names):
            raise CaptionError(
                f"{csv_path.name} lists {len(tags.names)} tags but {onnx_path.name} scores {n_out}",
                hint="the two files come from different taggers; take both from the same repo",
            )
        model_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        provider = session.get_providers()[0]
        on_event(LogEvent(f"WD14 tagger {model}: input {shape[1]}x{shape[2]}, {len(tags.names)} tags, {provider}"))
        return cls(session, tags, inp.name, out.name, int(shape[1]), model_batch, settings, provider, on_event)

    # -- inference ---------------------------------------------------------------
    def predict(self, batch: "np.ndarray") -> "np.ndarray":
        """Scores [N, tags] for a preprocessed NHWC batch."""
        try:
            return self._predict(batch)
        except Exception as exc:
            # Some exported taggers say "any batch" but only run one image at a time
            # (and a GPU short of memory may manage one image where it failed on many).
            if batch.shape[0] < 2 or self.model_batch is not None:
                raise
            import numpy as np

            scores = self._predict(batch[:1])
            self.model_batch = 1
            why = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            self.on_event(
                LogEvent(f"the tagger failed on {batch.shape[0]} images at once ({why}) but runs one image at a "
                         "time; batch size set to 1")
            )
            return np.concatenate([scores, self._predict(batch[1:])])

    def _predict(self, batch: "np.ndarray") -> "np.ndarray":
        import numpy as np

        n = batch.shape[0]
        step = self.model_batch or n
        outs = []
        for start in range(0, n, step):
            chunk = batch[start : start + step]
            if self.model_batch and chunk.shape[0] < step:  # fixed-batch model: pad the last chunk
                pad = np.zeros((step - chunk.shape[0], *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            res = self.session.run([self.output_name], {self.input_name: chunk})[0]
            outs.append(np.asarray(res, dtype=np.float32)[: min(step, n - start)])
        return np.concatenate(outs)

    def caption(self, images: Sequence["PILImage.Image"]) -> list[list[str]]:
        import numpy as np

        if not images:
            return []
        batch = np.stack([preprocess(im, self.size) for im in images])
        return [scores_to_tags(s, self.tags, self.settings) for s in self.predict(batch)]

    def close(self) -> None:
        self.session = None


# --------------------------------------------------------------------------- pre/post-processing


def preprocess(image: "PILImage.Image", size: int) -> "np.ndarray":
    """One RGB (or any-mode) image -> float32 [size, size, 3], BGR, 0-255."""
    import numpy as np
    from PIL import Image

    from loratui.engine.captioners.images import to_rgb

    im = to_rgb(image)
    w, h = im.size
    side = max(w, h)
    if (w, h) != (side, side):
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(im, ((side - w) // 2, (side - h) // 2))
        im = square
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1])


def scores_to_tags(scores: "Sequence[float]", tags: TagList, settings: CaptionSettings) -> list[str]:
    """The caption's tags for one image's scores (trigger word not included)."""
    excluded = {tag_key(t) for t in parse_tag_list(settings.exclude)}
    rep = settings.replace_underscores

    def pick(indexes: list[int], threshold: float) -> list[str]:
        hits = [i for i in indexes if float(scores[i]) >= threshold]
        hits.sort(key=lambda i: -float(scores[i]))  # most confident first; stable for ties
        return [display_tag(tags.names[i], rep) for i in hits if tag_key(tags.names[i]) not in excluded]

    general = pick(tags.general, settings.general_threshold)
    character = pick(tags.character, settings.character_threshold)
    body = character + general if settings.character_first else general + character
    if settings.rating != "none" and tags.rating:
        best = max(tags.rating, key=lambda i: float(scores[i]))
        if tag_key(tags.names[best]) not in excluded:
            r = display_tag(tags.names[best], rep)
            body = [r, *body] if settings.rating == "first" else [*body, r]
    return body
