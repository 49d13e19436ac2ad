"""Keeps the console to what a user needs: library deprecation chatter is dropped."""

import logging
import warnings


def quiet_library_noise() -> None:
    """Silences warnings that libraries emit on every run and that a user cannot act on."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torchrec\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torchrec\..*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"fbgemm_gpu\..*")
    # TorchRec's train pipeline traces the model with torch.fx, which logs a warning.
    logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)
