"""What a run measured, per rank, gathered to every rank: parameters held, memory, model-state bytes.

Everything is read from the live objects (never from the config's claims). Model-state bytes are
counted from the tensors themselves around one optimizer step (``StepProbe``): every storage once, by
``(device, untyped_storage().data_ptr())``, in the first category that reaches it:

    params     the model's parameters (their storage: ZeRO-1/2 flat buffers, ZeRO-3 ``ds_tensor``
               partitions, FSDP2 local shards)
    grads      ``param.grad`` of those parameters, then any optimizer attribute or ``.grad`` whose
               name says gradient (``averaged_gradients``, ``grads_in_partition``, ...)
    optimizer  the torch optimizer's ``state`` (Adam moments), then optimizer attributes naming
               fp32 master copies (``single_partition_of_fp32_groups``, ``fp32_partitioned_groups_flat``)
    other      any other tensor an optimizer object holds (DeepSpeed ipg buckets, 16-bit partitions
               not shared with the parameters, ...)

DeepSpeed's attributes are discovered generically: the optimizer object (and the objects of deepspeed's
own classes it holds) is scanned for tensors and lists/dicts of tensors, so a renamed buffer is still
counted (as ``other`` when its name says nothing). Storages on the CPU are also reported as ``cpu_bytes``
(the offloaded part on a GPU run; everything on a CPU run).
"""

from __future__ import annotations

import resource

CATEGORIES = ("params", "grads", "optimizer", "other")
_MAX_DEPTH = 4


def local_param_numel(model) -> int:
    """Parameter elements this rank really holds: its shard under ZeRO-3 or FSDP, else everything."""
    total = 0
    for param in model.parameters():
        if hasattr(param, "ds_tensor"):  # DeepSpeed ZeRO-3: this rank's partition ...
            # ... plus the full tensor where it stays materialised (parameters under the persistence
            # threshold); a released parameter's .data is empty.
            total += int(param.ds_tensor.numel()) + int(param.data.numel())
        elif hasattr(param, "to_local"):  # FSDP2 DTensor
            total += int(param.to_local().numel())
        else:
            total += int(param.numel())
    return total


def param_numel(param) -> int:
    """A parameter's full element count, even when ZeRO-3 has partitioned it away from this rank."""
    return int(getattr(param, "ds_numel", 0) or param.numel())


def full_param_count(model, trainable_only: bool = False) -> int:
    """All (or the trainable) parameter elements of the model, wherever they live; tied weights once."""
    return sum(param_numel(p) for p in model.parameters() if p.requires_grad or not trainable_only)


def peak_memory_bytes(device) -> tuple[int, str]:
    """This process's peak memory: CUDA allocator peak on GPU, the process's peak RSS on CPU."""
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def gather(value) -> list:
    """``value`` from every rank, in rank order (a one-element list when not distributed)."""
    from accelerate.utils import gather_object

    return gather_object([value])  # accelerate concatenates the ranks' lists


def category_of(name: str) -> str:
    """The category an optimizer attribute's tensors belong to, from its name (see the module docstring)."""
    name = name.lower()
    if name.startswith("state"):  # a torch optimizer's per-parameter state: Adam moments, step counts
        return "optimizer"
    if "ipg" in name:
        return "other"
    if "grad" in name:
        return "grads"
    if "fp32" in name or "master" in name or "exp_avg" in name:
        return "optimizer"
    return "other"


class StorageCounter:
    """Bytes per category, each storage counted once (first category wins)."""

    def __init__(self):
        self.seen: dict[
            tuple[str, int], tuple[str, int, str]
        ] = {}  # (device, ptr) -> (category, nbytes, source)

    def add(self, tensor, category: str, source: str = "") -> None:
        import torch

        if not isinstance(tensor, torch.Tensor):
            return
        local = getattr(tensor, "_local_tensor", None)  # DTensor (FSDP2): the shard this rank holds
        if local is not None:
            tensor = local
        if tensor.is_meta:
            return
        storage = tensor.untyped_storage()
        nbytes = int(storage.nbytes())
        if nbytes == 0:
            return  # ZeRO-3 releases gathered params to empty tensors; FSDP2 frees unsharded storages
        key = (storage.device.type, int(storage.data_ptr()))
        self.seen.setdefault(key, (category, nbytes, source or category))

    def totals(self) -> dict:
        return totals_of(self.seen)


