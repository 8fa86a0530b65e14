"""The kohya keys that are not one to one: resolution "W,H", LoRA_type / network_module
and network_args, the learning rates (0 = don't train that part), warm-up in percent
or steps, epoch vs max_train_epochs vs max_train_steps, and state keeping.

Cheap to import: no torch.
"""

from __future__ import annotations

import math
import re
from typing import Any

from loratui.engine.kohya.builder import Builder
from loratui.engine.kohya.keys import LYCORIS_OPTIONS, network_slug, network_type_message
from loratui.engine.kohya.options_import import split_text_encoder_lrs
from loratui.engine.registries import NETWORK_TYPES
from loratui.engine.schema.coerce import BadValue, blank, is_off, num_text, to_bool, to_float, to_int


def map_resolution(b: Builder, key: str, raw: Any) -> None:
    try:
        if isinstance(raw, (list, tuple)):
            parts = [to_int(x) for x in raw]
        elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
            parts = [to_int(raw)]
        else:
            parts = [to_int(x) for x in re.split(r"[,x×\s]+", str(raw).strip()) if x]
        if not 1 <= len(parts) <= 2:
            raise BadValue(f"{raw!r} is not WIDTH or WIDTH,HEIGHT")
    except BadValue as exc:
        b.unsupported_(key, raw, f"{exc}; kept the default resolution")
        return
    w = parts[0]
    h = parts[1] if len(parts) == 2 else w
    b.put("dataset.resolution", raw, key, w)
    if h != w:
        b.put("dataset.resolution_height", raw, key, h)
    else:
        b.values.pop("dataset.resolution_height", None)


def map_network(cfg: dict[str, Any], b: Builder, K, gui: bool) -> None:
    lt = cfg.pop("LoRA_type", None)
    module = cfg.pop("network_module", None)
    nargs = cfg.pop("network_args", None)
    conv_dim, conv_alpha = cfg.pop("conv_dim", None), cfg.pop("conv_alpha", None)
    has_conv_dim, has_conv_alpha = conv_dim is not None, conv_alpha is not None

    args: dict[str, str] = {}
    if nargs is not None:
        items = nargs if isinstance(nargs, list) else str(nargs).split()
        for item in items:
            k, eq, v = str(item).partition("=")
            if eq:
                args[k.strip()] = v.strip()
            else:
                b.unsupported_(K("network_args"), item, "not key=value")

    net: str | None = None
    key_used = None
    if lt is not None:
        if blank(lt):
            b.ignore(K("LoRA_type"), lt, "empty: Standard LoRA")
            net = "lora"
        else:
            net = network_slug(lt)
            key_used = ("LoRA_type", lt)
    if module is not None:
        mod = str(module).strip()
        if mod in ("networks.lora", "networks.lora_sd3", "networks.lora_flux", ""):
            mnet = "locon" if "conv_dim" in args else "lora"
        elif mod.startswith("lycoris"):
            algo = args.pop("algo", "lora").strip('"').lower()
            mnet = {"lora": "lycoris-locon", "locon": "lycoris-locon"}.get(algo, network_slug(algo))
        elif mod == "networks.dylora":
            mnet = "dylora"
        elif mod == "networks.oft":
            mnet = "oft"
        else:
            mnet = network_slug(mod)
        if net is None:
            net, key_used = mnet, ("network_module", module)
        elif mnet != net:
            b.ignore(K("network_module"), module, f"LoRA_type {lt!r} decides")
        else:
            b.mapped.append((K("network_module"), module, "network.network_type"))
    if net is not None:
        raw = key_used[1] if key_used else lt
        k = K(key_used[0]) if key_used else K("LoRA_type")
        if net in NETWORK_TYPES:
            b.put("network.network_type", raw, k, net)
        else:
            b.given("network.network_type", net, k, raw, network_type_message(net) or "")

    entry = NETWORK_TYPES.get(b.values.get("network.network_type", "lora"))
    if entry is not None and entry.algo is not None:  # -- lycoris: its fields and network_args
        from loratui.engine.kohya.lycoris_map import map_lycoris

        map_lycoris(cfg, b, K, args, entry)
    elif entry is not None:  # networks.lora: rank_dropout / module_dropout
        _map_lora_args(cfg, b, K, args, entry.applies)
    locon = b.values.get("network.network_type") == "locon" or (entry is not None and "conv_dim" in entry.applies)
    # conv rank/alpha: GUI keys, or network_args conv_dim=/conv_alpha=
    for name, value, present in (("conv_dim", conv_dim, has_conv_dim), ("conv_alpha", conv_alpha, has_conv_alpha)):
        arg_val = args.pop(name, None)
        if arg_val is not None:
            if locon:
                b.put(f"network.{name}", arg_val, K(f"network_args {name}"))
            else:
                b.ignore(K(f"network_args {name}"), arg_val, "only used by LoCon")
        if present:
            if locon and arg_val is None and not blank(value):
                b.put(f"network.{name}", value, K(name))
            else:
                b.ignore(K(name), value, ("only used by LoCon" if entry is None or entry.algo is None
                                          else f"not read by {entry.label}") if not locon else "network_args decides")
    if "conv_rank" in args:
        v = args.pop("conv_rank")
        if locon and "network.conv_dim" not in b.values:
            b.put("network.conv_dim", v, K("network_args conv_rank"))
        else:
            b.ignore(K("network_args conv_rank"), v, "only used by LoCon")
    for k in ("train_blocks", "train_t5xxl"):  # networks.lora_flux / lora_sd3 options
        if k in args:
            b.put(f"network.{k}", args.pop(k), K(f"network_args {k}"))
    for k, v in args.items():
        if k in ("preset",) or k in {x.lower() for x in LYCORIS_OPTIONS}:
            b.ignore(K(f"network_args {k}"), v, "LyCORIS option")
        elif k == "dropout" or k.endswith("_dropout"):
            if is_off(v, 0):
                b.ignore(K(f"network_args {k}"), v, "off")
            else:
                b.unsupported_(K(f"network_args {k}"), v, "loratui has no network dropout; trained without it")
        else:
            b.unsupported_(K(f"network_args {k}"), v, "loratui has no such network option; trained without it")


