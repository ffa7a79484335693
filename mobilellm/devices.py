"""Where a model runs: ``auto_device`` picks cuda, then mps, then cpu, and checks a device that is
named; under ``torchrun``, the process group and the model replicated (DDP) or sharded (FSDP2)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .model import MobileLLM
    from .train import TrainConfig


def auto_device(device: str = "auto") -> torch.device:
    """``auto``: cuda, then mps (torch >= 2.9), then cpu; otherwise the device named, if this machine has it."""
    if device != "auto":
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r}: this machine has no CUDA GPU that torch {torch.__version__} "
                "can use; use --device cpu (or auto)"
            )
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device {device!r}: MPS (Apple GPU) is not available here; use --device cpu (or auto)")
        if dev.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda or mps")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    if (major, minor) >= (2, 9) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def dist_setup(device: torch.device) -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world


def wrap(model: MobileLLM, tc: TrainConfig, device: torch.device, world: int) -> torch.nn.Module:
    """The model as the processes train it: itself alone, replicated (DDP), or sharded (FSDP2)."""
    if world == 1:
        return model
    if tc.fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.layers:
            fully_shard(block)
        return fully_shard(model)
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def full_state(model: torch.nn.Module, optimizer, tc: TrainConfig):
    """Under FSDP, gather the full model and optimizer state (on every rank) for saving."""
    if not tc.fsdp or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    return get_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
