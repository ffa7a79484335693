"""MobileLLM, step by step: the model of Liu et al. (ICML 2024) with each design choice a switch.

Importing the package reads and changes nothing (not even the environment); the names below load
their module, and torch, on first use.
"""

import importlib

__all__ = ["KVCache", "MobileLLM", "ModelConfig", "get_config", "list_configs"]
__version__ = "0.1.0"

_HOME = {
    "KVCache": "model",
    "MobileLLM": "model",
    "ModelConfig": "config",
    "get_config": "config",
    "list_configs": "config",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module 'mobilellm' has no attribute {name!r}")
