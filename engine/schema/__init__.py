"""The profile schema: every training setting, declared once.

* :mod:`.declare` — how a setting is declared (:func:`setting`) and read back (:class:`SettingInfo`);
* :mod:`.sections` — the five sections and :class:`Profile`;
* :mod:`.coerce` — reading other tools' values (kohya_ss, ``--set``);
* :mod:`.validation` — problems as :class:`~loratui.engine.problems.Problem`, :class:`ProfileError`;
* :mod:`.files` — TOML load / save (comments kept), ``--set``, diff.

TOML load/save, validation messages, ``--set key=value``, the TUI form, kohya_ss
import/export and the ``ss_*`` metadata are all derived from these declarations.
Cheap to import (no torch): the UI imports it before its first frame.
"""

from loratui.engine.schema.declare import SettingInfo, _Section, setting
from loratui.engine.schema.files import (
    apply_overrides,
    diff_profiles,
    load_profile,
    parse_override,
    profile_to_toml,
    resolve_paths,
    save_profile,
)
from loratui.engine.schema.sections import (
    FAMILY_CHOICES,
    SECTION_TITLES,
    DatasetSettings,
    ModelSettings,
    NetworkSettings,
    OptimizationSettings,
    OutputSettings,
    Profile,
    setting_info,
    settings,
)
from loratui.engine.schema.validation import ProfileError, profile_from_dict, profile_warnings

__all__ = [
    "FAMILY_CHOICES", "SECTION_TITLES", "DatasetSettings", "ModelSettings",
    "NetworkSettings", "OptimizationSettings", "OutputSettings", "Profile", "ProfileError", "SettingInfo",
    "_Section", "apply_overrides", "diff_profiles", "load_profile", "parse_override", "profile_from_dict",
    "profile_to_toml", "profile_warnings", "resolve_paths", "save_profile", "setting", "setting_info", "settings",
]
