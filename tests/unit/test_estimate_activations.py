"""The activation model (estimate/activations.py) against torch's autograd, and each term's golden value.

The first test runs real transformers decoders on the CPU and counts every tensor autograd saves (by
storage), so a term that is dropped or mis-sized fails it. The CPU differs from CUDA in two places the
test names: eager attention (CUDA's SDPA kernels are checked by golden values below and by the H200
measurements in test_estimate_calibration.py) and dropout's mask (a float noise tensor on the CPU, a bool
mask from CUDA's fused kernel).
"""

from __future__ import annotations

import pytest

from disttune.estimate import activations as act
from disttune.estimate.models import count_params, lora_params, matmul_params, spec_from_config

TINY = dict(
    vocab_size=96, hidden_size=64, intermediate_size=160, num_attention_heads=4, num_key_value_heads=2
)
FAMILIES = {
    "llama": {},
    "qwen3": {"head_dim": 16},  # q_norm / k_norm
    "phi3": {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2},  # fused qkv and gate_up
    "gemma2": {"head_dim": 16, "final_logit_softcapping": None, "attn_logit_softcapping": None},  # 4 norms
}
ROWS, SEQ = 2, 24


def _saved_bytes(model_type: str, layers: int, mode: str, lora: int | None) -> int:
    """Bytes of every distinct storage autograd saves in one forward, parameters excluded."""
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_type,
        **TINY,
        **FAMILIES[model_type],
        num_hidden_layers=layers,
        tie_word_embeddings=False,
        attn_implementation="eager",
        use_cache=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=lora, lora_alpha=8, lora_dropout=act.LORA_DROPOUT, target_modules="all-linear"),
        )
    if mode == "16-bit":  # as DeepSpeed's engine does: the whole module, adapters included, after PEFT
        model = model.to(torch.bfloat16)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, TINY["vocab_size"], (ROWS, SEQ))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            model(input_ids=ids)
    return sum(seen.values())


@pytest.mark.parametrize("mode", act.MODES)
@pytest.mark.parametrize(
    "model_type,lora",
    [("llama", None), ("llama", 4), ("qwen3", None), ("phi3", None), ("gemma2", None)],
)
def test_layer_tensors_match_torch_autograd(monkeypatch, model_type, lora, mode):
    """One more decoder layer saves exactly what ``layer_tensors`` + its weight copies say (CPU, eager)."""
    pytest.importorskip("peft")
    measured = _saved_bytes(model_type, 3, mode, lora) - _saved_bytes(model_type, 2, mode, lora)
    # the CPU's dropout keeps a noise tensor in its input's dtype (fp32 under autocast: the adapter's)
    monkeypatch.setattr(act, "DROPOUT_MASK_BYTES", 2 if mode == "16-bit" else 4)
    spec = spec_from_config(
        {**TINY, **FAMILIES[model_type], "model_type": model_type, "num_hidden_layers": 1}
    )
    lay = act.Layout(mode, ROWS, SEQ, attention="eager", lora_r=lora)
    model = sum(b for _, b in act.layer_tensors(spec, lay)) + act.weight_copies(spec, lay)
    tolerance = 0.005 if model_type == "gemma2" else 0  # Gemma's residue: under 1 KiB a layer here
    assert model == pytest.approx(measured, rel=tolerance), (measured, act.layer_tensors(spec, lay))


LLAMA_1B = spec_from_config(
    {
        "model_type": "llama",
        "vocab_size": 32000,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
    }
)
H, T = 2048, 8192


def _terms(lay, spec=LLAMA_1B):
    out: dict[str, int] = {}
    for name, b in act.layer_tensors(spec, lay):
        out[name] = out.get(name, 0) + b
    return out