def _map_lora_args(cfg: dict[str, Any], b: Builder, K, args: dict[str, str], keys: tuple[str, ...]) -> None:
    """networks.lora's own network_args; the kohya_ss GUI passes its fields of the same
    names for Standard and Kohya LoCon, and network_args (additional parameters) decides."""
    for key in keys:
        arg = args.pop(key, None)
        present = key in cfg
        value = cfg.pop(key, None)
        if arg is not None:
            b.put(f"network.{key}", arg, K(f"network_args {key}"))
        if present:
            if arg is not None:
                b.ignore(K(key), value, "network_args decides")
            elif blank(value):
                b.ignore(K(key), value, "empty: the default")
            else:
                b.put(f"network.{key}", value, K(key))
    if "rank_dropout_scale" in cfg:  # a LyCORIS field of the GUI
        b.ignore(K("rank_dropout_scale"), cfg.pop("rank_dropout_scale"), "networks.lora does not read it (no effect in "
                                                                        "kohya_ss either)")


def map_lrs(cfg: dict[str, Any], b: Builder, K) -> None:
    def flag(k: str) -> bool | None:
        if k not in cfg:
            return None
        raw = cfg.pop(k)
        try:
            on = False if blank(raw) else to_bool(raw)
        except BadValue:
            b.unsupported_(K(k), raw, "not true/false; ignored")
            return None
        b.mapped.append((K(k), raw, "network.train_text_encoder" if k == "network_train_unet_only" else "network.train_unet"))
        return on

    unet_only = flag("network_train_unet_only")
    te_only = flag("network_train_text_encoder_only")

    def lr(k: str) -> tuple[bool, float | None, Any]:
        """(present, value or None when unset, raw)."""
        if k not in cfg:
            return False, None, None
        raw = cfg.pop(k)
        if blank(raw):
            return True, None, raw
        try:
            return True, to_float(raw), raw
        except BadValue as exc:
            b.unsupported_(K(k), raw, f"{exc}; treated as unset")
            return True, None, raw

    split_text_encoder_lrs(cfg, b, K)
    has_lr, base, base_raw = lr("learning_rate")
    has_u, unet, unet_raw = lr("unet_lr")
    has_t, te, te_raw = lr("text_encoder_lr")
    if has_lr:
        if base is None or base == 0:
            b.ignore(K("learning_rate"), base_raw, "empty or 0: the U-Net / text encoder rates decide")
        else:
            b.put("optimization.learning_rate", base_raw, K("learning_rate"), base)
    # kohya_ss GUI: a rate of 0 means "don't train that part"; both 0 means "use learning_rate".
    if has_u and has_t and unet == 0 and te == 0:
        b.ignore(K("unet_lr"), unet_raw, "0 with text_encoder_lr 0: learning_rate is used for both")
        b.ignore(K("text_encoder_lr"), te_raw, "0 with unet_lr 0: learning_rate is used for both")
        unet = te = None
        has_u = has_t = False
    if has_u:
        if unet == 0:
            b.put("network.train_unet", unet_raw, K("unet_lr"), False)
            b.note(f"{K('unet_lr')} is 0: the U-Net is not trained")
        elif unet is None:
            b.ignore(K("unet_lr"), unet_raw, "empty: the learning rate is used")
        else:
            b.put("optimization.unet_lr", unet_raw, K("unet_lr"), unet)
    if has_t:
        if te == 0:
            b.put("network.train_text_encoder", te_raw, K("text_encoder_lr"), False)
            b.note(f"{K('text_encoder_lr')} is 0: the text encoder is not trained")
        elif te is None:
            b.ignore(K("text_encoder_lr"), te_raw, "empty: the learning rate is used")
        else:
            b.put("optimization.text_encoder_lr", te_raw, K("text_encoder_lr"), te)
    if "optimization.text_encoder_lr" not in b.values and (has_t or has_lr):
        # unset in the file = "the learning rate"; a profile cannot hold "unset" for this
        # setting (its default is 5e-5), so write the learning rate itself.
        value = b.values.get("optimization.learning_rate", b.info["optimization.learning_rate"].default)
        b.values["optimization.text_encoder_lr"] = value
        if te != 0:
            b.note(f"text encoder learning rate unset in the file: set to the learning rate, {value:g}")
    if unet_only:
        b.values["network.train_text_encoder"] = False
    if te_only:
        b.values["network.train_unet"] = False


