"""Bytes per GPU rank, term by term: model states, implementation buffers, activations.

Model states follow the ZeRO paper (Rajbhandari et al. 2020, K=12 for mixed-precision Adam) where the
real stacks agree with it, and the real stacks where they do not. P = parameters, T = trainable ones
(P without LoRA), F = P - T frozen, N = processes, w = 2 bytes under fp16/bf16 and 4 under ``no``:

    ddp    16P           (torch DDP: accelerate keeps fp32 weights and autocasts; 4P+4P grads+8P Adam;
                          weights loaded in 16-bit (``--dtype bfloat16``) train in 16-bit: 2P+2P+4P)
    zero1  4P + 12P/N    (DeepSpeed: 2P bf16 params + 2P bf16 grads + 4P/N fp32 master + 8P/N Adam)
    zero2  2P + 14P/N    (grads partitioned: 2P/N)
    zero3  16P/N         (everything partitioned; the fp32 master is a clone even when w=4, measured)
    fsdp2  16P/N         (fp32 sharded params 4P/N + grads 4P/N + Adam 8P/N; accelerate upcasts to fp32)

Frozen weights (LoRA's base) stay as loaded under DDP and FSDP2 (fp32 by default: the training script loads
fp32 and autocasts) and become 16-bit under DeepSpeed, whose engine casts the whole module.
    offload variants     (the partitions named ``cpu.`` live in host RAM; see ``model_state_breakdown``)

Beyond the model states (``buffer_breakdown``, ``runtime_breakdown``; the activations are in
``activations.py``, the allocator's reserve in ``allocator.py``): what the implementations and the CUDA
runtime hold at the peak. Each term is a named allocation with a source, never a factor fitted to
measurements (docs/memory.md). ``PROGRESSIVE_GRADS`` are allocated during backward (torch's ``.grad``, set to
None by ``zero_grad``), so the start of backward, where the activations peak, does not hold them yet.

Term names are ``<category>.<what>``; category is params / grads / optim; a ``cpu.`` prefix marks host
memory under offload. ``TERM_SOURCES`` says which file allocates each term.
"""

from __future__ import annotations

from disttune.strategies import NAMES

STRATEGIES = NAMES  # every row of disttune/strategies.py; each has a formula below (a test checks)
GIB = 1024**3
CUDA_CONTEXT_BYTES = (
    GIB // 2
)  # CUDA context + loaded kernels + cuBLAS handles, lazy module loading (CUDA >= 11.7)
NCCL_BYTES = GIB // 2  # one communicator: 2 ring peers x up to 32 channels x (Simple 4 MiB + LL128 ~4.6 MiB)
MIXED_PRECISION = ("no", "fp16", "bf16")
OPTIMIZERS = ("adamw", "adamw_8bit")

# DeepSpeed 0.19.8 runtime/zero/config.py defaults, in elements. They hold only for a DeepSpeed JSON that
# sets these keys to nothing; the shipped configs (and "auto") get ``hf_auto_buckets`` instead.
DEEPSPEED_DEFAULTS = {
    "reduce_bucket_size": 500_000_000,
    "sub_group_size": 1_000_000_000,
    "stage3_prefetch_bucket_size": 50_000_000,
    "stage3_max_live_parameters": 1_000_000_000,
    "stage3_param_persistence_threshold": 100_000,
}


def hf_auto_buckets(hidden_size: int) -> dict[str, int]:
    """What accelerate/transformers fill in for ``auto`` (and for the shipped configs) from the model.

    accelerate/accelerator.py ``_prepare_deepspeed`` and transformers/integrations/deepspeed.py:
    reduce_bucket_size = h^2, stage3_prefetch_bucket_size = 0.9 h^2, persistence threshold = 10 h.
    Measured: a live ZeRO-3 run of the tiny preset (h=128) had threshold 1280 and a 16384-element ipg bucket.
    """
    h = int(hidden_size)
    return {
        "reduce_bucket_size": h * h,
        "stage3_prefetch_bucket_size": int(0.9 * h * h),
        "stage3_param_persistence_threshold": 10 * h,
    }


