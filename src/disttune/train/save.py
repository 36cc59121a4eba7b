"""Saving the final model and proving the files are complete.

Under ZeRO-3 a model file can silently come out empty or partial (weights not gathered); a run that
says "saved" must have written every parameter. LoRA runs save the adapter, and on request a merged
model built from the base weights on disk.
"""

from __future__ import annotations

from pathlib import Path


def saved_numel(folder: Path) -> int:
    """Total tensor elements in the safetensors files of ``folder`` (read from headers only)."""
    from safetensors import safe_open

    total = 0
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def check_saved(folder: Path, expected_numel: int, what: str) -> None:
    """Raise ``RuntimeError`` unless ``folder`` holds ``expected_numel`` tensor elements.

    Tied weights are stored once, so a saved count may be lower by exactly the tied tensors: the caller
    passes the count of distinct parameters.
    """
    found = saved_numel(folder)
    if found != expected_numel:
        raise RuntimeError(
            f"{what} in {folder} holds {found:,} tensor elements, expected {expected_numel:,}: the saved "
            "files are incomplete. Under DeepSpeed ZeRO-3 set deepspeed_config.zero3_save_16bit_model: true "
            "in the accelerate config so the full weights are gathered on save."
        )


def save_merged_lora(base_name_or_path: str, adapter_dir: Path, output_dir: Path, trust_remote_code: bool = False) -> Path:
    """Load the base model from disk (or hub), apply the saved adapter, merge it, and save the result.

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
    return output_dir
