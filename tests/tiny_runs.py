"""The profile of a tiny training run (tiny model, 64 px, a few steps), shared by
the end-to-end, resume and fault tests."""

from __future__ import annotations

from loratui.engine.schema import Profile, profile_from_dict


def tiny_profile(model, data, out, **over) -> Profile:
    """``over`` keys are ``section__key`` (e.g. ``optimization__max_train_epochs=1``)."""
    d = {
        "model": {"base_model": str(model)},
        "dataset": {"train_data_dir": str(data), "resolution": 64, "enable_bucket": False, "min_bucket_reso": 64},
        "network": {"network_dim": 4, "network_alpha": 2.0},
        "optimization": {"optimizer": "AdamW", "learning_rate": 1e-3, "max_train_epochs": 2, "train_batch_size": 2,
                         "mixed_precision": "no", "lr_scheduler": "constant"},
        "output": {"output_dir": str(out), "output_name": "tiny", "save_every_n_epochs": 1},
    }
    for dotted, value in over.items():
        section, key = dotted.split("__")
        d.setdefault(section, {})[key] = value
    return profile_from_dict(d)
