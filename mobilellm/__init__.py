"""MobileLLM, step by step: the model of Liu et al. (ICML 2024) with each design choice a switch."""

import os

# Spinning OpenMP workers slow training ~5x when another process shares the cores (a notebook
# kernel, a test runner). Only effective if set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .config import ModelConfig, get_config, list_configs
from .model import KVCache, MobileLLM

__all__ = ["KVCache", "MobileLLM", "ModelConfig", "get_config", "list_configs"]
__version__ = "0.1.0"
