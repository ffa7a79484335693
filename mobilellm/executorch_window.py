"""The fixed-window ExecuTorch program: the model's full forward at one input shape, without a KV cache.

What runs on the phone in the paper, in its simplest form: ``export_executorch`` lowers the forward
at shape (1, seq_len) to XNNPACK (fp32, or int8 W8A8), so generating n tokens means n full
forwards. The KV-cached program a phone app decodes with is ``executorch_program.py``'s.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ._common import eval_mode, one_line
from ._files import write_atomic
from ._quiet import native_stderr_silenced, quiet_libraries
from .executorch_program import _need_executorch
from .model import MobileLLM

# A prompt shorter than the program's window still works: ``run_executorch`` pads it on the right,
# which cannot change the logits of the real positions because attention is causal, and cuts the
# padding's logits off again.
PTE_QUANTIZE = (None, "int8")


def export_executorch(
    model: MobileLLM, path: str | os.PathLike, quantize: str | None = "int8", seq_len: int = 64
) -> Path:
    """Write ``model``'s forward as an ExecuTorch program (XNNPACK) taking ids of shape (1, ``seq_len``).

    ``quantize="int8"``: the blocks' linear layers get int8 symmetric per-channel weights and int8
    dynamic activations (XNNPACK quantizer, pt2e flow). XNNPACK has no per-tensor dynamic mode and
    computes activation scales per token (asymmetric, with a zero point) — per token, as the
    paper's W8A8. The embedding and the tied head stay fp32. ``None``: fp32 throughout. Layer-shared
    blocks are stored once. Lowering is slow even for tiny models (each op XNNPACK does not take
    — embedding, masks, RMSNorm's mean — cuts the graph into another partition); cache the file.
    """
    if quantize not in PTE_QUANTIZE:
        raise ValueError(f"quantize {quantize!r} is not one of {PTE_QUANTIZE}")
    if not 1 <= seq_len <= model.cfg.max_seq_len:
        raise ValueError(f"seq_len ({seq_len}) must be in [1, max_seq_len = {model.cfg.max_seq_len}]")
    _need_executorch()
    import copy

    with quiet_libraries():  # executorch imports torchao, which warns about its CUDA-only kernels
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

    from .model import Block

    p = model.embed_tokens.weight
    if p.device.type != "cpu" or p.dtype != torch.float32:
        model = copy.deepcopy(model).to("cpu", torch.float32)
    example = (torch.zeros(1, seq_len, dtype=torch.long),)
    with eval_mode(model):
        with torch.no_grad(), warnings.catch_warnings(), quiet_libraries(), native_stderr_silenced():
            # torch.export's own deprecation chatter (LeafSpec) says nothing about this model
            warnings.simplefilter("ignore", FutureWarning)
            # The model's token-range check is data-dependent; it is skipped while tracing
            # (torch.compiler.is_compiling() is true under torch.export).
            program = torch.export.export(model, example)
            if quantize == "int8":
                from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                    XNNPACKQuantizer,
                    get_symmetric_quantization_config,
                )
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
                # Only inside blocks: a global config would also quantize lm_head, i.e. store an
                # int8 copy of the embedding table beside the fp32 one the lookup still needs.
                quantizer = XNNPACKQuantizer().set_module_type(Block, config)
                graph = prepare_pt2e(program.module(), quantizer)
                graph(*example)  # weight observers see the weights; dynamic activations need no calibration
                program = torch.export.export(convert_pt2e(graph), example)
            lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    return write_atomic(path, lambda t: t.write_bytes(lowered.buffer))


_PTE_CACHE: dict[tuple, object] = {}  # loaded programs, so that repeated runs time execution, not loading


def _load_pte(path: str | os.PathLike):
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} does not exist: write it with export_executorch first")
    stat = p.stat()
    key = (str(p.resolve()), stat.st_mtime_ns, stat.st_size)  # a rewritten file is loaded afresh
    if key in _PTE_CACHE:
        return _PTE_CACHE[key]
    _need_executorch()
    from executorch.runtime import Runtime

    try:
        with native_stderr_silenced():
            program = Runtime.get().load_program(p)
    except Exception as e:  # the runtime raises RuntimeError or ValueError for garbage
        raise ValueError(f"{p} is not an ExecuTorch program ({one_line(e)})") from None
    if "forward" not in program.method_names:
        raise ValueError(f"{p} has no 'forward' method (it has {sorted(program.method_names)})")
    if len(_PTE_CACHE) >= 4:
        _PTE_CACHE.pop(next(iter(_PTE_CACHE)))
    _PTE_CACHE[key] = program
    return program


def run_executorch(path: str | os.PathLike, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits (B, T, vocab) of a .pte written by ``export_executorch``, via ExecuTorch's Python runtime.

    Rows run one at a time (the program's batch is 1); rows shorter than the program's fixed
    length are right-padded, which causal attention makes exact for the real positions.
    """
    program = _load_pte(path)
    meta = program.metadata("forward")
    fixed = tuple(meta.input_tensor_meta(0).sizes())
    vocab = tuple(meta.output_tensor_meta(0).sizes())[-1]
    if input_ids.dim() != 2 or input_ids.dtype not in (torch.long, torch.int32):
        raise ValueError(
            f"input_ids must be a (batch, seq_len) integer tensor, got {input_ids.dtype} {tuple(input_ids.shape)}"
        )
    B, T = input_ids.shape
    if not 1 <= T <= fixed[1]:
        raise ValueError(
            f"{Path(path).name} takes up to {fixed[1]} tokens per row, got {T}: "
            f"shorten the input or export with seq_len={T}"
        )
    # The .pte has no range check of its own; an id past the table would read out of bounds.
    if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab}), got [{int(input_ids.min())}, {int(input_ids.max())}]")
    with native_stderr_silenced():
        forward = program.load_method("forward")
    rows = []
    with native_stderr_silenced():  # XNNPACK probes the CPU (and says so on fd 2) on first execution
        for row in input_ids.cpu().long():
            padded = torch.zeros(fixed, dtype=torch.long)
            padded[0, :T] = row
            rows.append(forward.execute((padded,))[0][:, :T].clone())
    return torch.cat(rows)


def compare_executorch(model: MobileLLM, path: str | os.PathLike, input_ids: torch.Tensor) -> dict:
    """The .pte against the eager model on ``input_ids``: max/mean abs logit difference, argmax agreement."""
    with torch.no_grad(), eval_mode(model):
        ref = model(input_ids.to(model.embed_tokens.weight.device)).float().cpu()
    got = run_executorch(path, input_ids)
    diff = (got - ref).abs()
    return {
        "max_abs_diff": diff.max().item(),
        "mean_abs_diff": diff.mean().item(),
        "max_abs_logit": ref.abs().max().item(),
        "argmax_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
    }
