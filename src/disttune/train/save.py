"""Saving the final model, and proving that what was saved loads back as the trained weights.

The trained weights are gathered once (every rank takes part: ZeRO-3 and FSDP2 hold shards), written
with each tied weight once (as ``save_pretrained`` does for an unsharded model), and then the folder is
loaded back the way a user will load it (``from_pretrained``; PEFT's own loader for an adapter) and
compared tensor by tensor with the gathered weights. A tensor missing from the files, one that
transformers initialised or re-tied on load to something else, or one that differs from the trained
value stops the run with the names of those tensors. LoRA runs save the adapter, and on request a
merged model built from the base weights on disk.

Why the gathered weights are re-tied here: accelerate's gathered state dicts under ZeRO-1/2 and FSDP2
hold a separate copy of each tied tensor (``clone_tensors_for_torch_save``, DTensor ``full_tensor``), so
transformers no longer sees them as one and writes both, e.g. ``lm_head.weight`` beside
``model.embed_tokens.weight`` for Qwen2, Gemma or GPT-2.
"""

from __future__ import annotations

from pathlib import Path

ZERO3_GATHER_FIX = (
    "set deepspeed_config.zero3_save_16bit_model: true in the accelerate config (stage3_gather_16bit_weights_"
    "on_model_save: true in a DeepSpeed JSON) so the full weights are gathered on save"
)


def tied_weight_keys(model) -> dict[str, str]:
    """``{tied name: source name}`` that transformers re-ties on load (empty when the config unties them)."""
    expand = getattr(model, "get_expanded_tied_weights_keys", None)
    return dict(expand(all_submodels=True)) if callable(expand) else {}


def without_tied_copies(state: dict, tied: dict[str, str]) -> dict:
    """``state`` minus each tied name whose source is present: the file then holds every tied weight once."""
    return {name: tensor for name, tensor in state.items() if not (name in tied and tied[name] in state)}


def gathered_state_dict(trainer, adapter_only: bool = False) -> dict | None:
    """The full trained weights on the main process (``None`` elsewhere). Every rank must call it.

    Mirrors ``Trainer.save_model``: accelerate's ``get_state_dict`` (ZeRO-3 gathers one layer at a time,
    FSDP2 a full state dict on rank 0); with LoRA under ZeRO-3 only the trainable parameters.
    """
    accelerator = trainer.accelerator
    model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
    if trainer.is_deepspeed_enabled and model.zero_optimization_partition_weights():
        if not model.zero_gather_16bit_weights_on_model_save():
            raise RuntimeError(
                f"ZeRO-3 cannot write a loadable final model as configured: {ZERO3_GATHER_FIX}."
            )
        state = model._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=adapter_only)
    else:
        state = accelerator.get_state_dict(trainer.model if accelerator.is_fsdp2 else model)
    return state if accelerator.is_main_process else None


def compare_weights(
    expected: dict,
    loaded: dict,
    folder: Path,
    what: str,
    never_loaded: list[str] = (),
    tied: dict[str, str] | None = None,
) -> None:
    """Raise ``RuntimeError`` unless ``loaded`` holds every tensor of ``expected`` with the same values.

    ``expected``: the trained (gathered) weights; ``loaded``: what loading ``folder`` produced;
    ``never_loaded``: names the loader reported missing from the files (it initialised them itself);
    ``tied``: the loader's ``{tied name: source}``, to name the cause when training moved a tied pair apart.
    Values are compared exactly (in the trained dtype): both sides come from the same tensors. The two
    sides may live on different devices (the trained weights on the GPU, the loaded ones on the CPU): each
    pair is compared on the host, one tensor at a time (``on_host``).
    """
    import torch

    missing = sorted(set(expected) - set(loaded))
    never_loaded = sorted(set(never_loaded) & set(expected))
    differing = []
    for name in sorted(set(expected) & set(loaded)):
        want, got = on_host(expected[name]), on_host(loaded[name])
        if want.shape != got.shape:
            differing.append(f"{name} (shape {tuple(got.shape)}, trained {tuple(want.shape)})")
        elif not torch.equal(got.to(want.dtype), want):
            diff = (got.to(torch.float32) - want.to(torch.float32)).abs().max().item()
            differing.append(f"{name} (max |difference| {diff:.3g})")
    if not (missing or never_loaded or differing):
        return
    problems = []
    if missing:
        problems.append(f"absent after loading: {_names(missing)}")
    if never_loaded:
        problems.append(
            f"not in the saved files, so the loader initialised them itself: {_names(never_loaded)}"
        )
    stale = [d for d in differing if d.split(" ")[0] not in never_loaded]
    if stale:
        problems.append(f"loaded with values other than the trained ones: {_names(stale)}")
    tied = tied or {}
    untied = [
        f"{name} -> {tied[name]}"
        for name in sorted(tied)
        if name in expected and tied[name] in expected and not _same(expected[name], expected[tied[name]])
    ]
    cause = (
        f" The model's config ties {_names(untied)} (tie_word_embeddings), so transformers re-ties them on load, "
        "but the trained values differ: training did not keep them tied. Set tie_word_embeddings to false in "
        "config.json before training to train them apart, or keep them one parameter while training."
        if untied
        else " The files on disk are not the model that was trained; do not use them, and report this with the "
        "accelerate config and the model."
    )
    raise RuntimeError(
        f"{what} in {folder} does not load back as the trained weights: " + "; ".join(problems) + "." + cause
    )