def totals_of(seen: dict) -> dict:
    """``{params, grads, optimizer, other, total, cpu_bytes, sources}`` from a snapshot map.

    ``sources``: bytes per ``category:source`` (the attribute path that reached each storage first).
    """
    out = dict.fromkeys(CATEGORIES, 0)
    cpu = 0
    sources: dict[str, int] = {}
    for (device, _), (category, nbytes, source) in seen.items():
        out[category] += nbytes
        cpu += nbytes if device == "cpu" else 0
        label = f"{category}:{source}"
        sources[label] = sources.get(label, 0) + nbytes
    out["total"] = sum(out[c] for c in CATEGORIES)
    out["cpu_bytes"] = cpu
    out["sources"] = dict(sorted(sources.items(), key=lambda kv: -kv[1]))
    return out


def _scan(obj, name: str, counter: StorageCounter, visited: set, depth: int) -> None:
    """Count the tensors reachable from ``obj`` (tensors, sequences, dicts, deepspeed-owned objects)."""
    import torch

    if depth > _MAX_DEPTH or id(obj) in visited:
        return
    if isinstance(obj, torch.Tensor):
        counter.add(obj, category_of(name), name)
        if obj.grad is not None:
            counter.add(obj.grad, "grads", f"{name}.grad")
        return
    if isinstance(obj, torch.nn.Module) or obj is None or isinstance(obj, str | int | float | bool):
        return  # modules hold the parameters (already counted) and buffers that are not model state
    visited.add(id(obj))
    if isinstance(obj, list | tuple | set):
        for item in obj:
            _scan(item, name, counter, visited, depth + 1)
    elif isinstance(obj, dict):
        for key, item in obj.items():
            _scan(item, f"{name}.{key}" if isinstance(key, str) else name, counter, visited, depth + 1)
    elif isinstance(obj, torch.optim.Optimizer):
        for state in obj.state.values():
            _scan(state, "state", counter, visited, depth + 1)
        _scan_attributes(obj, name, counter, visited, depth)
    elif type(obj).__module__.startswith("deepspeed") and hasattr(obj, "__dict__"):
        _scan_attributes(obj, name, counter, visited, depth)


def _scan_attributes(obj, name: str, counter: StorageCounter, visited: set, depth: int) -> None:
    for attr, value in vars(obj).items():
        if attr in ("param_groups", "defaults"):
            continue  # torch optimizer: the parameters again
        _scan(value, f"{name}.{attr}" if name else attr, counter, visited, depth + 1)


def model_state_snapshot(model, optimizer) -> dict:
    """``(device, data_ptr) -> (category, nbytes, source)`` of every storage holding model state right now.

    ``model``: the (wrapped or unwrapped) model; ``optimizer``: the optimizer that really steps
    (a torch optimizer, or DeepSpeed's ZeRO optimizer, which holds the torch one).
    """
    counter = StorageCounter()
    params = list(model.parameters())
    for param in params:
        counter.add(param, "params", "model.parameters")
        if hasattr(param, "ds_tensor"):
            counter.add(param.ds_tensor, "params", "param.ds_tensor")
    for param in params:
        counter.add(param.grad, "grads", "param.grad")
        if hasattr(param, "ds_tensor") and param.ds_tensor.grad is not None:
            counter.add(param.ds_tensor.grad, "grads", "param.ds_tensor.grad")
    inner = getattr(optimizer, "optimizer", None)
    visited: set = set()
    import torch

    for opt in (optimizer, inner):  # the torch optimizer's state first, then DeepSpeed's attributes
        if isinstance(opt, torch.optim.Optimizer):
            for state in opt.state.values():
                _scan(state, "state", counter, visited, 1)
    _scan(optimizer, "", counter, visited, 0)
    return dict(counter.seen)


