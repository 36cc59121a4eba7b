"""The fast path: which fused kernels and which attention a run uses, and why (one line each in the plan).

A default here is one a lent GPU has measured (docs/benchmarks.md, "GPU"); until then a feature is opt-in
and its line says "not yet measured on a GPU". The choices are pure functions of what they depend on (the
device, the strategy, the model type, the installed packages, what the user set), so CPU tests cover every
branch; ``build.build_trainer`` applies them once the model is loaded.

- **Liger's kernels** (transformers' ``use_liger_kernel``; with TRL 1.16 its layer kernels, RMSNorm, SwiGLU and
  RoPE: TRL keeps its own chunked LM head and turns Liger's fused cross-entropy off): on by default on CUDA in
  one process and under DDP, where one H200 measured the same loss (10.12342 vs 10.12355 after 3 steps,
  bf16), 12% less allocated memory and no slower steps. Opt-in elsewhere, with a line saying it is not yet
  measured there. (TRL 1.16 calls the flag deprecated in favour of hub kernels, which an offline machine
  cannot fetch: its warning stays visible.)
- **Attention**: what the model loads with (transformers picks sdpa when nothing is given). A
  flash-attention kernel with padding-free packing is not yet measured on a GPU here: the line says how to
  ask for it when it is installed.
"""

from __future__ import annotations

import importlib.util

from disttune.errors import UserError

LIGER_MEASURED = ("ddp",)  # checkpoint layouts (disttune.strategies) where a GPU measured Liger equal
LIGER_PIN = "liger-kernel==0.8.5"


def liger_model_types() -> set[str] | None:
    """The model types Liger patches (its own table), or None when liger-kernel is not installed."""
    if importlib.util.find_spec("liger_kernel") is None:
        return None
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN
    except Exception:  # installed but unusable here (no Triton, no GPU): as good as absent
        return None
    return set(MODEL_TYPE_TO_APPLY_LIGER_FN)


def choose_liger(
    asked: bool | None, cuda: bool, layout: dict, model_type: str, supported: set[str] | None
) -> tuple[bool, str | None]:
    """Whether the run uses Liger's kernels, and the plan's line about it (None: nothing worth saying).

    ``asked``: the user's ``--use_liger_kernel`` (None when not given); ``layout``: ``{"strategy", "world_size"}``
    as the launcher announced them (``distributed.current_layout``); ``supported``: ``liger_model_types()``.
    """
    strategy, world = layout["strategy"], layout["world_size"]
    if asked:
        if not cuda:
            raise UserError(
                "--use_liger_kernel: Liger's kernels are Triton GPU kernels; no CUDA GPU is visible.\n"
                "  fix: drop --use_liger_kernel on this machine."
            )
        if supported is None:
            raise UserError(
                f"--use_liger_kernel needs liger-kernel.\n  fix: pip install {LIGER_PIN} (make install does on CUDA)."
            )
        measured = (
            "" if strategy in LIGER_MEASURED else f"; not yet measured on a GPU under {strategy} x{world}"
        )
        return True, f"Liger kernels on (--use_liger_kernel){measured}"
    if asked is False or not cuda:
        return False, None
    if supported is None:
        return False, f"Liger kernels off: liger-kernel is not installed (pip install {LIGER_PIN})"
    if model_type not in supported:
        return False, f"Liger kernels off: Liger has no kernels for model type {model_type!r}"
    if strategy not in LIGER_MEASURED:
        return False, (
            f"Liger kernels off under {strategy}: not yet measured on a GPU (--use_liger_kernel true to use them)"
        )
    return True, (
        "Liger kernels on (RMSNorm, SwiGLU, RoPE: measured equal loss and 12% less memory on one H200); "
        "--use_liger_kernel false turns them off"
    )


def check_attention(asked: str | None, cuda: bool) -> None:
    """Refuse, before the model loads, an attention implementation that cannot train on this machine:
    torch's flex_attention has no backward on a CPU ("FlexAttention does not support backward on CPU"; under
    a launch it fails at the first step as an inductor compile error, after the model and data loaded)."""
    if asked == "flex_attention" and not cuda:
        raise UserError(
            "--attn_implementation flex_attention: torch's flex_attention trains on GPUs only (its backward "
            "has no CPU kernel); no CUDA GPU is visible.\n"
            "  fix: drop --attn_implementation on this machine (transformers picks sdpa), or run it on a GPU."
        )


def describe_attention(model_config, asked: str | None, cuda: bool, padding_free: bool) -> str:
    """The plan's line about attention: the implementation the model loaded with, and why."""
    used = getattr(model_config, "_attn_implementation", None) or "eager"
    if asked:
        return f"attention: {used} (--attn_implementation {asked})"
    flash = next((f for f in ("flash_attn_3", "flash_attn") if importlib.util.find_spec(f) is not None), None)
    if cuda and flash:
        kernel = "flash_attention_3" if flash == "flash_attn_3" else "flash_attention_2"
        packing = "" if padding_free else " --padding_free true"
        return (
            f"attention: {used} (transformers' default); {kernel} is installed but not yet measured on a GPU "
            f"here: --attn_implementation {kernel}{packing} to use it"
        )
    return f"attention: {used} (transformers' default{'' if cuda else ' on a CPU'})"
