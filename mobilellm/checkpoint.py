"""The checkpoint format: one folder ``OUT/step-NNNNNN/`` (``config.json``, ``model.safetensors``,
``train_state.pt``, ``tokenizer.model``) named by ``OUT/latest``, written complete and switched in one
rename; read back checked (shapes against the config, the tokenizer against its fingerprint, a folder
rotated during the read read again); and the lock that keeps one trainer per folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._common import one_line
from ._files import fsync, tmp_path, write_atomic
from .config import ModelConfig
from .devices import auto_device
from .model import MobileLLM
from .tokenizer import Tokenizer

if TYPE_CHECKING:
    from .train import TrainConfig


LATEST = "latest"


_STEP_DIR = re.compile(r"step-\d+(\.\d+)?")


# A save writes a new hidden folder, renames it into place, then switches `latest` with one atomic
# rename; only then is the previous folder removed. A kill at any instant therefore leaves `latest`
# naming a complete checkpoint.


def _file_mode() -> int:
    """The mode a new plain file gets here (0644 under the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def checkpoint_dir(directory: str | os.PathLike) -> Path | None:
    """The folder holding the current checkpoint of a training folder (or the folder itself, if flat); None if none."""
    d = Path(directory)
    pointer = d / LATEST
    if pointer.is_file():
        name = pointer.read_text().strip()
        if not _STEP_DIR.fullmatch(name):
            raise ValueError(
                f"{pointer} should name a step-NNNNNN folder but holds {name[:40]!r}: "
                "it was edited by hand; point it at one of the step-* folders"
            )
        return d / name
    if (d / "config.json").is_file() and (d / "model.safetensors").is_file():
        return d  # a flat checkpoint (written before checkpoints were folders)
    return None


def save_checkpoint(
    out: str | os.PathLike,
    model: MobileLLM,
    optimizer: torch.optim.Optimizer | None,
    tc: TrainConfig | None,
    step: int,
    tokens: int,
    sampler: torch.Generator | None,
    tokenizer: Tokenizer | None = None,
    data_fingerprint: str | None = None,
) -> Path:
    """Write a complete checkpoint folder, then switch ``OUT/latest`` to it in one rename; returns the folder.

    Refuses weights that are not finite: a diverged model never replaces a good checkpoint.
    """
    from safetensors.torch import save_model

    out = Path(out)
    for name, p in model.state_dict().items():
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(
                f"not saving step {step}: weight {name} holds NaN or inf (training diverged); "
                f"the previous checkpoint in {out} is kept"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        previous = checkpoint_dir(out)
        tmp = tmp_path(out / f"step-{step:06d}")
        tmp.mkdir()
    except OSError as e:
        raise ValueError(f"cannot write a checkpoint in {out} ({e.strerror or e}): choose another --out") from None
    try:
        cfg = {"model": model.cfg.to_dict(), "train": tc.to_dict() if tc else None, "step": step}
        if tokenizer is not None:
            cfg["data"] = {"fingerprint": data_fingerprint, "tokenizer_fingerprint": tokenizer.fingerprint}
        (tmp / "config.json").write_text(json.dumps(cfg, indent=1, allow_nan=False))
        save_model(model, str(tmp / "model.safetensors"), metadata={"step": str(step)})
        os.chmod(tmp / "model.safetensors", _file_mode())  # safetensors writes 0600; readable like the rest
        if optimizer is not None:
            state = {
                "step": step,
                "tokens": tokens,
                "optimizer": optimizer.state_dict(),
                "sampler": sampler.get_state() if sampler is not None else None,
                "torch_rng": torch.get_rng_state(),
            }
            torch.save(state, tmp / "train_state.pt")
        if tokenizer is not None:  # always the tokenizer this model was trained with
            tokenizer.save(tmp / "tokenizer.model")
        for f in tmp.iterdir():
            fsync(f)
    except BaseException as e:  # a full disk, Ctrl-C: no half-written folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, Exception):
            raise
        # The writers report a full disk in their own ways (OSError, SafetensorError, RuntimeError).
        kept = f"the checkpoint of step {_peek_step(previous)} is kept" if previous else "nothing was saved"
        free = shutil.disk_usage(out).free / 2**20
        raise ValueError(
            f"cannot save step {step} in {out} ({one_line(e)}; {free:.1f} MiB free there): {kept}; "
            "free space, then continue with --resume"
        ) from None
    final, n = out / f"step-{step:06d}", 0
    while final.exists():  # the same step saved again (e.g. Ctrl-C right after a checkpoint)
        n += 1
        final = out / f"step-{step:06d}.{n}"
    os.replace(tmp, final)
    fsync(out)
    write_atomic(out / LATEST, lambda p: p.write_text(final.name + "\n"))
    fsync(out)
    for old in out.iterdir():  # the previous checkpoint, and leftovers of killed saves
        if (
            old != final
            and old.is_dir()
            and (_STEP_DIR.fullmatch(old.name) or re.fullmatch(r"\.step-\d+\.tmp-.*", old.name))
        ):
            shutil.rmtree(old, ignore_errors=True)
    if previous == out:  # a flat checkpoint from before: its files are superseded
        for name in ("config.json", "model.safetensors", "train_state.pt", "tokenizer.model"):
            (out / name).unlink(missing_ok=True)
    return final


def _corrupt(path: Path, err: Exception) -> ValueError:
    return ValueError(
        f"checkpoint file {path} is corrupt or truncated ({type(err).__name__}: {err}); "
        "point to another checkpoint, or train into a new --out"
    )


def _unreadable(path: Path, err: OSError) -> ValueError:
    try:
        st = path.stat()
        mode = f"mode {stat.filemode(st.st_mode)}, owner uid {st.st_uid}"
    except OSError:
        mode = "mode unknown"
    return ValueError(
        f"cannot read {path}: permission denied ({mode}); ask its owner to run "
        f"`chmod a+r {path}`, or copy the checkpoint to a folder of your own"
    )


def _safetensors_header(path: Path) -> dict:
    """Names, dtypes and shapes of a .safetensors file, read from its header (no tensor data)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file shorter than its 8-byte header length")
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n > min(size - 8, 100_000_000):
            raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    return header


def _check_shapes(cfg: ModelConfig, header: dict, d: Path) -> None:
    """config.json against the weights' header, on a meta-device model: nothing is allocated."""
    with torch.device("meta"):
        state = MobileLLM(cfg).state_dict(keep_vars=True)
    aliases: dict[int, list[str]] = {}  # tied tensors are stored once, under one of their names
    for k, v in state.items():
        aliases.setdefault(id(v), []).append(k)
    expected = {k: tuple(v.shape) for k, v in state.items()}
    saved = {k: tuple(v.get("shape", ())) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}
    wrong = [(k, s, saved[k]) for k, s in expected.items() if k in saved and saved[k] != s]
    missing = sorted(names[0] for names in aliases.values() if not any(n in saved for n in names))
    unexpected = sorted(set(saved) - set(expected))
    if wrong or missing or unexpected:
        what = (
            f"{wrong[0][0]} is {list(wrong[0][2])} in the weights but {list(wrong[0][1])} by config.json"
            if wrong
            else f"missing {missing[:3]}"
            if missing
            else f"unexpected {unexpected[:3]}"
        )
        raise ValueError(
            f"{d}: config.json does not describe model.safetensors ({what}; {len(wrong)} shape "
            f"mismatches, {len(missing)} missing, {len(unexpected)} unexpected tensors): the two files "
            "come from different models; restore the config.json written with these weights"
        )


def load_checkpoint(directory: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[MobileLLM, dict]:
    """A model with the checkpoint's weights, and its ``config.json`` contents."""
    model, meta, _ = load_checkpoint_and_tokenizer(directory, device, tokenizer=False)
    return model, meta


def load_checkpoint_and_tokenizer(
    directory: str | os.PathLike, device: torch.device | str = "cpu", tokenizer: bool = True
) -> tuple[MobileLLM, dict, Tokenizer | None]:
    """The model, ``config.json`` and tokenizer (None if the folder has none) of one checkpoint, read
    consistently: a trainer may switch ``latest`` to a new step folder and delete the old one while
    this reads, so a read that fails after ``latest`` moved is retried once on the new folder. The
    tokenizer is checked against the fingerprint the checkpoint recorded."""
    top = Path(directory)
    if not top.is_dir():
        raise FileNotFoundError(f"{top} is not a checkpoint folder (it does not exist or is a file)")
    for attempt in (0, 1):
        d = checkpoint_dir(top)
        try:
            return _load_once(top, d, device, tokenizer)
        except (ValueError, OSError):
            if attempt or d is None or d == top or checkpoint_dir(top) == d:
                raise  # latest did not move: the error is about this checkpoint
    raise AssertionError("unreachable")


def _load_once(
    top: Path, d: Path | None, device: torch.device | str, with_tokenizer: bool
) -> tuple[MobileLLM, dict, Tokenizer | None]:
    from safetensors.torch import load_model

    if d is None:
        if (
            (top / "config.json").is_file()
            and not (top / "model.safetensors").is_file()
            and any(top.glob("pytorch_model*.bin"))
        ):
            raise FileNotFoundError(
                f"{top} is a Hugging Face folder with pickled weights, not a training "
                "checkpoint: load it with mobilellm.export.load_pretrained"
            )
        raise FileNotFoundError(
            f"{top} is not a checkpoint: it needs config.json and model.safetensors "
            "(written by `python -m mobilellm train --out DIR`)"
        )
    if not (d / "config.json").is_file() or not (d / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{d} (named by {top / LATEST}) is missing config.json or model.safetensors: "
            "it was changed by hand; point latest at a complete step-* folder"
        )
    device = auto_device(device) if isinstance(device, str) else device
    try:
        meta = json.loads((d / "config.json").read_text())
    except PermissionError as e:
        raise _unreadable(d / "config.json", e) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _corrupt(d / "config.json", e) from None
    if isinstance(meta, dict) and "model" not in meta and ("model_type" in meta or "architectures" in meta):
        raise ValueError(
            f"{d} is a Hugging Face model folder (e.g. from `export --format hf`), not a training "
            "checkpoint: load it with mobilellm.export.load_pretrained, or pass the training --out folder"
        )
    try:
        cfg = ModelConfig.from_dict(meta["model"])
    except (KeyError, TypeError) as e:
        raise _corrupt(d / "config.json", e) from None
    try:
        header = _safetensors_header(d / "model.safetensors")
    except PermissionError as e:
        raise _unreadable(d / "model.safetensors", e) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise _corrupt(d / "model.safetensors", e) from None
    _check_shapes(cfg, header, d)
    saved_step = (header.get("__metadata__") or {}).get("step")
    model = MobileLLM(cfg)
    try:
        load_model(model, str(d / "model.safetensors"), strict=True, device=str(device))
    except PermissionError as e:
        raise _unreadable(d / "model.safetensors", e) from None
    except Exception as e:  # safetensors raises several types for truncated/garbled files
        raise _corrupt(d / "model.safetensors", e) from None
    if saved_step is not None and int(saved_step) != meta.get("step"):
        raise ValueError(
            f"{d}: model.safetensors is from step {saved_step} but config.json from step "
            f"{meta.get('step')} (the files were mixed by hand); use an earlier checkpoint"
        )
    tok = _checked_tokenizer(d, meta) if with_tokenizer else None
    return model.to(device), meta, tok


def _checked_tokenizer(d: Path, meta: dict) -> Tokenizer | None:
    """``d/tokenizer.model`` if there is one, refused when it is not the one the weights were trained with."""
    path = d / "tokenizer.model"
    try:
        return Tokenizer.beside_weights(path, (meta.get("data") or {}).get("tokenizer_fingerprint"))
    except PermissionError as e:
        raise _unreadable(path, e) from None


def _load_train_state(d: Path, step: int) -> dict:
    path = d / "train_state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the checkpoint has weights but no optimizer state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as e:
        raise _unreadable(path, e) from None
    except Exception as e:
        raise _corrupt(path, e) from None
    if state["step"] != step:
        raise ValueError(f"{path} is from step {state['step']} but the weights from step {step}")
    return state


def _peek_step(d: Path) -> object:
    try:
        return json.loads((d / "config.json").read_text()).get("step", "?")
    except (OSError, ValueError, AttributeError):
        return "?"


class FolderLock:
    """An exclusive lock on a training folder (``OUT/.lock`` holds the owner's pid); released at exit or death."""

    def __init__(self, folder: Path) -> None:
        self.path, self._fh = Path(folder) / ".lock", None

    def __enter__(self) -> FolderLock:
        fh = open(self.path, "a+")
        try:
            if os.name == "nt":
                import msvcrt

                msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise ValueError(
                f"{self.path.parent} is in use by another training process (pid {holder}): wait for "
                "it to finish, stop it, or train into another --out"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            self._fh.close()  # closing releases the lock
            self._fh = None