def stepping_optimizer(optimizer):
    """The object whose ``step`` really updates the weights: DeepSpeed's ZeRO optimizer or the torch one.

    accelerate wraps both (``AcceleratedOptimizer`` / ``DeepSpeedOptimizerWrapper``) in ``.optimizer``;
    under DeepSpeed the engine calls the ZeRO optimizer's ``step`` itself.
    """
    inner = getattr(optimizer, "optimizer", None)
    return inner if inner is not None and type(optimizer).__module__.startswith("accelerate") else optimizer


class StepProbe:
    """Snapshots model-state storages at three moments of optimizer step number ``at_step``.

    ``end_of_backward`` (DeepSpeed only: before ZeRO's gradient reduction, when ZeRO-1 still holds every
    full gradient), ``before_step`` (gradients alive) and ``after_step`` (lazily created optimizer
    states alive). The largest of them is what the step held at once. Costs a few tensor walks, once.

    A torch optimizer is observed through its own step hooks (``register_step_pre_hook`` /
    ``register_step_post_hook``). DeepSpeed's ZeRO optimizers are not torch optimizers and have no hooks,
    and the engine steps them inside ``backward``, before the trainer's ``on_pre_optimizer_step`` event:
    for them alone, ``step`` and the gradient-reduction methods are wrapped on the instance.
    """

    REDUCE_METHODS = ("reduce_gradients", "overlapping_partition_gradients_reduce_epilogue")

    def __init__(self, model, optimizer, at_step: int = 2):
        import torch

        self.model, self.at_step, self.calls = model, at_step, 0
        self.optimizer = stepping_optimizer(optimizer)
        self.snapshots: dict[str, dict] = {}
        if isinstance(self.optimizer, torch.optim.Optimizer):
            self.optimizer.register_step_pre_hook(lambda *_: self._before_step())
            self.optimizer.register_step_post_hook(lambda *_: self._after_step())
            return
        original = self.optimizer.step

        def step(*args, **kwargs):
            self._before_step()
            result = original(*args, **kwargs)
            self._after_step()
            return result

        self.optimizer.step = step
        for name in self.REDUCE_METHODS:
            if callable(getattr(self.optimizer, name, None)):
                self._wrap_reduce(name)

    def _before_step(self) -> None:
        self.calls += 1
        if self.calls == self.at_step:
            self.snapshots["before_step"] = model_state_snapshot(self.model, self.optimizer)

    def _after_step(self) -> None:
        if self.calls == self.at_step:
            self.snapshots["after_step"] = model_state_snapshot(self.model, self.optimizer)

    def _wrap_reduce(self, name: str) -> None:
        original = getattr(self.optimizer, name)

        def reduce(*args, **kwargs):
            if self.calls == self.at_step - 1 and "end_of_backward" not in self.snapshots:
                self.snapshots["end_of_backward"] = model_state_snapshot(self.model, self.optimizer)
            return original(*args, **kwargs)

        setattr(self.optimizer, name, reduce)

    def result(self) -> dict | None:
        """Per-category bytes at the fullest moment of the probed step (None if that step never ran)."""
        if "after_step" not in self.snapshots:
            return None
        totals = {moment: totals_of(snap) for moment, snap in self.snapshots.items()}
        fullest = max(totals, key=lambda moment: totals[moment]["total"])
        return {
            **totals[fullest],
            "moment": fullest,
            "optimizer_step": self.at_step,
            "moment_totals": {moment: t["total"] for moment, t in totals.items()},
        }


def reserved_memory_bytes(device) -> int | None:
    """``torch.cuda.max_memory_reserved``: what the caching allocator held at its peak (None off CUDA).

    This, not the live-tensor peak, is what nvidia-smi and published per-GPU figures report.
    """
    import torch

    if getattr(device, "type", "cpu") != "cuda":
        return None
    return int(torch.cuda.max_memory_reserved(device))