def test_h200_layer_per_token():
    """The 1.1B Llama of the H200 grid, batch 4 x 2048 packed into one 8192-token row, SDPA with its mask:
    66 h + 2 T bytes per token and layer under autocast, 56 h + 2 T in 16-bit (plus 8 bytes of rstd)."""
    packed = dict(rows=1, row_len=T, packed=True)
    autocast = sum(_terms(act.Layout("autocast", **packed)).values())
    sixteen = sum(_terms(act.Layout("16-bit", **packed)).values())
    assert autocast == T * (66 * H + 2 * T + 8)
    assert sixteen == T * (56 * H + 2 * T + 8)


def test_casts_per_linear_under_autocast():
    auto = _terms(act.Layout("autocast", 1, T))["linear.input"]
    assert auto == 5 * 2 * H * T  # q, k, v and gate, up each cast the fp32 norm output
    assert _terms(act.Layout("16-bit", 1, T))["linear.input"] == 2 * 2 * H * T  # shared, one per norm


def test_norm_terms():
    terms = _terms(act.Layout("autocast", 1, T))
    assert terms["norm.input_fp32"] == 2 * 4 * H * T and terms["norm.rstd"] == 2 * 4 * T
    assert terms["norm.normalized"] == 2 * 4 * H * T  # fp32 residual: fp32 normalized
    assert _terms(act.Layout("16-bit", 1, T))["norm.normalized"] == 2 * 2 * H * T  # its bf16 cast
    assert "norm.normalized" not in _terms(act.Layout("autocast", 1, T, lora_r=8))  # frozen weight


def test_sdpa_mask_and_repeated_kv():
    """With a mask (packed or padded rows) SDPA saves a 16-bit bias per layer and k/v repeated to all heads;
    without one (flash attention, or one unpadded row) neither."""
    q, kv = LLAMA_1B.q_dim, LLAMA_1B.kv_dim
    packed = _terms(act.Layout("16-bit", 1, T, packed=True))
    assert packed["attention.mask_bias"] == 2 * T * T
    assert packed["attention.k"] == packed["attention.v"] == 2 * q * T
    padded = _terms(act.Layout("16-bit", 4, 2048))  # 4 padded rows: 4 masks of 2048^2
    assert padded["attention.mask_bias"] == 2 * 4 * 2048 * 2048
    for lay in (
        act.Layout("16-bit", 1, T, attention="flash_attention_2", packed=True),
        act.Layout("16-bit", 1, T),
    ):
        terms = _terms(lay)
        assert "attention.mask_bias" not in terms and terms["attention.k"] == 2 * kv * T


def test_eager_scores():
    lay = act.Layout("16-bit", 2, 512, attention="eager")
    assert _terms(lay)["attention.scores"] == 32 * 2 * 512 * 512 * (4 + 2)  # fp32 softmax and its cast


def test_mlp_terms_with_liger_and_lora():
    i = 8192
    assert _terms(act.Layout("16-bit", 1, T))["mlp.product"] == 2 * i * T
    liger = _terms(act.Layout("16-bit", 1, T, liger=True))
    assert "mlp.act" not in liger and liger["mlp.gate"] == 2 * i * T  # Liger's SwiGLU recomputes silu
    assert liger["norm.input"] == 2 * 2 * H * T and "norm.input_fp32" not in liger  # the input as it is
    lora = _terms(act.Layout("autocast", 1, T, lora_r=16))
    assert "mlp.product" not in lora and "linear.input" not in lora  # frozen linears save no input
    widths = 3 * H + LLAMA_1B.q_dim + 2 * H + i  # q, k, v, o, gate, up, down
    assert lora["lora.dropout_mask"] == 1 * widths * T and lora["lora.input"] == 2 * widths * T
    assert lora["lora.a_output"] == 7 * 2 * 16 * T


def test_autocast_weight_copies():
    lay = act.Layout("autocast", 1, T)
    assert act.weight_copies(LLAMA_1B, lay) == 2 * matmul_params(LLAMA_1B) == 2 * 973_078_528
    assert act.weight_copies(LLAMA_1B, act.Layout("16-bit", 1, T)) == 0
    full = act.Layout("autocast", 1, T, loss="full")  # the lm_head is an autocast linear then
    assert act.weight_copies(LLAMA_1B, full) == 2 * (matmul_params(LLAMA_1B) + 32000 * H)
    lora = act.Layout("autocast", 1, T, lora_r=16)
    assert act.weight_copies(LLAMA_1B, lora) == 2 * (matmul_params(LLAMA_1B) + lora_params(LLAMA_1B, 16))