def map_warmup(cfg: dict[str, Any], b: Builder, K, gui: bool) -> None:
    steps_raw = cfg.pop("lr_warmup_steps", None)
    pct_raw = cfg.pop("lr_warmup", None)
    steps = pct = None
    try:
        steps = None if blank(steps_raw) else to_float(steps_raw)
        pct = None if blank(pct_raw) else to_float(pct_raw)
    except BadValue as exc:
        b.unsupported_(K("lr_warmup"), [pct_raw, steps_raw], f"{exc}; no warm-up")
        return
    if steps:
        b.put("optimization.lr_warmup_steps", steps_raw, K("lr_warmup_steps"), steps)
        if pct:
            b.ignore(K("lr_warmup"), pct_raw, "lr_warmup_steps decides (as in kohya_ss)")
        elif pct_raw is not None:
            b.ignore(K("lr_warmup"), pct_raw, "0: lr_warmup_steps decides")
        return
    if steps_raw is not None:
        b.put("optimization.lr_warmup_steps", steps_raw, K("lr_warmup_steps"), 0.0)
    if pct is not None:
        if pct == 0:
            if steps_raw is not None:
                b.mapped.append((K("lr_warmup"), pct_raw, "optimization.lr_warmup_steps"))
            else:
                b.put("optimization.lr_warmup_steps", pct_raw, K("lr_warmup"), 0.0)
        elif 0 < pct < 100:
            b.put("optimization.lr_warmup_steps", pct_raw, K("lr_warmup"), pct / 100)
            b.note(f"{K('lr_warmup')} {num_text(pct)} % of the steps imported as lr_warmup_steps {pct / 100:g} (a fraction of all steps)")
        else:
            b.unsupported_(K("lr_warmup"), pct_raw, "a warm-up of 100 % or more leaves no training; no warm-up imported")