def measure_run(trainer) -> dict:
    """Per-rank measurements for ``run_summary.json``; every rank must call it (it gathers).

    Model-state bytes come from the ``StepProbe`` of the trainer's ``MetricsCallback`` when it ran,
    else from one snapshot now (after training).
    """
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    peak, peak_kind = peak_memory_bytes(trainer.accelerator.device)
    metrics = next((cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "probe")), None)
    probe = getattr(metrics, "probe", None)
    state = probe.result() if probe is not None else None
    if state is None and trainer.optimizer is not None:
        state = {
            **totals_of(model_state_snapshot(trainer.model, stepping_optimizer(trainer.optimizer))),
            "optimizer_step": "after training",
        }
    return {
        "num_params": full_param_count(model),
        "trainable_params": full_param_count(model, trainable_only=True),
        "local_param_numel": gather(local_param_numel(model)),
        "peak_memory_bytes": gather(peak),
        "peak_memory_kind": peak_kind,
        "peak_memory_reserved_bytes": gather(reserved_memory_bytes(trainer.accelerator.device)),
        "model_state_bytes": gather(state),
        **_throughput(metrics),
    }


def _throughput(metrics) -> dict:
    """Each rank's own tokens/s over the run, and the callback's FLOPs/MFU summary (gathers)."""
    if metrics is None:
        return {}
    rate = round(metrics._rank_last / metrics.total_time, 2) if metrics.total_time > 0 else None
    return {"tokens_per_second_per_rank": gather(rate), **metrics.summary()}


# Peak dense (no 2:4 sparsity) 16-bit tensor-core FLOP/s with fp32 accumulation, from the vendors' datasheets.
# Matched against torch.cuda.get_device_name() in order (first hit wins), so "H100 PCIe" precedes "H100".
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),  # NVIDIA H100 datasheet, PCIe: 1,513 TFLOPS bf16 with sparsity -> 756 dense
    ("H100", 989e12),  # H100 SXM: 1,979 with sparsity -> 989 dense
    ("H200", 989e12),  # H200 datasheet (SXM): same tensor cores as H100 SXM
    ("A100", 312e12),  # A100 datasheet: bf16/fp16 tensor 312 dense (624 sparse)
    ("L40S", 362e12),  # L40S datasheet: 362.05 dense (733 sparse)
    ("A10G", 125e12),  # the A10 datasheet's 125 dense; AWS does not publish the A10G's own figure
    ("RTX 4090", 165e12),  # Ada whitepaper: 165.2 with fp32 accumulate (330.3 only with fp16 accumulate)
    ("V100", 125e12),  # V100 SXM2 datasheet: fp16 tensor 125 (no bf16; V100 PCIe is 112)
)


def peak_flops(device_name: str | None) -> float | None:
    """Peak dense 16-bit FLOP/s of one device from its name, or None (CPU, unknown card)."""
    if not device_name:
        return None
    for key, value in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def flops_per_token(
    num_params: int, embedding_params: int, num_layers: int, hidden_size: int, seq_len: float
) -> float:
    """Training FLOPs per token: 6 N + 12 L h s (PaLM, Chowdhery et al. 2022, appendix B).

    N = parameters minus the input embedding (a lookup, not a matmul; lm_head is counted); 6N is
    forward (2N) + backward (4N) of the matmuls; 12 L h s the attention scores and values over a context
    of s tokens (forward + backward, causal masking not discounted). s is the mean context per token over
    the documents trained on, sum(s_i^2) / sum(s_i) (``metrics.document_square_sum``): a token attends
    within its own document, not across a packed row nor over padding.
    """
    return 6.0 * (num_params - embedding_params) + 12.0 * num_layers * hidden_size * seq_len


def mfu(
    tokens_per_second: float | None, flops_token: float | None, peak: float | None, world_size: int
) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the peak of all ``world_size`` devices."""
    if not tokens_per_second or not flops_token or not peak:
        return None
    return tokens_per_second * flops_token / (peak * world_size)


def model_shape(model) -> dict:
    """Parameter count, input-embedding size, layers and hidden size of a (possibly wrapped) HF model."""
    config = getattr(model, "config", None)
    embedding = 0
    get_emb = getattr(model, "get_input_embeddings", None)
    if callable(get_emb) and get_emb() is not None:
        embedding = full_param_count(get_emb())
    return {
        "num_params": full_param_count(model),
        "embedding_params": embedding,
        "num_layers": int(getattr(config, "num_hidden_layers", 0) or 0),
        "hidden_size": int(getattr(config, "hidden_size", 0) or 0),
    }