def on_host(tensor):
    """``tensor`` on the CPU (itself when it is there already): where two tensors from different devices
    (a gathered GPU weight, a weight loaded from disk) are compared."""
    tensor = tensor.detach()
    return tensor if tensor.device.type == "cpu" else tensor.to("cpu")


def _same(a, b) -> bool:
    import torch

    a, b = on_host(a), on_host(b)
    return a.shape == b.shape and torch.equal(a, b.to(a.dtype))


def _names(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_final_model(
    folder: Path, expected: dict, trust_remote_code: bool = False, what: str = "the final model"
) -> None:
    """Prove that loading ``folder`` gives ``expected``, holding at most one saved tensor at a time.

    The model is built from the saved config on the ``meta`` device (no memory): its parameter names,
    shapes and tied pairs are what ``from_pretrained`` would fill. When the files hold exactly those names
    (each tied copy once), each tensor is read lazily from the safetensors files and compared
    (``SavedTensors``): what transformers would load, without a second copy of the model in host RAM. When
    the names differ (a checkpoint format transformers converts on load, such as MoE experts stored one
    per file entry), the folder is loaded with ``from_pretrained`` and compared whole.
    """
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    # Whole on this process, not through ZeRO-3's zero.Init: that would start a collective on the main
    # process alone (the others wait in a barrier) and hang the job.
    unset_hf_deepspeed_config()
    saved = SavedTensors.open(folder)
    skeleton = _meta_model(folder, trust_remote_code)
    if saved is not None and skeleton is not None:
        tied = tied_weight_keys(skeleton)
        names = set(skeleton.state_dict())
        filled = set(saved) | {name for name, source in tied.items() if source in saved}
        if set(saved) <= names and filled == names:
            saved.alias = {name: source for name, source in tied.items() if name not in saved}
            never_loaded = sorted(names - filled)
            compare_weights(expected, saved, folder, what, never_loaded, tied)
            return
    _check_by_loading(folder, expected, trust_remote_code, what)


class SavedTensors:
    """The tensors of a folder's safetensors files as a read-only mapping, each read when asked for.

    ``alias``: ``{tied name: source name}`` for the tied copies the files hold once (what transformers
    re-ties on load).
    """

    def __init__(self, files: dict[str, Path]):
        self.files = files  # tensor name -> the file that holds it
        self.alias: dict[str, str] = {}

    @classmethod
    def open(cls, folder: Path) -> SavedTensors | None:
        """The folder's tensors (one file or an index of shards), or None without safetensors files."""
        import json

        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map", {})
            return cls({name: folder / file for name, file in weight_map.items()})
        single = folder / "model.safetensors"
        if not single.is_file():
            return None
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as handle:
            return cls(dict.fromkeys(handle.keys(), single))

    def __iter__(self):
        return iter([*self.files, *self.alias])

    def __contains__(self, name) -> bool:
        return name in self.files or name in self.alias

    def __len__(self) -> int:
        return len(self.files) + len(self.alias)

    def __getitem__(self, name: str):
        from safetensors import safe_open

        name = self.alias.get(name, name)
        with safe_open(str(self.files[name]), framework="pt") as handle:
            return handle.get_tensor(name)


def _meta_model(folder: Path, trust_remote_code: bool):
    """The model of ``folder``'s config on the meta device (names, shapes, tied pairs), or None."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # a model class that cannot be built on meta: the loading check decides
        return None
    model.tie_weights()
    return model


def _check_by_loading(folder: Path, expected: dict, trust_remote_code: bool, what: str) -> None:
    """Load ``folder`` with ``AutoModelForCausalLM.from_pretrained`` and compare it with ``expected``."""
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        folder, trust_remote_code=trust_remote_code, dtype="auto", output_loading_info=True
    )
    compare_weights(
        expected, model.state_dict(), folder, what, info.get("missing_keys", []), tied_weight_keys(model)
    )


def check_adapter(folder: Path, expected: dict) -> None:
    """Load the saved LoRA adapter with PEFT's loader and compare it with ``expected`` (adapter names)."""
    from peft.utils import load_peft_weights

    compare_weights(expected, load_peft_weights(str(folder), device="cpu"), folder, "the LoRA adapter")


def save_final(trainer, folder: Path) -> dict | None:
    """Gather, write ``folder`` once (tied weights once) and return the gathered weights (main process only).

    Every rank must call it. With LoRA the adapter is written (PEFT keeps only its own tensors) and the
    returned weights are the adapter's, under PEFT's names.
    """
    from peft import PeftModel, get_peft_model_state_dict

    model = trainer.accelerator.unwrap_model(trainer.model_wrapped or trainer.model)
    is_peft = isinstance(model, PeftModel)
    state = gathered_state_dict(trainer, adapter_only=is_peft)
    if state is None:
        return None
    trainer._save(
        str(folder), state_dict=without_tied_copies(state, tied_weight_keys(model))
    )  # + tokenizer, args
    return get_peft_model_state_dict(model, state_dict=state) if is_peft else state


def save_merged_lora(
    base_name_or_path: str, adapter_dir: Path, output_dir: Path, trust_remote_code: bool = False
) -> Path:
    """Load the base model from disk (or hub), apply the saved adapter, merge it, save, and check the result.

    Runs on one process after training; DeepSpeed's ZeRO-3 construction hooks are switched off first
    so the base model loads whole on this rank.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    base = AutoModelForCausalLM.from_pretrained(base_name_or_path, trust_remote_code=trust_remote_code)
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    merged.save_pretrained(output_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(output_dir)
    check_final_model(output_dir, merged.state_dict(), trust_remote_code, what="the merged LoRA model")
    return output_dir
