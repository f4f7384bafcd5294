"""Checkpoints: sharded save / load with exact resume, and a consolidated safetensors export.

Layout of a run folder::

    <out_dir>/config.json                      the run's config
    <out_dir>/checkpoints/step_000100/         one checkpoint
        dcp/                                   model + optimizer, torch.distributed.checkpoint format
        trainer_state.pt                       step, scheduler, counters (rank 0)
        rank_00000.pt ...                      per-rank RNG states (torch CPU/CUDA, numpy, python)
                                               and data-sampler position
        config.json                            the run's config (JSON)
        checkpoint.json                        manifest: step, world size, every file and its size
    <out_dir>/checkpoints/latest               name of the newest complete checkpoint

Saving is atomic: everything is written into ``step_000100.tmp/``, which is renamed to
``step_000100/`` once complete; only then is ``latest`` replaced (``os.replace``). A crash
leaves at worst a ``.tmp`` folder that is ignored and cleaned up by the next save. A good
checkpoint is never overwritten: if the target name exists it is moved aside first.

Model and optimizer go through DCP with ``get_state_dict`` / ``set_state_dict``, so a
checkpoint written by N ranks loads on M ranks (DCP reshards) and on a single process.

:func:`export_model` writes ``model.safetensors`` (the full, gathered state dict) and a
``config.json`` of our own format; :func:`load_model` rebuilds a model from a checkpoint or
from such an export.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from training.core.config import ModelConfig
from training.core.distributed import DistContext, barrier, broadcast_object

__all__ = [
    "CheckpointError",
    "EXPORT_FORMAT",
    "checkpoint_name",
    "find_checkpoint",
    "latest_checkpoint",
    "read_checkpoint_config",
    "save_checkpoint",
    "load_checkpoint",
    "load_model_weights",
    "load_model",
    "export_model",
    "capture_rng_state",
    "restore_rng_state",
]

EXPORT_FORMAT = "llm-studio"
_MANIFEST = "checkpoint.json"
_LATEST = "latest"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable. ``path`` names it, ``hint`` says what to do."""

    def __init__(self, path: str | Path, message: str, hint: str = "") -> None:
        self.path = str(path)
        self.message = message
        self.hint = hint
        super().__init__(f"{self.path}: {message}" + (f" (hint: {hint})" if hint else ""))


# --------------------------------------------------------------------------------------------
# Names and lookup
# --------------------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    """``step_000100`` for step 100.

    >>> checkpoint_name(100)
    'step_000100'
    """
    return f"step_{step:06d}"


def _ckpt_root(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer of a run folder names, or None when there is none yet."""
    root = _ckpt_root(Path(run_dir))
    pointer = root / _LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = root / name
    if not name or not path.is_dir():
        raise CheckpointError(pointer, f"the latest pointer names {name!r}, which does not exist",
                              f"pass one of the step_* folders under {root} explicitly, or delete {pointer}")
    return path


def find_checkpoint(path: str | Path) -> Path:
    """Resolve a checkpoint folder, a run folder (its latest checkpoint) or a ``checkpoints/`` folder.

    Raises :class:`CheckpointError` when nothing usable is there.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(p, "no such checkpoint or run folder",
                              "check the path; a run folder has a checkpoints/ subfolder")
    if (p / _MANIFEST).is_file():
        return p
    for run_dir in (p, p.parent if p.name == "checkpoints" else None):
        if run_dir is None:
            continue
        found = latest_checkpoint(run_dir)
        if found is not None:
            return found
    if p.name.endswith(".tmp"):
        raise CheckpointError(p, "this is an unfinished checkpoint (the save was interrupted)",
                              "resume from the run folder's latest complete checkpoint instead")
    raise CheckpointError(p, "not a checkpoint (no checkpoint.json) and no latest checkpoint inside",
                          "pass a step_* folder or a run folder that holds checkpoints/latest")


def _verify(path: Path) -> dict[str, Any]:
    """Read and check the manifest: every listed file must exist with its recorded size."""
    manifest_path = path / _MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(path, "checkpoint.json is missing: the checkpoint is incomplete",
                              "use an earlier checkpoint of the run") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(path, f"checkpoint.json is corrupt ({e})",
                              "use an earlier checkpoint of the run") from None
    for rel, size in manifest.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise CheckpointError(path, f"file {rel} is missing", "the checkpoint is damaged; use an earlier one")
        if f.stat().st_size != size:
            raise CheckpointError(path, f"file {rel} has {f.stat().st_size} bytes, expected {size} "
                                        "(truncated or altered)",
                                  "the checkpoint is damaged; use an earlier one")
    return manifest


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The run config (as a dict) saved with a checkpoint or an export folder."""
    p = Path(path)
    if (p / "config.json").is_file() and not (p / _MANIFEST).is_file():
        cfg_file = p / "config.json"  # an export folder
    else:
        p = find_checkpoint(p)
        cfg_file = p / "config.json"
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(cfg_file, f"cannot read the saved config ({e})", "the checkpoint is damaged") from None