def test_matmul_params_is_the_decoder_without_norms_and_embeddings():
    counts = count_params(LLAMA_1B)
    norms = (2 * 16 + 1) * H
    assert matmul_params(LLAMA_1B) == counts.total - counts.embedding - counts.lm_head - norms


def test_loss_terms():
    V = 32000
    chunked = act.loss_peak(LLAMA_1B, act.Layout("autocast", 1, T), weight_bytes=4)
    assert chunked == {
        "loss.grad_hidden": 4 * H * T,
        "loss.grad_weight": 4 * V * H,  # fp32, as the fp32 weight's .grad
        "loss.tile": 2 * 4096 * 32768,
        "loss.weight_tile": 2 * V * H,
        "loss.token_tile": 2 * 4096 * H,
    }
    sixteen = act.loss_peak(LLAMA_1B, act.Layout("16-bit", 1, T), weight_bytes=2)
    assert sixteen["loss.grad_weight"] == (4 + 2) * V * H and "loss.weight_tile" not in sixteen
    frozen = act.loss_peak(LLAMA_1B, act.Layout("autocast", 1, T, lora_r=8), weight_bytes=4)
    assert frozen["loss.grad_weight"] == 0
    assert act.loss_peak(LLAMA_1B, act.Layout("16-bit", 1, T, loss="full"), 2) == {"loss.logits": 12 * T * V}
    fused = act.loss_peak(LLAMA_1B, act.Layout("16-bit", 1, T, loss="fused"), 2)
    assert fused == {"loss.logits_chunk": 2 * 512 * V}  # next_pow2(8192 / ceil(32000 / 2048)) = 512
    head = act.head_saved(LLAMA_1B, act.Layout("autocast", 1, T))
    assert head["loss.hidden"] == 4 * H * T  # TRL keeps hidden[mask], fp32 under autocast
    assert act.head_saved(LLAMA_1B, act.Layout("16-bit", 1, T, loss="full"))["loss.hidden"] == 2 * H * T
    liger = act.head_saved(LLAMA_1B, act.Layout("16-bit", 1, T, loss="fused"))
    assert liger["loss.grad_input"] == 2 * T * H and liger["loss.grad_weight"] == 2 * V * H  # in the forward


def test_checkpointing_keeps_layer_inputs_and_one_layer():
    lay = act.Layout("autocast", 1, T, packed=True)
    one = sum(_terms(lay).values())
    full = act.estimate_activations(LLAMA_1B, lay, "full")
    assert full.terms["checkpoint.layer_input"] == 16 * 4 * H * T  # the fp32 residual under autocast
    assert full.terms["checkpoint.mask"] == T * T  # the packed rows' bool mask, an input of every layer
    head = sum(act.head_saved(LLAMA_1B, lay).values())
    assert full.saved == 16 * 4 * H * T + T * T + one + head
    assert full.weight_copies == 2 * matmul_params(LLAMA_1B) // 16  # one layer's, recomputed
    assert full.forward_copies == 2 * matmul_params(LLAMA_1B)  # all, until the forward ends
    none = act.estimate_activations(LLAMA_1B, lay)
    assert none.saved == 16 * one + head and none.last_layer == one + full.weight_copies


def test_precision_modes():
    assert act.precision_mode("ddp", "bf16") == "autocast"
    assert act.precision_mode("zero3", "bf16") == act.precision_mode("fsdp2", "bf16") == "16-bit"
    assert act.precision_mode("ddp", "no") == "fp32"
    assert act.precision_mode("ddp", "bf16", "bfloat16") == "16-bit"
