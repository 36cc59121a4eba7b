"""Tensors on two devices, held on a CPU: the class of bug the first GPU run found at the final save.

On a GPU the trained weights live on ``cuda:0`` and what is loaded back from disk on the CPU; a
comparison that mixes them raises "Expected all tensors to be on the same device". ``OtherDevice`` makes
that happen on a CPU: a tensor that says it lives on ``cuda:0`` and raises torch's error when an operation
mixes it with a plain tensor (only ``.cpu()`` / ``.to("cpu")`` bring it back). Where a real second device
is meaningful without values (the optimizer step counter of a fused AdamW), the ``meta`` device stands in.

What a CPU cannot hold: generation, DeepSpeed's and FSDP's own gathers on a GPU; those are in the GPU check
(``benchmarks/gpu_check.sh``).
"""

from __future__ import annotations

import pytest
import torch

MISMATCH = "Expected all tensors to be on the same device, but found at least two devices, cuda:0 and cpu!"


def _leaves(value):
    if isinstance(value, list | tuple):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def _to_cpu(func, args, kwargs) -> bool:
    if func is torch.Tensor.cpu:
        return True
    if func is not torch.Tensor.to:
        return False
    targets = [*args[1:], kwargs.get("device")]
    return any(str(t) == "cpu" or (isinstance(t, torch.device) and t.type == "cpu") for t in targets)


class OtherDevice(torch.Tensor):
    """A CPU tensor that behaves, for device checks, as if it lived on ``cuda:0``."""

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_subclass(cls, data.detach())

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.Tensor.device.__get__:
            return torch.device("cuda", 0)
        with torch._C.DisableTorchFunctionSubclass():
            if _to_cpu(func, args, kwargs):
                return func(*args, **kwargs).as_subclass(torch.Tensor)
            tensors = [t for t in _leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            if any(isinstance(t, cls) for t in tensors) and any(
                not isinstance(t, cls) and t.dim() > 0 for t in tensors
            ):
                raise RuntimeError(MISMATCH)
            out = func(*args, **kwargs)
        if isinstance(out, torch.Tensor) and not isinstance(out, cls):
            return out.as_subclass(cls)
        return out


def on_gpu(state: dict) -> dict:
    return {name: OtherDevice(tensor) for name, tensor in state.items()}


def test_the_stand_in_raises_torchs_error_where_a_gpu_would():
    trained = OtherDevice(torch.ones(3))
    assert trained.device == torch.device("cuda", 0)
    with pytest.raises(RuntimeError, match="same device"):
        torch.equal(torch.ones(3), trained)  # what compare_weights did before the fix
    assert torch.equal(trained.cpu(), torch.ones(3)) and type(trained.to("cpu")) is torch.Tensor


def test_compare_weights_takes_trained_weights_on_a_gpu_and_loaded_ones_on_the_cpu():
    from disttune.train.save import compare_weights

    loaded = {"a": torch.ones(2), "b": torch.zeros(3, dtype=torch.float64)}
    compare_weights(on_gpu({"a": torch.ones(2), "b": torch.zeros(3)}), loaded, "dir", "x")
    with pytest.raises(RuntimeError, match=r"other than the trained ones: a \(max \|difference\| 1\)"):
        compare_weights(on_gpu({"a": torch.full((2,), 2.0), "b": torch.zeros(3)}), loaded, "dir", "x")


def test_the_tied_pair_diagnosis_reads_gpu_tensors():
    from disttune.train.save import compare_weights

    trained = on_gpu({"embed": torch.ones(2), "head": torch.full((2,), 3.0)})
    with pytest.raises(RuntimeError, match="ties head -> embed"):
        compare_weights(
            trained, {"embed": torch.ones(2), "head": torch.ones(2)}, "dir", "x", tied={"head": "embed"}
        )


def test_final_model_and_adapter_checks_take_gpu_weights(tmp_path):
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict

    from disttune.train.families import build_family_model
    from disttune.train.save import check_adapter, check_final_model, tied_weight_keys, without_tied_copies
    from disttune.train.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_family_model("qwen2", tokenizer, seed=3)
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    model.save_pretrained(tmp_path / "final", state_dict=without_tied_copies(state, tied_weight_keys(model)))
    check_final_model(tmp_path / "final", on_gpu(state))

    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    check_adapter(tmp_path / "adapter", on_gpu(get_peft_model_state_dict(peft_model)))


@pytest.mark.parametrize("fused", [True, False])
def test_a_portable_resume_puts_a_fused_adams_step_on_the_parameters_device(fused):
    """torch's fused AdamW (the default on CUDA) refuses a step counter on another device than its
    parameters; the meta device stands in for the GPU (values are not needed, devices are)."""
    from types import SimpleNamespace

    from disttune.train.portable import _load_module

    model = torch.nn.Linear(2, 2, device="meta")
    optimizer = torch.optim.AdamW(model.parameters(), fused=fused if fused else None)
    names = [name for name, _ in model.named_parameters()]
    weights = {name: torch.ones_like(p, device="cpu") for name, p in model.named_parameters()}
    moments = {f"{k}.{n}": weights[n] for k in ("exp_avg", "exp_avg_sq") for n in names}
    trainer = SimpleNamespace(
        accelerator=SimpleNamespace(unwrap_model=lambda m: m), model_wrapped=model, optimizer=optimizer
    )
    _load_module(trainer, weights, moments, step=7)
    steps = [optimizer.state[p]["step"] for p in model.parameters()]
    assert all(s.device.type == ("meta" if fused else "cpu") and s.dtype == torch.float32 for s in steps)
    assert all(optimizer.state[p]["exp_avg"].device.type == "meta" for p in model.parameters())