def map_epochs(cfg: dict[str, Any], b: Builder, K, gui: bool) -> None:
    ep_raw = cfg.pop("epoch", None)
    mx_raw = cfg.pop("max_train_epochs", None)
    st_raw = cfg.pop("max_train_steps", None)
    try:
        ep = None if blank(ep_raw) else to_int(ep_raw)
    except BadValue as exc:
        b.unsupported_(K("epoch"), ep_raw, f"{exc}; ignored")
        ep = None
    try:
        mx = None if blank(mx_raw) else to_int(mx_raw)
    except BadValue as exc:
        b.unsupported_(K("max_train_epochs"), mx_raw, f"{exc}; ignored")
        mx = None
    # kohya_ss GUI: "max_train_epochs" (when set) overrides "epoch".
    if mx:
        b.put("optimization.max_train_epochs", mx_raw, K("max_train_epochs"), mx)
        if ep_raw is not None:
            if ep == mx:
                b.mapped.append((K("epoch"), ep_raw, "optimization.max_train_epochs"))
            else:
                b.ignore(K("epoch"), ep_raw, "max_train_epochs decides (as in kohya_ss)")
    else:
        if ep:
            b.put("optimization.max_train_epochs", ep_raw, K("epoch"), ep)
        elif ep_raw is not None:
            b.ignore(K("epoch"), ep_raw, "empty or 0")
        if mx_raw is not None:
            b.ignore(K("max_train_epochs"), mx_raw, "empty or 0: epoch decides" if ep else "empty or 0")
    if st_raw is not None:
        if blank(st_raw):
            b.ignore(K("max_train_steps"), st_raw, "empty: all epochs")
        else:
            ok = b.put("optimization.max_train_steps", st_raw, K("max_train_steps"))
            if ok and b.values.get("optimization.max_train_steps") and mx:
                # sd-scripts: max_train_epochs overrides max_train_steps
                b.values["optimization.max_train_steps"] = 0
                b.note(f"{K('max_train_steps')} {st_raw} is overridden by max_train_epochs {mx} (as in sd-scripts); imported as 0")


def map_state_keeping(cfg: dict[str, Any], b: Builder, K) -> None:
    ep_raw = cfg.pop("save_last_n_epochs_state", None)
    st_raw = cfg.pop("save_last_n_steps_state", None)
    if ep_raw is not None and not blank(ep_raw):
        # sd-scripts: keep the states of the last N saves (epoch-based saving)
        b.put("output.save_last_n_states", ep_raw, K("save_last_n_epochs_state"))
        if st_raw is not None:
            b.ignore(K("save_last_n_steps_state"), st_raw, "save_last_n_epochs_state decides")
        return
    if st_raw is None:
        return
    try:
        n = 0 if blank(st_raw) else to_int(st_raw)
    except BadValue as exc:
        b.unsupported_(K("save_last_n_steps_state"), st_raw, f"{exc}; ignored")
        return
    if n == 0:
        b.put("output.save_last_n_states", st_raw, K("save_last_n_steps_state"), 0)
        return
    every = b.values.get("output.save_every_n_steps") or int_or_zero(cfg.get("save_every_n_steps"))
    if every:
        # sd-scripts keeps the states of the last N *steps*; loratui counts states
        keep = max(1, math.ceil(n / every))
        b.put("output.save_last_n_states", st_raw, K("save_last_n_steps_state"), keep)
        b.note(f"{K('save_last_n_steps_state')} {n} steps with a state every {every} steps: keeps the last {keep} states")
    else:
        b.ignore(K("save_last_n_steps_state"), st_raw, "no step-based saving in this config")


def int_or_zero(v: Any) -> int:
    try:
        return 0 if blank(v) else to_int(v)
    except BadValue:
        return 0
