"""What a run measured, per rank, gathered to every rank: parameters held, memory, model size.

Everything is read from the live objects after training (never from the config's claims).
"""

from __future__ import annotations

import resource


def local_param_numel(model) -> int:
    """Parameter elements this rank really holds: its shard under ZeRO-3 or FSDP, else everything."""
    total = 0
    for param in model.parameters():
        if hasattr(param, "ds_tensor"):  # DeepSpeed ZeRO-3 partitioned parameter
            total += int(param.ds_tensor.numel())
        elif hasattr(param, "to_local"):  # FSDP2 DTensor
            total += int(param.to_local().numel())
        else:
            total += int(param.numel())
    return total


def full_param_count(model) -> int:
    """All parameter elements of the model, wherever they live."""
    return sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters())


def peak_memory_bytes(device) -> tuple[int, str]:
    """This process's peak memory: CUDA allocator peak on GPU, the process's peak RSS on CPU."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def gather(value) -> list:
    """``value`` from every rank, in rank order (a one-element list when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [value]
    values = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def measure_run(trainer) -> dict:
    """Per-rank measurements for ``run_summary.json``; every rank must call it (it gathers)."""
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    peak, peak_kind = peak_memory_bytes(trainer.accelerator.device)
    return {
        "num_params": full_param_count(model),
        "trainable_params": sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in model.parameters() if p.requires_grad),
        "local_param_numel": gather(local_param_numel(model)),
        "peak_memory_bytes": gather(peak),
        "peak_memory_kind": peak_kind,
    }
