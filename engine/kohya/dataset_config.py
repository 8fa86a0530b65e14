"""sd-scripts ``--dataset_config`` TOML: import it (one dataset, its subsets as
``<repeats>_<name>`` concept folders) and write one for a profile's concept folders.

Which keys are dataset-level and which subset options loratui applies to every
concept comes from the settings' declarations (``setting(sd_dataset=...)``).

Cheap to import: no torch.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from loratui.engine.kohya.builder import Builder, report_other
from loratui.engine.kohya.keys import OFF_VALUES, concept_dir, dataset_keys, show, subset_keys
from loratui.engine.kohya.special import map_resolution
from loratui.engine.problems import Problem, warning
from loratui.engine.schema import Profile
from loratui.engine.schema.coerce import BadValue, blank, same, to_int, truthy


# --------------------------------------------------------------------------- dataset config

def map_dataset_config(data: dict[str, Any], b: Builder, path: Path, prefix: str) -> None:
    dataset_options, subset_options = dataset_keys(), subset_keys()
    general = data.get("general") if isinstance(data.get("general"), dict) else {}
    datasets = data.get("datasets") if isinstance(data.get("datasets"), list) else []
    for k, v in data.items():
        if k not in ("general", "datasets"):
            b.unsupported_(f"{prefix}{k}", v, "not a dataset_config table ([general] or [[datasets]])")
    if not datasets:
        b.unsupported_(f"{prefix}datasets", None, "no [[datasets]] table: no images to train on")
        return
    for i, extra in enumerate(datasets[1:], start=1):
        subs = [s.get("image_dir") for s in extra.get("subsets", []) if isinstance(s, dict)]
        b.unsupported_(
            f"{prefix}datasets[{i}]", subs,
            "loratui trains one dataset (one resolution and batch size); only datasets[0] was imported — "
            "move these folders beside the others to train them",
        )
    ds = datasets[0] if isinstance(datasets[0], dict) else {}
    subsets = [s for s in ds.get("subsets", []) if isinstance(s, dict)]

    # dataset-level settings: the dataset's value beats [general]
    layers = [("general", general), ("datasets[0]", {k: v for k, v in ds.items() if k != "subsets"})]
    seen: dict[str, tuple[str, Any]] = {}
    for where, table in layers:
        for k, v in table.items():
            if k in seen and where == "datasets[0]":
                prev_where, prev_v = seen[k]
                b.ignore(f"{prefix}{prev_where}.{k}", prev_v, f"overridden by datasets[0].{k}")
            seen[k] = (where, v)
    subset_level = {}
    for k, (where, v) in seen.items():
        key = f"{prefix}{where}.{k}"
        if k == "resolution":
            map_resolution(b, key, v)
        elif k in dataset_options:
            b.put(dataset_options[k], v, key)
        elif k in subset_options or k in ("num_repeats", "class_tokens", "is_reg", "image_dir") or k in OFF_VALUES or k in ("color_aug", "random_crop"):
            subset_level[k] = (key, v)  # a default for the subsets
        else:
            report_other(b, key, v)

    train = [s for s in subsets if not truthy(s.get("is_reg"))]
    reg = [s for s in subsets if truthy(s.get("is_reg"))]
    for idx, sub in enumerate(subsets):
        if "is_reg" in sub:
            b.mapped.append((f"{prefix}datasets[0].subsets[{idx}].is_reg", sub["is_reg"],
                             "dataset.reg_data_dir" if truthy(sub["is_reg"]) else "a training concept"))
    if not train:
        b.unsupported_(f"{prefix}datasets[0].subsets", None, "no training subset (all are regularization or none given)")

    # subset options loratui applies to every concept: the first training subset decides
    for opt, dotted in subset_options.items():
        values = []
        for idx, s in enumerate(subsets):
            if opt in s:
                values.append((f"{prefix}datasets[0].subsets[{idx}].{opt}", s[opt], s in train))
        default = subset_level.pop(opt, None)
        chosen = None
        if train and opt in train[0]:
            chosen = (f"{prefix}datasets[0].subsets[{subsets.index(train[0])}].{opt}", train[0][opt])
        elif default is not None:
            chosen = default
        if chosen is None:
            for key, v, _ in values:
                b.unsupported_(key, v, f"only on some subsets; loratui applies one {opt} to all concepts and kept its default")
            continue
        if not (opt == "caption_extension" and blank(chosen[1])):
            if blank(chosen[1]):
                b.ignore(chosen[0], chosen[1], "empty")
            elif opt == "caption_extension":
                ext = str(chosen[1]).strip()
                b.put(dotted, chosen[1], chosen[0], ext if ext.startswith(".") else "." + ext)
            else:
                b.put(dotted, chosen[1], chosen[0])
        else:
            b.ignore(chosen[0], chosen[1], "empty: loratui reads .txt captions")
        if default is not None and default is not chosen:
            b.ignore(default[0], default[1], f"overridden by {chosen[0]}")
        for key, v, is_train in values:
            if key == chosen[0]:
                continue
            if same(v, chosen[1]):
                b.mapped.append((key, v, dotted))
            elif not is_train:
                b.ignore(key, v, "regularization subset; loratui uses the training subsets' setting")
            else:
                b.unsupported_(key, v, f"differs from {chosen[0]} = {show(chosen[1])}; loratui applies one value to all concepts")

    for k, (key, v) in subset_level.items():
        if k == "num_repeats":
            b.mapped.append((key, v, "(default repeats of the subsets)"))
        elif k in OFF_VALUES or k in ("color_aug", "random_crop"):
            report_other(b, key, v)
        else:
            b.ignore(key, v, "a subset default; see the subsets")

    default_repeats = subset_level.get("num_repeats", (None, 1))[1]
    train_dir = _map_subsets(b, train, subsets, prefix, default_repeats, reg=False)
    reg_dir = _map_subsets(b, reg, subsets, prefix, default_repeats, reg=True)
    if train_dir is not None:
        b.values["dataset.train_data_dir"] = train_dir
    if reg_dir is not None:
        b.values["dataset.reg_data_dir"] = reg_dir


def _map_subsets(b: Builder, group: list[dict], subsets: list[dict], prefix: str, default_repeats: Any, reg: bool) -> str | None:
    """Map subsets onto one <root>/<repeats>_<name> folder; returns the root (as written)."""
    kind = "regularization" if reg else "training"
    root: str | None = None
    listed: set[str] = set()
    for s in group:
        idx = subsets.index(s)
        where = f"{prefix}datasets[0].subsets[{idx}]"
        image_dir = s.get("image_dir")
        handled = {"image_dir", "num_repeats", "class_tokens", "is_reg", *subset_keys()}
        for k, v in s.items():
            if k not in handled:
                report_other(b, f"{where}.{k}", v)
        if blank(image_dir):
            b.unsupported_(f"{where}.image_dir", image_dir,
                           "no image_dir (fine-tuning metadata subsets are not supported); this subset was not imported")
            continue
        text = str(image_dir).rstrip("/\\")
        name = re.split(r"[/\\]", text)[-1]
        parent = text[: len(text) - len(name)].rstrip("/\\") or "."
        repeats_raw = s.get("num_repeats", default_repeats)
        try:
            repeats = 1 if blank(repeats_raw) else to_int(repeats_raw)
        except BadValue:
            repeats = 1
        tokens = s.get("class_tokens")
        m = concept_dir(name)
        if not m:
            suggestion = f"{repeats}_{tokens if not blank(tokens) else name}"
            b.unsupported_(
                f"{where}.image_dir", image_dir,
                f"loratui reads the repeats from folder names like <repeats>_<name>; rename this folder to "
                f"'{suggestion}' (inside {parent}) to train it",
            )
            continue
        folder_repeats, folder_name = m
        if root is None:
            root = parent
            b.mapped.append((f"{where}.image_dir", image_dir, "dataset.reg_data_dir" if reg else "dataset.train_data_dir"))
        elif os.path.normpath(parent) != os.path.normpath(root):
            b.unsupported_(
                f"{where}.image_dir", image_dir,
                f"loratui reads every {kind} concept from one folder ({root}); move this folder into it to train it",
            )
            continue
        else:
            b.mapped.append((f"{where}.image_dir", image_dir, "dataset.reg_data_dir" if reg else "dataset.train_data_dir"))
        listed.add(name)
        if "num_repeats" in s:
            if repeats == folder_repeats:
                b.mapped.append((f"{where}.num_repeats", s["num_repeats"], f"folder name {name}"))
            else:
                b.unsupported_(
                    f"{where}.num_repeats", s["num_repeats"],
                    f"loratui takes the repeats from the folder name ({folder_repeats} in {name!r}); "
                    f"rename the folder to '{repeats}_{folder_name}' to train with {repeats} repeats",
                )
        elif folder_repeats != repeats:
            b.note(f"{where}: repeats {folder_repeats} come from the folder name {name!r} (the config gave none)")
        if "class_tokens" in s:
            if blank(tokens) or str(tokens).strip() == folder_name:
                b.mapped.append((f"{where}.class_tokens", tokens, f"folder name {name}"))
            else:
                b.unsupported_(
                    f"{where}.class_tokens", tokens,
                    f"loratui uses the folder name ({folder_name!r}) as the caption of images without one; "
                    f"rename the folder to '{folder_repeats}_{tokens}' to use these class tokens",
                )
    if root is not None:
        on_disk = Path(os.path.expanduser(root))
        if on_disk.is_dir():
            extra = sorted(p.name for p in on_disk.iterdir() if p.is_dir() and concept_dir(p.name) and p.name not in listed)
            if extra:
                b.note(f"{root} also holds concept folders the dataset config does not list ({', '.join(extra)}); "
                       "loratui trains every <repeats>_<name> folder in it")
    return root


def concepts_on_disk(root: str) -> list[tuple[str, int, str]]:
    """(folder path as written, repeats, name) for each <repeats>_<name> folder under root."""
    if not root:
        return []
    p = Path(os.path.expanduser(root))
    if not p.is_dir():
        return []
    out = []
    for child in sorted(p.iterdir()):
        m = concept_dir(child.name)
        if child.is_dir() and m:
            out.append((os.path.join(root, child.name), *m))
    return out



def dataset_config_dict(p: Profile) -> tuple[dict[str, Any], list[Problem]]:
    """An sd-scripts dataset_config for the profile's concept folders (read from disk)
    and notes. Raises ValueError when the training folder holds no concept folders."""
    d = p.dataset
    train = concepts_on_disk(d.train_data_dir)
    if not train:
        raise ValueError(f"{d.train_data_dir or '(dataset.train_data_dir is empty)'}: no <repeats>_<name> concept folders found")
    notes: list[Problem] = []
    general = {key: p.get(dotted) for key, dotted in subset_keys().items()}
    # the masked-loss sources are written only when set (sd-scripts' defaults: off / none)
    general = {k: v for k, v in general.items() if k not in ("alpha_mask", "conditioning_data_dir") or v}
    h = d.resolution_height or d.resolution
    dataset: dict[str, Any] = {"resolution": d.resolution if h == d.resolution else [d.resolution, h]}
    dataset.update({key: p.get(dotted) for key, dotted in dataset_keys().items()})
    dataset["subsets"] = []
    for folder, repeats, name in train:
        dataset["subsets"].append({"image_dir": folder, "num_repeats": repeats, "class_tokens": name})
    reg = concepts_on_disk(d.reg_data_dir)
    if d.reg_data_dir and not reg:
        notes.append(warning("dataset.reg_data_dir", f"{d.reg_data_dir}: no <repeats>_<name> folders found; no regularization subsets written"))
    for folder, repeats, name in reg:
        dataset["subsets"].append({"image_dir": folder, "num_repeats": repeats, "class_tokens": name, "is_reg": True})
    if d.balance_concepts:
        notes.append(warning("dataset.balance_concepts", "has no sd-scripts equivalent: the folders' own repeats were exported"))
    return {"general": general, "datasets": [dataset]}, notes
