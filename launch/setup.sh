#!/usr/bin/env bash
# One-step, idempotent set-up of .venv with the matched torch / fbgemm-gpu / torchrec set.
#
# Order matters: torch first (pip would otherwise pull a CUDA torch and several GB of
# CUDA packages), then fbgemm (CUDA build only where a GPU driver is present), then
# torchrec without its deps (its metadata demands the CUDA fbgemm-gpu), then the deps
# torchrec needs, named explicitly, then this project.
#
# On a GPU host torch and fbgemm-gpu must be built for the same CUDA: both come from the
# PyTorch wheel index of one CUDA version, CTR_CUDA (default cu130; torch 2.13 and
# fbgemm-gpu 1.8.0 ship cu126 and cu130 builds, no cu128). The driver must support that
# CUDA (cu130 needs driver >= 580; use CTR_CUDA=cu126 on older drivers). After installing
# the script checks that torch was built for CTR_CUDA, sees the GPU, and that fbgemm_gpu
# loads (launch/check_cuda_stack.py), and stops with what to do when not.
set -euo pipefail
cd "$(dirname "$0")/.."

venv="${CTR_VENV:-.venv}"
python="${PYTHON:-python3}"
cuda="${CTR_CUDA:-cu130}"
stamp="$venv/.setup-$( (cat launch/setup.sh pyproject.toml; echo "$cuda") | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    case "$cuda" in
        cu126|cu130) ;;
        *) echo "setup.sh: CTR_CUDA=$cuda: torch 2.13.0 and fbgemm-gpu 1.8.0 are both built only for cu126 and cu130" >&2
           exit 1 ;;
    esac
    index="https://download.pytorch.org/whl/$cuda"
    "${pip[@]}" --index-url "$index" torch==2.13.0 fbgemm-gpu==1.8.0
    "$venv/bin/python" launch/check_cuda_stack.py "$cuda"
else
    "${pip[@]}" torch==2.13.0
    "${pip[@]}" fbgemm-gpu-cpu==1.8.0
fi
"${pip[@]}" --no-deps torchrec==1.8.0
"${pip[@]}" tensordict==0.15.3 torchmetrics==1.0.3 tqdm pyre-extensions
"${pip[@]}" -e .

rm -f "$venv"/.setup-*
touch "$stamp"
