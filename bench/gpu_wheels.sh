#!/usr/bin/env bash
# Download here the wheels the GPU machines lack (they have no network) into
# .gpu-wheels/ (ignored by git), at most 64 MiB in all: what does not fit is left
# out, and the script says so. The versions are the ones installed here.
#
#   bash bench/gpu_wheels.sh            # → .gpu-wheels/*.whl
#
# On the GPU machine (Python 3.12, CUDA torch, accelerate, peft, transformers,
# safetensors, onnxruntime already there):
#   python3 -m pip install -q --no-index --find-links .gpu-wheels --no-deps --target /tmp/site .gpu-wheels/*.whl
#   PYTHONPATH=/tmp/site python3 bench/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=.gpu-wheels
LIMIT=$((64 * 1024 * 1024))
mkdir -p "$DEST"

# most needed first: what loratui.engine imports, then what the check's rows use,
# then the TUI's (the check does not import the TUI)
NAMES=(pydantic-core pydantic annotated-types typing-inspection typing-extensions tomli-w tomlkit platformdirs
       diffusers importlib-metadata nvidia-ml-py bitsandbytes
       textual mdit-py-plugins linkify-it-py uc-micro-py onnx)

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64; do
    PLATFORMS+=(--platform "$p")
done

version_here() {
    python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true
}

size_of() { du -cb "$DEST"/*.whl 2>/dev/null | tail -1 | cut -f1; }

left_out=()
for name in "${NAMES[@]}"; do
    v=$(version_here "$name")
    spec=$name${v:+==$v}
    before=$(ls "$DEST")
    if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${PLATFORMS[@]}" -d "$DEST" "$spec"; then
        left_out+=("$spec (no wheel for cp312 manylinux x86_64 found)")
        continue
    fi
    total=$(size_of)
    if [ "${total:-0}" -gt "$LIMIT" ]; then
        new=$(comm -13 <(echo "$before") <(ls "$DEST"))
        for f in $new; do rm -f "$DEST/$f"; done
        left_out+=("$spec (would make the folder $((total / 1048576)) MiB, over 64 MiB)")
    fi
done

echo "$(ls "$DEST" | wc -l) wheels in $DEST/, $(( $(size_of) / 1048576 )) MiB (limit 64 MiB):"
ls -1 "$DEST"
if [ ${#left_out[@]} -gt 0 ]; then
    echo "left out:"
    printf '  %s\n' "${left_out[@]}"
fi
echo "not fetched (too big for 64 MiB, ~250 MB): onnxruntime-gpu — the WD14 row then reports the CPU provider"
