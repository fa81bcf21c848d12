#!/usr/bin/env bash
# Idempotent set-up: system packages, the Python environment in .venv, the default data.
# A second run reuses everything already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(dataset-fashion-mnist pkg-config libturbojpeg0-dev libopencv-dev)
VENV=.venv
STAMP="$VENV/.rkd-installed"

say() { printf '[setup] %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
    say "installing system packages: ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
else
    say "system packages present"
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
fi

# The install is redone only when pyproject.toml or this script changes.
want=$(cat pyproject.toml "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
    say "python environment up to date ($VENV)"
else
    say "installing the python environment into $VENV (torch+torchvision pair, timm, numba, ffcv, dali, triton, ray; a few minutes the first time)"
    # A local find-links folder (pip config or PIP_FIND_LINKS) may hold a CPU-only torch wheel that PyPI's
    # torchvision cannot load: ignore pip config files and that variable for this install.
    unset PIP_FIND_LINKS
    export PIP_CONFIG_FILE=/dev/null
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel
    # ffcv's build imports numpy and needs pkg-config for opencv/turbojpeg: give it the environment's own.
    "$VENV/bin/python" -m pip install -q "numpy>=1.24,<2.6" "torch==2.13.0" "torchvision==0.28.0"
    # compat mode: a plain path entry, so new modules and packages are picked up without re-installing.
    "$VENV/bin/python" -m pip install -q --no-build-isolation -e ".[all]" --config-settings editable_mode=compat
    echo "$want" > "$STAMP"
fi

"$VENV/bin/python" - <<'PY'
import torch, torchvision, timm
print(f"[setup] torch {torch.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, "
      f"cuda={'yes' if torch.cuda.is_available() else 'no'}")
PY
say "default data: Fashion-MNIST in /usr/share/datasets/fashion-mnist"