S12 = "deepspeed/runtime/zero/stage_1_and_2.py"
S3 = "deepspeed/runtime/zero/stage3.py"
TERM_SOURCES = {
    "params.fp32": "torch: trainable weights stay fp32 (accelerate autocasts; FSDP2 upcasts them in fsdp_utils)",
    "params.frozen": "torch: frozen (LoRA base) weights as loaded (fp32 by default) under DDP/FSDP2; 16-bit "
    "under DeepSpeed, whose engine casts the module",
    "params.bit16": "torch: weights loaded in 16-bit (--dtype bfloat16) train in 16-bit under DDP",
    "grads.bit16": "torch: param.grad in the 16-bit weights' dtype (Adam's states follow the weights too)",
    "grads.fp32": "torch: param.grad, same dtype as the fp32 weight",
    "optim.exp_avg": "torch.optim.AdamW / DeepSpeed optimizer: first moment, fp32",
    "optim.exp_avg_sq": "torch.optim.AdamW / DeepSpeed optimizer: second moment, fp32",
    "params.bit16_flat": f"{S12}: bit16_groups_flat, the module's weights flattened (params become views)",
    "grads.full": f"{S12}: param.grad in the model dtype, full size until step (ZeRO-1)",
    "grads.partition": f"{S12}: grads_in_partition / {S3}: grad_partitions_flat_buffer, model dtype",
    "optim.fp32_master_partition": f"{S12}: single_partition_of_fp32_groups (a clone, even in fp32) / "
    f"{S3}: fp32_partitioned_groups_flat (a clone too: measured in fp32)",
    "params.partition": f"{S3} + partition_parameters.py: ds_tensor partitions in lp_param_buffer",
    "params.persistent": "deepspeed/runtime/zero/parameter_offload.py: params <= "
    "stage3_param_persistence_threshold stay gathered (full) on every rank",
    "cpu.params.bit16_buffer": f"{S12}: param_buffer_of_bit16_for_cpu_offload_groups (offload)",
    "cpu.grads.fp32_partition": f"{S12}: single_partition_of_fp32_groups[i].grad, pinned (offload)",
    "cpu.grads.partition": f"{S3}: grad_partitions_flat_buffer on self.device=cpu (offload_optimizer)",
    "cpu.grads.fp32_subgroup": f"{S3}: initialize_optimizer_states subgroup_gradient_buffer (offload)",
    "cpu.optim.fp32_master_partition": f"{S3}/{S12}: fp32 master partition on the CPU (a copy)",
    "cpu.optim.exp_avg": "deepspeed/ops/adam/cpu_adam.py DeepSpeedCPUAdam: first moment, fp32",
    "cpu.optim.exp_avg_sq": "deepspeed/ops/adam/cpu_adam.py DeepSpeedCPUAdam: second moment, fp32",
    "cpu.params.partition": f"{S3}: ds_tensor partitions on the CPU (offload_param)",
    "cpu.params.bit16_partition": f"{S3}: ds_tensor partitions on the CPU (offload_param only; optimizer on GPU)",
    # buffers
    "ddp_reducer_buckets": "torch DDP Reducer: flat bucket copy of every grad (gradient_as_bucket_view=False, "
    "accelerate's default)",
    "ipg_bucket": f"{S12} setup_buckets / {S3} _setup_for_real_optimizer: reduce_bucket_size elements",
    "fp32_grad_partition_at_step": f"{S12} step: flat_grad_partition.to(fp32), transient",
    "fp32_grad_subgroup": f"{S3} _prepare_fp32_grad_for_sub_group: flatten(averaged_gradients) (w) .to(fp32) (4), "
    "one sub group of min(sub_group_size, T/N) at a time, during step",
    # allocator reserve (allocator.py): cached blocks torch.cuda.max_memory_reserved counts beside the live ones
    "logits_forward_block": "torch caching allocator, fixed segments: the 16-bit lm_head output, freed after "
    "ForCausalLMLoss's upcast; every later request of the loss is a 4-byte one, larger, so it stays cached",
    "phase_segments": "torch caching allocator, fixed segments: the step's flat fp32 gradient is larger than any "
    "block backward freed (a request never spans two blocks), so the two phases take separate segments",
    "stranded_blocks": "torch caching allocator, fixed segments: blocks cut for an earlier step with fewer "
    "tokens are too small for the same tensors of a larger step, which takes new segments beside them",
    "stream_pools": "torch caching allocator: each stream has its own pool; FSDP2 allocates the sharded "
    "gradients in its reduce-scatter stream, idle there at the start of backward",
    "gathered_params": f"{S3}/partitioned_param_coordinator.py: the module being computed (largest weight) + "
    "stage3_prefetch_bucket_size, capped by stage3_max_live_parameters",
    "offload_grad_staging": f"{S12}: temp_grad_buffer_for_gpu_offload (largest param)",
    "unsharded_params": "torch FSDP2: root unit (embeddings, lm_head) + current and prefetched layer, all-gathered",
    "unsharded_grads": "torch FSDP2: one layer's unsharded grads before reduce-scatter",
    "unreduced_grad": f"{S12}/{S3}: the largest parameter's 16-bit .grad, whole on the GPU until it is copied "
    "into the reduce bucket (DeepSpeed's estimator: 4 bytes x largest layer = this + the "
    "gathered 16-bit weight)",
    # runtime (outside torch's caching allocator: nvidia-smi shows it, torch.cuda.max_memory_reserved does not)
    "cuda_context": "CUDA driver: context, the kernels loaded so far and cuBLAS/cuDNN handles (~0.3-1 GiB)",
    "nccl_buffers": "NCCL: per-peer, per-channel protocol buffers of the communicator (NCCL_BUFFSIZE 4 MiB)",
}
STEP_BUFFERS = ("fp32_grad_partition_at_step", "fp32_grad_subgroup")  # exist only during optimizer.step()
PROGRESSIVE_GRADS = ("grads.fp32", "grads.bit16", "grads.full")  # torch .grad: allocated during backward