# --------------------------------------------------------------------------------------------
# RNG
# --------------------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    """All the random generators a run uses: torch CPU, torch CUDA (all devices), numpy, python."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {  # plain tensors, ints and tuples: loadable with weights_only=True
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                npst["cached_gaussian"])
    np.random.set_state(npst)
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# Save
# --------------------------------------------------------------------------------------------

def _dist_on() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    ctx: DistContext | None = None,
    trainer_state: dict[str, Any] | None = None,
    rank_state: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    keep_last: int = 0,
) -> Path:
    """Write one checkpoint atomically (collective: every rank calls it). Returns its final path.

    ``trainer_state`` (rank 0's: step counters, scheduler state …) is saved once;
    ``rank_state`` (this rank's sampler position …) is saved per rank next to its RNG states.
    ``optimizer=None`` writes a model-only checkpoint (imports). ``keep_last`` > 0 deletes
    older complete checkpoints beyond the newest ``keep_last``.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    ctx = ctx or DistContext()
    root = _ckpt_root(Path(run_dir))
    name = checkpoint_name(step)
    final, tmp = root / name, root / f"{name}.tmp"
    if ctx.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():  # left over by an interrupted save of the same step
            shutil.rmtree(tmp)
        tmp.mkdir()
    barrier(ctx)

    # model + optimizer: sharded, resharding-friendly (FQN keys), written by every rank
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    with warnings.catch_warnings():  # single process: DCP warns that it assumes one process (it is)
        warnings.filterwarnings("ignore", message=".*assuming the intent is to")
        dcp.save(state, checkpoint_id=str(tmp / "dcp"), no_dist=not _dist_on())

    torch.save({"rng": capture_rng_state(), **(rank_state or {})}, tmp / f"rank_{ctx.rank:05d}.pt")
    if ctx.is_main:
        torch.save({"step": step, **(trainer_state or {})}, tmp / "trainer_state.pt")
        (tmp / "config.json").write_text(json.dumps(config or {}, indent=2, sort_keys=True), encoding="utf-8")
    barrier(ctx)

    if ctx.is_main:
        files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
        manifest = {"format": EXPORT_FORMAT, "step": step, "world_size": ctx.world_size,
                    "has_optimizer": optimizer is not None, "saved_at": time.time(), "files": files}
        _atomic_write_text(tmp / _MANIFEST, json.dumps(manifest, indent=2))
        if final.exists():  # never overwrite a good checkpoint: keep it under another name
            aside = root / f"{name}.superseded-{int(time.time())}"
            os.replace(final, aside)
        os.replace(tmp, final)
        _fsync_dir(root)
        _atomic_write_text(root / _LATEST, name)
        if keep_last > 0:
            _prune(root, keep_last)
    barrier(ctx)
    return final


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and (p / _MANIFEST).is_file()
                  and not p.name.endswith(".tmp") and "." not in p.name)
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------

# Checkpoints written before the RNG states were stored as tensors hold numpy arrays; these
# globals only rebuild arrays (no code runs), so they are allowed on top of weights_only.
_NUMPY_ARRAY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``): a
    checkpoint file can never run code when it is read."""
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise CheckpointError(path, f"cannot read {path.name} ({type(e).__name__}: {e})",
                              "the checkpoint is damaged; use an earlier one") from None


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    ctx: DistContext | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load model (+ optimizer) in place and return ``{"step", "trainer_state", "rank_state", "path", "world_size"}``.

    Collective under torchrun. ``path`` may be a checkpoint, a run folder or ``checkpoints/``.
    The model must be built (and sharded, if it will be) the same way as for training; DCP
    reshards when the world size differs. RNG states are restored for this rank when
    ``restore_rng`` (from rank 0's file if the checkpoint had fewer ranks).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    ctx = ctx or DistContext()
    ckpt = find_checkpoint(path)
    manifest = _verify(ckpt)
    if optimizer is not None and not manifest.get("has_optimizer", True):
        raise CheckpointError(ckpt, "this checkpoint holds model weights only (no optimizer state)",
                              "start a new run from it with init_from instead of resume_from")
    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*assuming the intent is to")
            dcp.load(state, checkpoint_id=str(ckpt / "dcp"), no_dist=not _dist_on())
    except (Exception, CheckpointException) as e:  # noqa: BLE001 - all mean "cannot use this checkpoint"
        detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise CheckpointError(ckpt, f"cannot load model/optimizer state ({detail})",
                              "check that the model config matches the checkpoint's config.json") from None
    if optimizer is not None:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(model, state["model"])

    trainer_state = _torch_load(ckpt / "trainer_state.pt")
    own = ckpt / f"rank_{ctx.rank:05d}.pt"
    same_layout = manifest.get("world_size") == ctx.world_size
    rank_state = _torch_load(own if own.is_file() else ckpt / "rank_00000.pt")
    if restore_rng and "rng" in rank_state:
        restore_rng_state(rank_state["rng"])
    return {"step": int(trainer_state["step"]), "trainer_state": trainer_state, "rank_state": rank_state,
            "path": str(ckpt), "world_size": manifest.get("world_size"), "same_world_size": same_layout}


def load_model_weights(path: str | Path, model: nn.Module, *, ctx: DistContext | None = None) -> None:
    """Load only the model weights from a checkpoint (DCP) or an export folder (safetensors)."""
    p = Path(path)
    if (p / "model.safetensors").is_file():
        _load_safetensors_into(p, model, ctx or DistContext())
        return
    load_checkpoint(p, model, None, ctx=ctx, restore_rng=False)


def _load_safetensors_into(folder: Path, model: nn.Module, ctx: DistContext) -> None:
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    try:
        sd = load_file(str(folder / "model.safetensors"))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(folder / "model.safetensors", f"cannot read ({e})", "re-export the model") from None
    cfg = getattr(model, "cfg", None)
    if cfg is not None and getattr(cfg, "tie_embeddings", False) and "output.weight" not in sd:
        sd["output.weight"] = sd["tok_embeddings.weight"]
    set_model_state_dict(model, sd, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False,
                                                               strict=True))


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a :class:`~training.core.model.Transformer` from a checkpoint or an export folder, in eval mode."""
    from training.core.model import Transformer

    data = read_checkpoint_config(path)
    model_dict = data.get("model", data)
    try:
        cfg = ModelConfig.from_dict(model_dict)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(path, f"the saved config is not a model config ({e})",
                              "point at a folder written by this studio (checkpoint or export)") from None
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device=device)
    model.init_weights()  # rebuilds the non-persistent rotary tables; weights are overwritten below
    load_model_weights(path, model)
    return model.eval()


# --------------------------------------------------------------------------------------------
# Consolidated export
# --------------------------------------------------------------------------------------------

def export_model(
    model: nn.Module,
    folder: str | Path,
    *,
    ctx: DistContext | None = None,
    config: dict[str, Any] | None = None,
) -> Path | None:
    """Gather the full state dict and write ``model.safetensors`` + ``config.json`` (rank 0).

    Collective under FSDP (every rank must call it). The tied output weight is stored once
    (``tok_embeddings.weight``), as Hugging Face does. ``config.json`` holds
    ``{"format": "llm-studio", "model": <ModelConfig>, ...config}``. Returns the folder on
    rank 0 and None on other ranks.
    """
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    ctx = ctx or DistContext()
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not ctx.is_main:
        barrier(ctx)
        return None
    cfg = getattr(model, "cfg", None)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in full.items()}
    if cfg is not None and getattr(cfg, "tie_embeddings", False):
        tensors.pop("output.weight", None)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.safetensors.tmp"
    save_file(tensors, str(tmp), metadata={"format": "pt", "producer": EXPORT_FORMAT})
    os.replace(tmp, out / "model.safetensors")
    meta = {"format": EXPORT_FORMAT, **(config or {})}
    if cfg is not None:
        meta["model"] = cfg.to_dict()
    _atomic_write_text(out / "config.json", json.dumps(meta, indent=2, sort_keys=True))
    barrier(ctx)
    return out


def broadcast_resume_path(path: str | Path | None, ctx: DistContext) -> str | None:
    """Rank 0 decides which checkpoint to resume from; every rank gets the same answer."""
    return broadcast_object(None if path is None else str(path), ctx)
