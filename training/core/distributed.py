"""Process groups, device mesh, and the model transforms applied from outside.

The model file knows nothing about distribution. This module, in the style of torchtitan's
``parallelize.py``, transforms an unchanged :class:`~training.core.model.Transformer` in a
fixed order:

1. :func:`apply_ac` — activation checkpointing around each transformer block,
2. :func:`apply_compile` — ``torch.compile`` of each block (in place, state-dict keys unchanged),
3. :func:`apply_fsdp` — FSDP2 ``fully_shard`` on each block, then on the root.

:func:`parallelize` runs the three in that order. With one process (no ``torchrun``) FSDP is
skipped and the same training loop runs on a plain module.

Launching: ``torchrun --nproc_per_node=N -m training.core.cli pretrain …`` on one node, or for
several nodes add ``--nnodes=M --node_rank=i --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT``
(same command on every node). :func:`init_distributed` reads ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set by torchrun, uses NCCL on GPUs and Gloo on CPUs, and builds a 1-D mesh.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "DistContext",
    "resolve_device",
    "init_distributed",
    "destroy_distributed",
    "apply_ac",
    "apply_compile",
    "apply_fsdp",
    "parallelize",
    "all_reduce_mean",
    "all_reduce_max",
    "barrier",
    "broadcast_object",
]


@dataclass
class DistContext:
    """Where this process sits: rank, world size, device and (when distributed) the 1-D mesh."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: Any = None  # torch.distributed.device_mesh.DeviceMesh | None
    backend: str = ""
    owns_group: bool = False

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when CUDA is available, else CPU; ``"cuda"`` without a GPU is an error."""
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device='cuda' was asked for but no CUDA device is visible; "
                               "use device='auto' or 'cpu', or check CUDA_VISIBLE_DEVICES")
        return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Set up this process from the torchrun environment (or as a single process).

    With ``WORLD_SIZE`` > 1 it calls ``init_process_group`` (NCCL on CUDA, Gloo on CPU) unless a
    group already exists, and builds a 1-D device mesh over all ranks. Returns a
    :class:`DistContext`; pass it to :func:`destroy_distributed` at the end.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world_size <= 1 and not (dist.is_available() and dist.is_initialized()):
        return DistContext(device=dev)

    from torch.distributed.device_mesh import init_device_mesh

    owns = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                                **({"device_id": dev} if dev.type == "cuda" else {}))
        owns = True
    rank, world_size = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(dev.type, (world_size,), mesh_dim_names=("dp_shard",))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, mesh=mesh,
                       backend=dist.get_backend(), owns_group=owns)


def destroy_distributed(ctx: DistContext) -> None:
    """Tear down the process group if :func:`init_distributed` created it.

    On the normal path the ranks first meet at a barrier, so that none tears down its gloo
    connections while another still finishes its last collective (a rank could otherwise abort at
    exit with "terminate called without an active exception"). While an exception propagates (a
    ``finally`` clause) there is no barrier: the other ranks may never arrive, and torchrun ends them.
    """
    if ctx.owns_group and dist.is_initialized():
        if sys.exc_info()[1] is None:
            dist.barrier()
        dist.destroy_process_group()
        ctx.owns_group = False


def _blocks(model: nn.Module) -> nn.ModuleList:
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError("expected a model with a `layers` ModuleList of transformer blocks "
                        f"(training.core.model.Transformer), got {type(model).__name__}")
    return layers


def apply_ac(model: nn.Module, *, preserve_rng_state: bool = False) -> nn.Module:
    """Full activation checkpointing: wrap each transformer block so its activations are recomputed.

    State-dict keys do not change (the wrapper strips its own prefix). Returns ``model``.
    """
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    layers = _blocks(model)
    for i, block in enumerate(list(layers)):
        layers[i] = checkpoint_wrapper(block, preserve_rng_state=preserve_rng_state)
    return model


def apply_compile(model: nn.Module, *, fullgraph: bool = False, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` each transformer block in place (``Module.compile``: keys unchanged).

    Compilation happens lazily at the first forward; ``backend="eager"`` only traces (tests).
    """
    for block in _blocks(model):
        block.compile(fullgraph=fullgraph, backend=backend)
    return model


def apply_fsdp(
    model: nn.Module,
    mesh: Any,
    *,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype = torch.float32,
    reshard_after_forward: bool = True,
) -> nn.Module:
    """FSDP2: ``fully_shard`` each transformer block, then the root (embeddings, final norm, head).

    ``param_dtype`` (e.g. ``torch.bfloat16`` on GPU) sets a ``MixedPrecisionPolicy`` with
    fp32 gradient reduction; None keeps fp32 everywhere (CPU tests). Parameters become DTensors
    sharded on dim 0 over ``mesh``. Returns ``model``.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if param_dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype)
    layers = _blocks(model)
    last = len(layers) - 1
    for i, block in enumerate(layers):
        # the last block's parameters are gathered again by backward right away: keep them
        fully_shard(block, reshard_after_forward=reshard_after_forward and i < last, **kwargs)
    fully_shard(model, reshard_after_forward=reshard_after_forward, **kwargs)
    return model


def parallelize(
    model: nn.Module,
    ctx: DistContext,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
    mixed_precision: bool = True,
) -> nn.Module:
    """Apply activation checkpointing, compile and FSDP2 in that fixed order (FSDP only when distributed).

    ``mixed_precision`` enables bf16 parameters with fp32 reduction under FSDP on CUDA devices
    that support bf16; on CPU everything stays fp32.
    """
    if activation_checkpointing:
        apply_ac(model)
    if compile:
        apply_compile(model)
    if ctx.is_distributed:
        use_bf16 = (mixed_precision and ctx.device.type == "cuda" and torch.cuda.is_bf16_supported())
        apply_fsdp(model, ctx.mesh, param_dtype=torch.bfloat16 if use_bf16 else None)
    return model


def all_reduce_mean(value: float | torch.Tensor, ctx: DistContext) -> float:
    """Average a scalar over ranks (returns it unchanged with one process)."""
    t = value.detach().float().reshape(()) if isinstance(value, torch.Tensor) else torch.tensor(float(value))
    if not ctx.is_distributed:
        return float(t)
    t = t.to(ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t) / ctx.world_size


def all_reduce_max(value: float, ctx: DistContext) -> float:
    """Maximum of a scalar over ranks."""
    if not ctx.is_distributed:
        return float(value)
    t = torch.tensor(float(value), device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op with one process)."""
    if ctx.is_distributed:
        dist.barrier()


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank."""
    if not ctx.is_distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
