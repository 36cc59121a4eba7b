"""The final-save check: a saved folder must load back (``from_pretrained``) as the trained weights.

In-process, on a tiny Qwen2 with tied embeddings (hidden 64, 2 layers): the check passes on a correct
save, and fails, naming the tensor and the cause, when a saved tensor is missing, holds other values
than the trained one, or when a tied pair was trained apart.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def trained():
    """A tiny tied Qwen2 and its weights as ``accelerate.get_state_dict`` gathers them under ZeRO-2/FSDP2:
    every tensor a separate copy, the tied one included."""
    from disttune.train.families import build_family_model
    from disttune.train.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_family_model("qwen2", tokenizer, seed=3)
    gathered = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    return model, tokenizer, gathered


def _save(model, tokenizer, state, folder):
    from disttune.train.save import tied_weight_keys, without_tied_copies

    model.save_pretrained(folder, state_dict=without_tied_copies(state, tied_weight_keys(model)))
    tokenizer.save_pretrained(folder)
    return folder


def _rewrite(folder, change):
    """Apply ``change`` to the saved tensors (a dict) and write them back."""
    from safetensors.torch import load_file, save_file

    file = str(folder / "model.safetensors")
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def test_tied_weights_are_written_once_and_load_back_as_trained(tmp_path, trained):
    from safetensors import safe_open

    from disttune.train.save import check_final_model

    model, tokenizer, gathered = trained
    assert gathered["lm_head.weight"].data_ptr() != gathered["model.embed_tokens.weight"].data_ptr()
    folder = _save(model, tokenizer, gathered, tmp_path / "final")
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        keys = set(handle.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys
    assert len(keys) == len(gathered) - 1  # 26 of 27 names: the tied one once, as for Qwen2.5-0.5B on the hub
    check_final_model(folder, gathered)  # the re-tied lm_head equals the trained one


def test_a_tensor_missing_from_the_files_fails_with_its_name(tmp_path, trained):
    from disttune.train.save import check_final_model

    model, tokenizer, gathered = trained
    folder = _save(model, tokenizer, gathered, tmp_path / "final")
    _rewrite(folder, lambda t: t.pop("model.layers.1.mlp.down_proj.weight"))
    with pytest.raises(RuntimeError) as error:
        check_final_model(folder, gathered)
    message = str(error.value)
    assert (
        "not in the saved files, so the loader initialised them itself: model.layers.1.mlp.down_proj.weight"
        in message
    )
    assert "do not use them" in message
    assert "zero3_save_16bit_model" not in message  # not a ZeRO-3 gathering problem: no misleading fix


def test_a_stale_tensor_fails_with_its_name_and_difference(tmp_path, trained):
    from disttune.train.save import check_final_model

    model, tokenizer, gathered = trained
    folder = _save(model, tokenizer, gathered, tmp_path / "final")

    def stale(tensors):
        tensors["model.layers.0.self_attn.q_proj.bias"][3] += 0.25

    _rewrite(folder, stale)
    with pytest.raises(
        RuntimeError,
        match=r"loaded with values other than the trained ones: "
        r"model\.layers\.0\.self_attn\.q_proj\.bias \(max \|difference\| 0\.25\)",
    ):
        check_final_model(folder, gathered)


def test_a_tied_pair_trained_apart_names_tie_word_embeddings(tmp_path, trained):
    import torch

    from disttune.train.save import check_final_model

    model, tokenizer, gathered = trained
    apart = dict(gathered)
    apart["lm_head.weight"] = gathered["lm_head.weight"] + torch.full_like(gathered["lm_head.weight"], 1e-3)
    folder = _save(model, tokenizer, apart, tmp_path / "final")
    with pytest.raises(RuntimeError) as error:
        check_final_model(folder, apart)
    message = str(error.value)
    assert "lm_head.weight (max |difference| 0.001)" in message
    assert "ties lm_head.weight -> model.embed_tokens.weight (tie_word_embeddings)" in message


def test_compare_weights_reports_absent_names_and_passes_on_equal():
    import torch

    from disttune.train.save import compare_weights

    expected = {"a": torch.ones(2), "b": torch.zeros(3)}
    compare_weights(expected, {"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.float64)}, "dir", "x")
    with pytest.raises(RuntimeError, match="absent after loading: b"):
        compare_weights(expected, {"a": torch.ones(2)}, "dir", "x")
    with pytest.raises(RuntimeError, match=r"a \(shape \(3,\), trained \(2,\)\)"):
        compare_weights(expected, {"a": torch.ones(3), "b": torch.zeros(3)}, "dir", "x")


def test_the_adapter_check_fails_on_a_changed_lora_tensor(tmp_path, trained):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    from disttune.train.families import build_family_model
    from disttune.train.save import check_adapter

    model = build_family_model("qwen2", trained[1], seed=3)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "final")
    expected = get_peft_model_state_dict(peft_model)
    check_adapter(tmp_path / "final", expected)
    file = str(tmp_path / "final" / "adapter_model.safetensors")
    tensors = load_file(file)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] * 2
    save_file(tensors, file)
    with pytest.raises(
        RuntimeError, match=f"the LoRA adapter in .* loaded with values other than the trained ones: {name}"
    ):
        check_adapter(tmp_path / "final", expected)


def test_the_check_reads_saved_tensors_one_at_a_time_without_loading_a_second_model(
    tmp_path, trained, monkeypatch
):
    """A dense model's check never builds a second full model (a 70B one would need 280 GB of host RAM at
    the end of the run): names and shapes come from a meta-device skeleton, values from the files."""
    from disttune.train import save

    model, tokenizer, gathered = trained
    folder = _save(model, tokenizer, gathered, tmp_path / "final")
    monkeypatch.setattr(save, "_check_by_loading", lambda *a, **k: pytest.fail("loaded a whole model"))
    reads = []
    original = save.SavedTensors.__getitem__
    monkeypatch.setattr(
        save.SavedTensors, "__getitem__", lambda self, n: reads.append(n) or original(self, n)
    )
    save.check_final_model(folder, gathered)
    assert sorted(reads) == sorted(gathered)  # lm_head.weight read through its tied source


def test_a_format_transformers_converts_on_load_is_checked_by_loading(tmp_path, monkeypatch):
    """MoE experts: one fused tensor in the model, one entry per expert in the files."""
    from disttune.train import save
    from disttune.train.families import build_family_model
    from disttune.train.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_family_model("qwen2_moe", tokenizer, seed=1)
    model.save_pretrained(tmp_path / "final")
    loaded = []
    original = save._check_by_loading
    monkeypatch.setattr(save, "_check_by_loading", lambda *a, **k: loaded.append(1) or original(*a, **k))
    save.check_final_model(tmp_path / "final", {n: t.detach().clone() for n, t in model.state_dict().items()})
    assert loaded == [1]