def _per_rank(n: int, world: int) -> int:
    return -(-n // world)


def _optimizer_terms(
    trainable: int, optimizer: str, prefix: str = "", state_bytes: int = 4
) -> dict[str, int]:
    """Adam moments: 2 x 4 bytes (fp32; torch keeps them in the weights' dtype: 2 x 2 for 16-bit weights);
    bitsandbytes 8-bit: 1 byte each + an fp32 absmax per 256-block."""
    if optimizer == "adamw_8bit":
        per_state = trainable + 4 * _per_rank(trainable, 256)
    else:
        per_state = state_bytes * trainable
    return {f"{prefix}optim.exp_avg": per_state, f"{prefix}optim.exp_avg_sq": per_state}


def _torch_terms(strategy: str, T: int, F: int, n: int, optimizer: str, model_dtype: str) -> dict[str, int]:
    """DDP (whole) and FSDP2 (sharded): weights, frozen weights, ``.grad`` and Adam in the weights' dtype;
    FSDP2's weights are fp32 whatever was loaded (accelerate upcasts them, fsdp_utils.py)."""
    shard = (lambda x: _per_rank(x, n)) if strategy == "fsdp2" else (lambda x: x)
    p = 4 if model_dtype == "float32" or strategy == "fsdp2" else 2
    kind = "fp32" if p == 4 else "bit16"
    terms = {f"params.{kind}": p * shard(T), "params.frozen": p * shard(F), f"grads.{kind}": p * shard(T)}
    terms.update(_optimizer_terms(shard(T), optimizer, state_bytes=p))
    return terms


def _zero3_offload_terms(strategy: str, w: int, Pn: int, Tn: int, persistent: int, optimizer: str) -> dict:
    """ZeRO-3 with parameters (``_params``), the optimizer (``_optimizer``) or both offloaded to host RAM."""
    if strategy == "zero3_offload_params":  # parameters in host RAM, gradients and optimizer on the GPU
        terms = {
            "cpu.params.bit16_partition": w * Pn,
            "params.persistent": w * persistent,
            "grads.partition": w * Tn,
            "optim.fp32_master_partition": 4 * Tn,
        }
        terms.update(_optimizer_terms(Tn, optimizer))
        return terms
    params_key = "cpu.params.partition" if strategy == "zero3_offload" else "params.partition"
    terms = {
        params_key: w * Pn,
        "params.persistent": w * persistent,
        "cpu.grads.partition": w * Tn,
        "cpu.grads.fp32_subgroup": 4 * Tn,
        "cpu.optim.fp32_master_partition": 4 * Tn,
    }
    terms.update(_optimizer_terms(Tn, "adamw", "cpu."))
    return terms


def model_state_breakdown(
    strategy: str,
    num_params: int,
    num_processes: int,
    mixed_precision: str,
    optimizer: str = "adamw",
    trainable_params: int | None = None,
    persistent_params: int = 0,
    model_dtype: str = "float32",
) -> dict[str, int]:
    """Per-rank bytes of parameters, gradients and optimizer states, one named term each.

    ``num_params`` counts all weights; ``trainable_params`` the ones with requires_grad (default all);
    ``persistent_params`` the ZeRO-3 weights small enough to stay gathered (0 when unknown);
    ``model_dtype`` what the weights were loaded as (DDP and FSDP2 keep it; DeepSpeed casts). Offload
    variants always use DeepSpeedCPUAdam (fp32 moments) whatever ``optimizer`` says. See the module
    docstring for the formulas and ``TERM_SOURCES`` for where each term is allocated.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    if mixed_precision not in MIXED_PRECISION or optimizer not in OPTIMIZERS:
        raise ValueError(f"bad mixed_precision {mixed_precision!r} or optimizer {optimizer!r}")
    P, n = int(num_params), int(num_processes)
    T = P if trainable_params is None else int(trainable_params)
    F = P - T
    w = 2 if mixed_precision in ("fp16", "bf16") else 4
    Tn, Pn = _per_rank(T, n), _per_rank(P, n)

    if strategy in ("ddp", "fsdp2"):
        terms = _torch_terms(strategy, T, F, n, optimizer, model_dtype)
    elif strategy in ("zero1", "zero2"):
        terms = {
            "params.bit16_flat": w * P,
            "grads.full" if strategy == "zero1" else "grads.partition": w
            * (T if strategy == "zero1" else Tn),
            "optim.fp32_master_partition": 4 * Tn,
        }
        terms.update(_optimizer_terms(Tn, optimizer))
    elif strategy == "zero3":
        terms = {
            "params.partition": w * Pn,
            "params.persistent": w * persistent_params,
            "grads.partition": w * Tn,
            # _create_fp32_partitions has a branch sharing an fp32 partition, but live fp32 runs
            # (DeepSpeed 0.19.8, 2 CPU ranks) hold a separate clone: counted as one
            "optim.fp32_master_partition": 4 * Tn,
        }
        terms.update(_optimizer_terms(Tn, optimizer))
    elif strategy == "zero2_offload":
        terms = {
            "params.bit16_flat": w * P,
            "cpu.params.bit16_buffer": w * Tn,
            "cpu.grads.fp32_partition": 4 * Tn,
            "cpu.optim.fp32_master_partition": 4 * Tn,
        }
        terms.update(_optimizer_terms(Tn, "adamw", "cpu."))
    elif strategy in ("zero3_offload_params", "zero3_offload_optimizer", "zero3_offload"):
        terms = _zero3_offload_terms(strategy, w, Pn, Tn, persistent_params, optimizer)
    else:
        raise ValueError(
            f"strategy {strategy!r} has a row in disttune/strategies.py but no memory formula here"
        )
    return terms


def summarize(terms: dict[str, int]) -> dict[str, int]:
    """GPU ``params``/``grads``/``optimizer`` sums and the ``cpu`` sum of a term dict."""
    out = {"params": 0, "grads": 0, "optimizer": 0, "cpu": 0}
    for key, value in terms.items():
        if key.startswith("cpu."):
            out["cpu"] += value
        else:
            out[{"params": "params", "grads": "grads", "optim": "optimizer"}[key.split(".")[0]]] += value
    return out


def buffer_breakdown(
    strategy: str,
    num_params: int,
    num_processes: int,
    mixed_precision: str,
    trainable_params: int | None = None,
    largest_tensor: int | None = None,
    layer_params: int | None = None,
    root_params: int | None = None,
    deepspeed: dict[str, int] | None = None,
    largest_trainable: int | None = None,
    largest_gathered: int | None = None,
) -> dict[str, int]:
    """Per-rank GPU bytes the implementations hold beyond the paper's model states.

    ddp_reducer_buckets = 4T; ZeRO-1/2: ipg_bucket = reduce_bucket_size x w, fp32_grad_partition_at_step
    = 4T/N; ZeRO-2/3: unreduced_grad = w x largest trainable tensor; ZeRO-3: ipg_bucket, fp32_grad_subgroup = (w + 4) min(sub_group_size,
    T/N), gathered_params = w min(max_live, largest + prefetch_bucket) (largest: a tensor, or a MoE block
    gathered whole as a leaf module); FSDP2: unsharded_params = w (root + 2
    layers), unsharded_grads = w x layer. ``STEP_BUFFERS`` exist only inside ``optimizer.step()``, after
    backward freed the activations. Shape-dependent terms are left out when the shapes are unknown (None).
    ZeRO-1/2's allgather after the step writes in place into bit16_groups_flat (runtime/utils.py
    all_gather_dp_groups), so allgather_bucket_size costs no memory.
    """
    ds = {**DEEPSPEED_DEFAULTS, **(deepspeed or {})}
    P, n = int(num_params), int(num_processes)
    T = P if trainable_params is None else int(trainable_params)
    w = 2 if mixed_precision in ("fp16", "bf16") else 4
    Tn = _per_rank(T, n)
    out: dict[str, int] = {}
    if strategy == "ddp":
        out["ddp_reducer_buckets"] = 4 * T if n > 1 else 0
    elif strategy == "fsdp2":
        if layer_params is not None and root_params is not None:
            out["unsharded_params"] = w * (root_params + 2 * layer_params)
            out["unsharded_grads"] = w * layer_params
    else:
        out["ipg_bucket"] = w * ds["reduce_bucket_size"]
        if strategy in ("zero1", "zero2"):
            out["fp32_grad_partition_at_step"] = 4 * Tn
        largest_grad = largest_tensor if largest_trainable is None else largest_trainable
        if strategy == "zero2_offload" and largest_grad is not None:
            out["offload_grad_staging"] = w * largest_grad
        if strategy != "zero1" and largest_grad is not None:
            out["unreduced_grad"] = w * largest_grad
        if strategy in ("zero3", "zero3_offload_params"):  # flatten (w) then .to(fp32) (4, a no-op in fp32)
            out["fp32_grad_subgroup"] = (w + 4 if w != 4 else 4) * min(ds["sub_group_size"], Tn)
        if strategy.startswith("zero3"):
            fetched = ds["stage3_prefetch_bucket_size"] + max(largest_tensor or 0, largest_gathered or 0)
            out["gathered_params"] = w * min(ds["stage3_max_live_parameters"], fetched, P)
    return out


def runtime_breakdown(num_processes: int) -> dict[str, int]:
    """Per-GPU bytes outside torch's caching allocator: the CUDA context, and NCCL's buffers when N > 1.

    Both are allocated by the driver / NCCL directly, so nvidia-smi counts them and
    ``torch.cuda.max_memory_reserved`` does not. Fixed sizes from the runtimes' defaults, not measured here.
    """
    return {"cuda_context": CUDA_CONTEXT_BYTES, **({"nccl_buffers": NCCL_BYTES} if num_processes > 1 else {})}
