#!/usr/bin/env bash
# One-step, idempotent set-up of .venv with the matched torch / fbgemm-gpu / torchrec set.
#
# Order matters: torch first (pip would otherwise pull a CUDA torch and several GB of
# CUDA packages), then fbgemm (CUDA build only where a GPU driver is present), then
# torchrec without its deps (its metadata demands the CUDA fbgemm-gpu), then the deps
# torchrec needs, named explicitly, then this project.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CTR_VENV:-.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.setup-$(cat launch/setup.sh pyproject.toml | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

"${pip[@]}" torch==2.13.0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" fbgemm-gpu==1.8.0
else
    "${pip[@]}" fbgemm-gpu-cpu==1.8.0
fi
"${pip[@]}" --no-deps torchrec==1.8.0
"${pip[@]}" tensordict==0.15.3 torchmetrics==1.0.3 tqdm pyre-extensions
"${pip[@]}" -e .

rm -f "$venv"/.setup-*
touch "$stamp"
