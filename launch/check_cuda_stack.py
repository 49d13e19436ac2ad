"""Checks that torch and fbgemm-gpu in this environment make one CUDA stack (run by launch/setup.sh).

    python launch/check_cuda_stack.py cu130

Exits non-zero with what to do when torch is not built for that CUDA, sees no GPU, or
fbgemm_gpu does not load against it (a CUDA build mismatch shows up as an undefined symbol).
"""

import sys

import torch


def problem(cuda: str) -> str:
    """Why the stack does not match `cuda` (e.g. cu130), or "" when it does."""
    expected = f"{cuda[2:-1]}.{cuda[-1]}"
    built = torch.version.cuda
    if built is None or not built.startswith(expected):
        return (f"torch {torch.__version__} is built for CUDA {built}, not {expected} ({cuda}); "
                "remove .venv and run launch/setup.sh again, or set CTR_CUDA to the CUDA your torch has")
    if not torch.cuda.is_available():
        return (f"torch (CUDA {built}) sees no GPU: the driver may be too old for CUDA {expected} "
                "(nvidia-smi shows the highest CUDA it supports); try CTR_CUDA=cu126")
    try:
        import fbgemm_gpu  # noqa: F401
    except Exception as error:  # an ImportError or the OSError of a library built for another CUDA
        return f"fbgemm_gpu does not load with torch {torch.__version__} (CUDA {built}): {error}"
    return ""


if __name__ == "__main__":
    found = problem(sys.argv[1])
    if found:
        sys.exit(f"setup.sh: {found}")
    print(f"setup.sh: torch {torch.__version__}, CUDA {torch.version.cuda}, fbgemm_gpu loads, "
          f"GPU {torch.cuda.get_device_name(0)}")
