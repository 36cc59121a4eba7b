"""Pick the fastest strategy that fits, or say what to change; compare with the seed's rule of thumb."""

from __future__ import annotations

from dataclasses import dataclass, replace

from disttune.estimate.strategies import GIB, HEADROOM, Inputs, ModelInfo, StrategyEstimate, estimate
from disttune.strategies import NAMES, STRATEGIES, speed_rank, start_from

# Fastest first, by the table's speed_rank (disttune/strategies.py says why each row sits where it does).
SPEED_ORDER = tuple(sorted(NAMES, key=speed_rank))
OFFLOAD = frozenset(s.name for s in STRATEGIES if s.offloads)
RULE_OF_THUMB = {"zero2": 0.30, "zero3": 0.50}  # the seed's "~30%" and "~50%" saving vs DDP


@dataclass(frozen=True)
class Recommendation:
    """The chosen strategy (None if nothing fits), why in one sentence, and what to change otherwise."""

    strategy: str | None
    reason: str
    suggestions: tuple[str, ...] = ()


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def recommend(
    results: list[StrategyEstimate], model: ModelInfo | None = None, inputs: Inputs | None = None
) -> Recommendation:
    """Fastest (lowest ``speed_rank``) strategy that fits the GPU and the host RAM; otherwise what would fit.

    With ``model`` and ``inputs`` the suggestions are checked by re-estimating: gradient checkpointing,
    per-device batch 1, LoRA r=16, more nodes of the same size, and ZeRO-3 without offload on more GPUs.
    """
    ranked = sorted(
        results, key=lambda r: speed_rank(r.name)
    )  # a name without a rank raises, never drops out
    budget = (1 - HEADROOM) * inputs.gpu_memory_gb * GIB if inputs else None
    host_short = [r for r in ranked if r.gpu_fits and r.host_fits is False]
    host_note = "".join(f" {r.name} would fit the GPUs but {r.why}." for r in host_short)
    for r in ranked:
        if r.fits:
            slower = [s.name for s in ranked if s.name != r.name and s.fits]
            why = (
                f"{r.name} is the fastest strategy that fits: {_gib(r.total_bytes)} per GPU"
                + (
                    f" of the {_gib(int(budget))} usable ({int(HEADROOM * 100)}% headroom kept)"
                    if budget
                    else ""
                )
                + (f", {_gib(r.cpu_bytes_per_node)} host RAM per node" if r.cpu_bytes_per_node else "")
                + ("; faster ones do not fit." if ranked[0].name != r.name else ".")
                + (f" Also fits: {', '.join(slower)}." if slower else "")
                + host_note
            )
            how = start_from(r.name)
            return Recommendation(r.name, why + (f" {how}." if how else ""))
    smallest = min(ranked, key=lambda r: r.total_bytes) if ranked else None
    if host_short:
        reason = "Nothing fits: every strategy that fits the GPUs needs more host RAM than the node has."
    else:
        reason = "Nothing fits" + (
            f": the smallest is {smallest.name} at {_gib(smallest.total_bytes)}" if smallest else ""
        )
        reason += f" per GPU against {_gib(int(budget))} usable." if budget else "."
    reason += host_note
    return Recommendation(
        None, reason, tuple(_suggestions(model, inputs, [r.name for r in ranked])) if model and inputs else ()
    )


def _first_fit(model: ModelInfo, inputs: Inputs, strategies: list[str]) -> StrategyEstimate | None:
    results = sorted(estimate(model, inputs, tuple(strategies)), key=lambda r: speed_rank(r.name))
    return next((r for r in results if r.fits), None)


def _needs(hit: StrategyEstimate) -> str:
    host = f" and {_gib(hit.cpu_bytes_per_node)} host RAM per node" if hit.cpu_bytes_per_node else ""
    return f"{hit.name} then needs {_gib(hit.total_bytes)} per GPU{host}"


def _scaled(inputs: Inputs, procs: int) -> Inputs:
    per_node = inputs.num_processes // inputs.num_machines
    return replace(inputs, num_processes=procs, num_machines=max(1, procs // per_node))


def _fewest_gpus(model: ModelInfo, inputs: Inputs, strategies: list[str]):
    """Doubling the GPUs (nodes of the same size) up to 1024: the first count where a strategy fits."""
    procs = inputs.num_processes
    while procs < 1024:
        procs *= 2
        hit = _first_fit(model, _scaled(inputs, procs), strategies)
        if hit:
            return procs, hit
    return procs, None


def _nodes(inputs: Inputs, procs: int) -> str:
    machines = _scaled(inputs, procs).num_machines
    return f" ({machines} nodes of {procs // machines})" if machines > 1 else ""


def _suggestions(model: ModelInfo, inputs: Inputs, strategies: list[str]) -> list[str]:
    out = []
    tries = []
    if not (inputs.gradient_checkpointing or inputs.selective_checkpointing):
        tries.append(("turn on --gradient_checkpointing", replace(inputs, gradient_checkpointing=True)))
    if inputs.per_device_train_batch_size > 1:
        tries.append(
            (
                "use --per_device_train_batch_size 1 (raise --gradient_accumulation_steps to keep the "
                "global batch)",
                replace(inputs, per_device_train_batch_size=1),
            )
        )
    if inputs.lora_r is None and model.spec is not None:
        tries.append(("train LoRA adapters (--lora_r 16)", replace(inputs, lora_r=16)))
    for text, changed in tries:
        hit = _first_fit(model, changed, strategies)
        if hit:
            out.append(f"{text}: {_needs(hit)}.")
    checkpointed = None
    if not (inputs.gradient_checkpointing or inputs.selective_checkpointing):
        checkpointed = replace(inputs, gradient_checkpointing=True)

    def fewest(allowed: list[str], say: str, checkpointing_say: str) -> StrategyEstimate | None:
        """More GPUs as they are; with checkpointing too, when that needs fewer of them."""
        procs, hit = _fewest_gpus(model, inputs, allowed)
        if hit:
            out.append(say.format(procs=procs, nodes=_nodes(inputs, procs)) + f"{_needs(hit)}.")
        if checkpointed is not None:
            fewer, hit_ckpt = _fewest_gpus(model, checkpointed, allowed)
            if hit_ckpt and (hit is None or fewer < procs):
                out.append(
                    checkpointing_say.format(procs=fewer, nodes=_nodes(inputs, fewer))
                    + f"{_needs(hit_ckpt)}."
                )
        return hit

    hit = fewest(
        strategies, "use {procs} GPUs{nodes}: ", "with --gradient_checkpointing, use {procs} GPUs{nodes}: "
    )
    plain = [s for s in strategies if s not in OFFLOAD]
    if (hit is None or hit.name in OFFLOAD) and plain:
        fewest(
            plain,
            "without offload (no host RAM needed), on {procs} GPUs{nodes}: ",
            "without offload and with --gradient_checkpointing, on {procs} GPUs{nodes}: ",
        )
    if not out:
        out.append("combine the above (LoRA, gradient checkpointing, batch 1) or use GPUs with more memory.")
    return out


def rule_of_thumb(results: list[StrategyEstimate]) -> dict[str, dict[str, float]] | None:
    """The seed's saving vs DDP ("~30%" ZeRO-2, "~50%" ZeRO-3) beside the exact saving of total per-GPU bytes."""
    by_name = {r.name: r for r in results}
    if "ddp" not in by_name:
        return None
    base = by_name["ddp"].total_bytes
    return {
        s: {"rule_of_thumb": RULE_OF_THUMB[s], "exact": 1 - by_name[s].total_bytes / base}
        for s in RULE_OF_THUMB
        if s in by_name
    }
