"""MobileLLM, step by step: the model of Liu et al. (ICML 2024) with each design choice a switch."""

from .config import ModelConfig, get_config, list_configs
from .model import KVCache, MobileLLM

__all__ = ["KVCache", "MobileLLM", "ModelConfig", "get_config", "list_configs"]
__version__ = "0.1.0"
