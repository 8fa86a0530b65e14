"""kohya_ss / sd-scripts interop: import their configs, export ours.

Import reads
  * a kohya_ss GUI LoRA config (``.json``, the LoRA tab's "Save" file),
  * an sd-scripts ``--config_file`` TOML (flat or in sections, as sd-scripts
    itself flattens them), with the ``--dataset_config`` TOML it names,
  * an sd-scripts ``--dataset_config`` TOML on its own,
and returns an :class:`ImportResult`: the profile as a nested dict plus every key
of the file accounted for — mapped to a setting, *ignored* (no effect here, e.g.
``xformers``) or *unsupported* (changes training and loratui has no equivalent)
— never dropped silently.

Export writes an sd-scripts ``--config_file`` TOML and ``--dataset_config`` TOML
(or the equivalent ``accelerate launch train_network.py ...`` command line).

The one-to-one keys, both ways, come from the settings' declarations in
:mod:`loratui.engine.schema` (kohya_ss GUI name, sd-scripts name, dataset-config
place, converter). The package:

* :mod:`.keys` — key tables (network types, keys with no effect, options loratui lacks);
* :mod:`.builder` — the import's bookkeeping and result;
* :mod:`.importer`, :mod:`.special` — reading configs (the loop, then the special cases);
* :mod:`.dataset_config` — sd-scripts dataset configs, both ways;
* :mod:`.exporter` — writing sd-scripts configs and command lines.

Cheap to import: no torch, no diffusers.
"""

from loratui.engine.kohya.builder import ImportResult, KohyaImportError, friendlier, import_header, save_import
from loratui.engine.kohya.dataset_config import dataset_config_dict
from loratui.engine.kohya.exporter import (
    ExportResult,
    export_problems,
    export_sd_scripts,
    export_warnings,
    sd_scripts_args,
    sd_scripts_command,
)
from loratui.engine.kohya.importer import import_kohya
from loratui.engine.kohya.keys import GUI_JSON, SD_SCRIPTS_CONFIG, SD_SCRIPTS_DATASET, network_type_message

__all__ = [
    "GUI_JSON", "SD_SCRIPTS_CONFIG", "SD_SCRIPTS_DATASET", "ExportResult", "ImportResult", "KohyaImportError",
    "dataset_config_dict", "export_problems", "export_sd_scripts", "export_warnings", "friendlier",
    "import_header", "import_kohya", "network_type_message", "save_import", "sd_scripts_args", "sd_scripts_command",
]
