"""What the launch set up, and the strategy-specific fixes, in one place so the training code never
branches on the strategy.

The launcher's environment (rank, world size, restart count), what accelerate/DeepSpeed/FSDP really set up
(``describe``: never the config file's claims), and the few fixes a strategy needs on a CPU or under ZeRO-3.
Standard library at import (torch is imported inside the functions that need it).
"""

from __future__ import annotations

import os

from disttune.strategies import checkpoint_layout, identify


def describe(accelerator) -> dict:
    """Strategy, ZeRO stage, world size and precision as the running accelerator sees them.

    ``strategy`` is the row of ``disttune/strategies.py`` that this setup matches (None for one process, or
    for a combination the table does not hold, such as FSDP with offload).
    """
    state = accelerator.state
    zero_stage, offload_optimizer, offload_params = None, False, False
    if state.deepspeed_plugin is not None:
        zero_stage = int(state.deepspeed_plugin.zero_stage)
        zero = state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        offload_optimizer = _offloaded(zero.get("offload_optimizer"))
        offload_params = _offloaded(zero.get("offload_param"))
    fsdp_version = None
    if getattr(state, "fsdp_plugin", None) is not None:
        fsdp_version = int(getattr(state.fsdp_plugin, "fsdp_version", 1))
        policy = getattr(state.fsdp_plugin, "cpu_offload", None)  # FSDP1: CPUOffload; FSDP2: an OffloadPolicy
        offload_params = bool(getattr(policy, "offload_params", type(policy).__name__ == "CPUOffloadPolicy"))
    distributed_type = str(state.distributed_type).split(".")[-1]
    return {
        "strategy": identify(distributed_type, zero_stage, fsdp_version, offload_optimizer, offload_params),
        "distributed_type": distributed_type,
        "zero_stage": zero_stage,
        "fsdp_version": fsdp_version,
        "world_size": int(state.num_processes),
        "mixed_precision": str(state.mixed_precision),
        "device": str(accelerator.device),
        "backend": getattr(state, "backend", None),
    }


def _offloaded(section) -> bool:
    """Whether a DeepSpeed ``offload_optimizer`` / ``offload_param`` section moves the states off the GPU."""
    return isinstance(section, dict) and str(section.get("device", "none")).lower() not in ("none", "")


ALLOCATOR_ENVS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")  # torch's old and new name
EXPANDABLE = "expandable_segments:True"


def default_allocator(environ=os.environ) -> str:
    """Turn on the CUDA caching allocator's expandable segments unless the user configured the allocator.

    With fixed segments, blocks freed at the end of the forward pass (activations, logits) leave cached
    segments that later, differently sized allocations (gradients, the optimizer states created at the
    first step) cannot reuse: on one H200 the peak reserved memory was 24% above the peak allocated.
    Expandable segments grow one mapping instead (torchtitan's launch script sets the same). Must run
    before the first CUDA allocation. Returns the allocator setting the run uses, for the plan.
    """
    for name in ALLOCATOR_ENVS:
        if environ.get(name):
            return f"{name}={environ[name]} (yours)"
    environ[ALLOCATOR_ENVS[0]] = EXPANDABLE
    return f"{ALLOCATOR_ENVS[0]}={EXPANDABLE} (disttune's default; set the variable to change it)"


def rank_from_env() -> int:
    """This process's global rank, as the launcher exported it (0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def world_size_from_env() -> int:
    """The world size the launcher announced (1 when run as a plain script)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _elastic_int(environ, name: str) -> int:
    try:
        return int(environ.get(name, "0"))
    except ValueError:
        return 0


def restart_count(environ=os.environ) -> int:
    """How many times torchrun's elastic agent has restarted this job (0 for the first attempt)."""
    return _elastic_int(environ, "TORCHELASTIC_RESTART_COUNT")


def max_restarts(environ=os.environ) -> int:
    """``--max_restarts`` of this launch (0 without the elastic agent's restarts)."""
    return _elastic_int(environ, "TORCHELASTIC_MAX_RESTARTS")


def current_layout(environ=os.environ) -> dict:
    """World size and checkpoint layout (``strategies.checkpoint_layout``) as the launcher announced them."""
    if environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        kind, stage = "DEEPSPEED", environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    elif environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        kind, stage = "FSDP", None
    else:
        kind, stage = "MULTI_GPU", None
    return {"world_size": int(environ.get("WORLD_SIZE", "1")), "strategy": checkpoint_layout(kind, stage)}


def _flag(environ, name: str) -> bool:
    return environ.get(name, "false").lower() == "true"


