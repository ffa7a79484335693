"""Keep third-party start-up chatter out of a learner's notebook output.

torchao logs a warning for each optional CUDA kernel library it cannot load on a CPU machine, and
torch logs deprecation warnings while torchao registers its types; transformers draws a progress bar
for writing one small file; ExecuTorch's native code prints its CPU probing to file descriptor 2.
None of it is actionable, and in a notebook it buries the output that matters.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator

_CHATTY_LOGGERS = ("torchao", "torch.utils._pytree")


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Within the block: torchao's and torch's import-time warnings hidden, transformers' bars off."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    bars = None
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
        if bars:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Within the block: what native code writes to file descriptor 2 goes to /dev/null (ExecuTorch's
    XNNPACK backend logs its CPU probing, "Reading file /sys/devices/…", on every load)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        # In a Jupyter kernel ExecuTorch's log lines reach sys.stderr (the kernel's stream), not fd 2.
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