def cpu_distributed_defaults(cuda_available: bool, environ=os.environ) -> tuple[dict, list[str]]:
    """Make every accelerate strategy really distributed on a machine without GPUs.

    Left alone, accelerate on CPU (a) runs a MULTI_GPU config as N unsynchronised copies (its backend
    is only chosen for GPUs), (b) starts DeepSpeed with world size 1 in its own bookkeeping, so DeepSpeed
    refuses the batch size (``16 != 16 * 1 * 2``), and (c) treats an FSDP config as plain DDP. Here:
    DDP goes through accelerate's MULTI_CPU path (gloo); DeepSpeed and FSDP get the gloo backend, and
    FSDP is promoted after the process group exists (see ``promote_fsdp_on_cpu``).

    Must run before ``TrainingArguments`` is built. Returns parser defaults and notes for the log.
    """
    launched = environ.get("LOCAL_RANK") is not None and int(environ.get("WORLD_SIZE", "1")) > 1
    if cuda_available or not launched:
        return {}, []
    if _flag(environ, "ACCELERATE_USE_DEEPSPEED"):
        return {"ddp_backend": "gloo"}, ["no GPU: DeepSpeed runs on the CPU over gloo"]
    if _flag(environ, "ACCELERATE_USE_FSDP"):
        return {"ddp_backend": "gloo"}, ["no GPU: FSDP shards on the CPU over gloo"]
    environ["ACCELERATE_USE_CPU"] = "true"
    return {}, ["no GPU: data parallel on the CPU over gloo (MULTI_CPU)"]


def promote_fsdp_on_cpu(cuda_available: bool, environ=os.environ) -> None:
    """Let accelerate pick FSDP on CPU: it only does so for GPU-like distributed types.

    Called after ``TrainingArguments`` created the process group and before the trainer builds its
    ``Accelerator``; marks the (already initialised, gloo) state as multi-device so that the FSDP
    plugin is applied. FSDP2's ``fully_shard`` itself works on CPU tensors over gloo.
    """
    if cuda_available or not _flag(environ, "ACCELERATE_USE_FSDP"):
        return
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    state = PartialState()
    if state.num_processes > 1 and state.distributed_type == DistributedType.NO:
        state.distributed_type = DistributedType.MULTI_GPU


# DeepSpeed sizes that scale with the model. Left out of the config that accelerate builds from its YAML,
# they fall back to DeepSpeed's fixed defaults (e.g. a 1e5-element persistence threshold, under which a
# small model's parameters are never sharded by ZeRO-3). "auto" lets accelerate derive them from
# hidden_size exactly as HF's documented ZeRO templates do (h*h, 0.9*h*h, 10*h).
HIDDEN_SIZE_AUTO_KEYS = (
    "reduce_bucket_size",
    "stage3_prefetch_bucket_size",
    "stage3_param_persistence_threshold",
)


def deepspeed_auto_sizes(training_args) -> list[str]:
    """Mark the hidden-size-based DeepSpeed sizes ``auto`` where the config left them unset.

    Values the user wrote (in a DeepSpeed JSON) are kept. Returns the keys that were filled.
    """
    plugin = getattr(training_args, "deepspeed_plugin", None)
    if plugin is None:
        return []
    zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
    filled = [key for key in HIDDEN_SIZE_AUTO_KEYS if key not in zero]
    for key in filled:
        zero[key] = "auto"
    return filled


def sparse_moe_blocks(model) -> list[str]:
    """Class names of the model's sparse mixture-of-experts blocks: the modules with a child named ``experts``.

    That is how transformers lays out every MoE family (Mixtral, Qwen2/3-MoE, DeepSeek, OLMoE, DBRX, Jamba,
    GPT-OSS, ...): a block holding the router and its ``experts``.
    """
    return sorted(
        {type(module).__name__ for module in model.modules() if "experts" in dict(module.named_children())}
    )


def zero3_moe_leaf_modules(model) -> str | None:
    """Under ZeRO-3, make each sparse MoE block a DeepSpeed leaf module; returns a note (None when not needed).

    ZeRO-3 fetches a module's parameters in hooks, in the order it recorded; with experts as separate
    modules, a rank whose tokens reach other experts than its peers' issues other all-gathers, and the run
    hangs. A leaf module is gathered whole on entry (``deepspeed.utils.set_z3_leaf_modules``, DeepSpeed's
    recommendation for MoE). DeepSpeed 0.19's default ``zero_optimization.leaf_module`` names Mixtral's and
    Qwen2/3-MoE's blocks only; this covers every block ``sparse_moe_blocks`` finds, and says so. Call it
    after loading the model, before the trainer prepares it. The note goes into the plan's notes.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    blocks = sparse_moe_blocks(model)
    if not blocks or not is_deepspeed_zero3_enabled():
        return None
    from deepspeed.utils import set_z3_leaf_modules

    marked = set_z3_leaf_modules(model, blocks)
    note = (
        f"ZeRO-3: {len(marked)} mixture-of-experts blocks ({', '.join(blocks)}) are DeepSpeed leaf modules: "
        "each is gathered whole, so ranks routing tokens to different experts stay in step"
    )
    return note
