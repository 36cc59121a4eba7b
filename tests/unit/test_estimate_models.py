"""Parameter counting: published totals, transformers on tiny configs, peft for LoRA, config.json reading."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from disttune.errors import UserError
from disttune.estimate.models import count_params, lora_params, spec_from_config
from disttune.estimate.presets import GEMMA3_VISION, PRESETS, normalise, resolve_model

PUBLISHED = {  # safetensors totals on the Hugging Face Hub
    "meta-llama/Llama-3.2-1B": 1_235_814_400,
    "meta-llama/Llama-3.2-3B": 3_212_749_824,
    "meta-llama/Llama-3.1-8B": 8_030_261_248,
    "meta-llama/Llama-3.1-70B": 70_553_706_496,
    "mistralai/Mistral-7B-v0.3": 7_248_023_552,
    "Qwen/Qwen2.5-0.5B": 494_032_768,
    "Qwen/Qwen2.5-7B": 7_615_616_512,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Llama-3.3-70B-Instruct": 70_553_706_496,
    "mistralai/Mixtral-8x7B-v0.1": 46_702_792_704,
    "google/gemma-2-2b": 2_614_341_888,
    "google/gemma-2-9b": 9_241_705_984,
    "google/gemma-2-27b": 27_227_128_320,
    "google/gemma-3-1b-pt": 999_885_952,
    "google/gemma-3-4b-pt": 4_300_079_472,  # with the SigLIP vision tower and projector
    "google/gemma-3-12b-pt": 12_187_325_040,
    "google/gemma-3-27b-pt": 27_432_406_640,
    "microsoft/Phi-3-mini-4k-instruct": 3_821_079_552,
    "microsoft/Phi-3-medium-4k-instruct": 13_960_238_080,
    "microsoft/phi-4": 14_659_507_200,
    "Qwen/Qwen3-4B": 4_022_468_096,
    "Qwen/Qwen3-14B": 14_768_307_200,
    "Qwen/Qwen3-32B": 32_762_123_264,
    "Qwen/Qwen3-30B-A3B": 30_532_122_624,
    "Qwen/Qwen3-235B-A22B": 235_093_634_560,
}
# the safetensors of these tied models also store lm_head (2.03B for Qwen3-1.7B); parameters() counts it once
MODEL_CARD_BILLIONS_TIED = {"Qwen/Qwen3-1.7B": 1.7}
MODEL_CARD_BILLIONS = {
    "Qwen/Qwen2.5-1.5B": 1.54,
    "Qwen/Qwen2.5-3B": 3.09,
    "Qwen/Qwen2.5-14B": 14.7,
    "Qwen/Qwen2.5-72B": 72.7,
    "Qwen/Qwen3-0.6B": 0.6,
    "Qwen/Qwen3-8B": 8.2,
}


@pytest.mark.parametrize("name,total", PUBLISHED.items())
def test_published_totals_exact(name, total):
    assert count_params(PRESETS[name]).total == total


@pytest.mark.parametrize("name,billions", {**MODEL_CARD_BILLIONS, **MODEL_CARD_BILLIONS_TIED}.items())
def test_model_card_totals(name, billions):
    assert count_params(PRESETS[name]).total / 1e9 == pytest.approx(
        billions, abs=0.1
    )  # cards round or truncate


TINY = dict(
    vocab_size=101,
    hidden_size=48,
    intermediate_size=80,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
)
TINY_CONFIGS = [
    ("llama", dict(tie_word_embeddings=True)),
    ("llama", dict(tie_word_embeddings=False)),
    ("llama", dict(attention_bias=True, mlp_bias=True, head_dim=16)),
    ("qwen2", dict(tie_word_embeddings=False)),
    ("qwen2", dict(tie_word_embeddings=True)),
    ("mistral", dict(head_dim=12)),
    ("qwen3", dict(head_dim=16, tie_word_embeddings=True)),
    ("gemma", dict(head_dim=16)),
    ("gemma2", dict(head_dim=16)),
    ("gemma3_text", dict(head_dim=16)),
    ("phi3", dict(pad_token_id=None)),
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    (
        "qwen2_moe",
        dict(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40
        ),
    ),
    (
        "qwen3_moe",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            head_dim=16,
            decoder_sparse_step=2,
            mlp_only_layers=[0],
        ),
    ),
]


@pytest.mark.parametrize("model_type,extra", TINY_CONFIGS)
def test_config_count_matches_transformers(tmp_path, model_type, extra):
    transformers = pytest.importorskip("transformers")
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())  # a tied weight is yielded once
    (tmp_path / "config.json").write_text(config.to_json_string())
    spec = resolve_model(str(tmp_path))  # the folder form
    counts = count_params(spec)
    assert counts.total == expected
    assert counts.largest_tensor == max(p.numel() for p in model.parameters())
    assert counts.small_tensors == sum(p.numel() for p in model.parameters() if p.numel() <= 100_000)
    if spec.num_experts:  # one token runs k of E experts: the idle experts' weights are not active
        expert = 3 * spec.moe_intermediate_size * spec.hidden_size
        idle = spec.num_moe_layers * (spec.num_experts - spec.num_experts_per_tok) * expert
        assert counts.active == expected - idle < expected
    else:
        assert counts.active == expected


def test_gemma3_image_text_config_matches_transformers(tmp_path):
    """A Gemma 3 4B-27B config.json (model_type gemma3): AutoModelForCausalLM builds the vision tower too.

    Written as the Hub's files are, with only what differs from transformers' defaults."""
    transformers = pytest.importorskip("transformers")
    text = dict(TINY, head_dim=16, model_type="gemma3_text")
    vision = dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4)
    vision.update(image_size=56, patch_size=14)
    for use_head in (False, True):
        config = {"model_type": "gemma3", "text_config": text, "vision_config": {**vision}}
        config["vision_config"]["vision_use_head"] = use_head
        model = transformers.AutoModelForCausalLM.from_config(transformers.Gemma3Config(**config))
        (tmp_path / "config.json").write_text(json.dumps(config))
        counts = count_params(resolve_model(str(tmp_path)))
        assert counts.total == sum(p.numel() for p in model.parameters())
        assert counts.small_tensors == sum(p.numel() for p in model.parameters() if p.numel() <= 100_000)


def test_gpt2_count_matches_transformers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=101, n_embd=48, n_layer=2, n_head=6, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    (tmp_path / "config.json").write_text(config.to_json_string())
    counts = count_params(resolve_model(str(tmp_path / "config.json")))
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert counts.largest_tensor == max(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_matches_transformers(name):
    """Each preset's shapes, built by transformers on the meta device (no memory, no download)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    spec = PRESETS[name]
    fields = dict(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=None,
    )
    if spec.num_experts:
        key = "num_local_experts" if spec.model_type == "mixtral" else "num_experts"
        fields.update(
            {
                key: spec.num_experts,
                "num_experts_per_tok": spec.num_experts_per_tok,
                "moe_intermediate_size": spec.moe_intermediate_size,
            }
        )
    config = transformers.AutoConfig.for_model(spec.model_type, **fields)
    if spec.extra_tensors:  # Gemma 3 4B-27B: the image-text model AutoModelForCausalLM loads
        config = transformers.Gemma3Config(text_config=config.to_dict(), vision_config=GEMMA3_VISION)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    assert count_params(spec).total == sum(p.numel() for p in model.parameters())


def test_preset_names_are_distinct():
    assert len({normalise(name) for name in PRESETS}) == len(PRESETS)


@pytest.mark.parametrize(
    "model_type,extra,targets",
    [
        ("qwen2", {}, None),
        ("phi3", dict(pad_token_id=None), ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
        (
            "qwen2_moe",
            dict(
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=24,
                shared_expert_intermediate_size=40,
            ),
            None,
        ),
    ],
)
def test_lora_count_matches_peft(model_type, extra, targets):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config)
    targets = targets or ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=targets))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora_params(spec_from_config(config.to_dict()), 4) == trainable


def test_presets_by_short_name_and_instruct_suffix():
    assert resolve_model("qwen2.5-7b") is PRESETS["Qwen/Qwen2.5-7B"]
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct") is PRESETS["Qwen/Qwen2.5-7B"]


def test_unknown_name_lists_presets():
    with pytest.raises(UserError, match="Known models: .*Llama-3.1-8B"):
        resolve_model("gpt-5")


def test_missing_file_and_bad_configs(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        resolve_model(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(UserError, match="has no config.json"):
        resolve_model(str(tmp_path))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="cannot read it as JSON"):
        resolve_model(str(bad))
    bad.write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UserError, match="not supported"):
        resolve_model(str(bad))
    bad.write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(UserError, match="missing key"):
        resolve_model(str(bad))


def test_cli_modules_import_no_heavy_libraries():
    # only our two command modules (the dispatcher imports every command, which is not ours to police)
    code = (
        "import argparse, sys, disttune.plan, disttune.estimate, disttune.cli.plan, disttune.cli.estimate\n"
        "parser = argparse.ArgumentParser(); sub = parser.add_subparsers()\n"
        "disttune.cli.plan.register(sub); disttune.cli.estimate.register(sub)\n"
        "for argv in (['estimate', '--model', 'meta-llama/Llama-3.1-8B', '--json'],\n"
        "             ['plan', '--per_device_train_batch_size', '4', '--gradient_accumulation_steps', '4']):\n"
        "    args = parser.parse_args(argv); assert args.run(args) == 0\n"
        "heavy = [m for m in ('torch', 'deepspeed', 'transformers') if m in sys.modules]\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stderr


def test_sparse_layers_follow_transformers_rule_and_are_counted_not_looped():
    """decoder_sparse_step and mlp_only_layers pick the sparse layers as transformers does; an absurd
    layer count (a fuzzed config once gave 1e17) is counted at once, not walked layer by layer."""
    transformers = pytest.importorskip("transformers")
    extra = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, head_dim=16)
    shape = {**TINY, **extra, "num_hidden_layers": 7, "decoder_sparse_step": 2, "mlp_only_layers": [1, 4, 5]}
    config = transformers.AutoConfig.for_model("qwen3_moe", **shape)
    model = transformers.AutoModelForCausalLM.from_config(config)
    sparse = sum(1 for layer in model.model.layers if hasattr(layer.mlp, "experts"))
    assert sparse == 1  # layers 1, 3 and 5 of 0-6 by the step, less 1 and 5 listed dense
    assert spec_from_config({"model_type": "qwen3_moe", **shape}).num_moe_layers == sparse
    huge = {"model_type": "qwen3_moe", **shape, "num_hidden_layers": 1e17}
    assert spec_from_config(huge).num_moe_layers == 10**17 // 2 - 2


def test_any_config_values_give_a_spec_or_a_user_error():
    """Whatever a config.json holds in its shape fields: a spec whose counts work, or a UserError (no traceback)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    value = (
        st.none()
        | st.booleans()
        | st.integers(-3, 300)
        | st.floats(allow_nan=True)
        | st.text(max_size=3)
        | st.lists(st.integers(-1, 3), max_size=3)
    )
    keys = [
        "vocab_size",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "num_experts",
        "num_local_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "shared_expert_intermediate_size",
        "decoder_sparse_step",
        "mlp_only_layers",
        "n_embd",
        "n_layer",
        "n_head",
        "n_inner",
        "n_positions",
    ]

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(
        model_type=st.sampled_from(["llama", "gemma2", "phi3", "gpt2", "mixtral", "qwen2_moe", "qwen3_moe"]),
        values=st.fixed_dictionaries({}, optional={k: value for k in keys}),
    )
    def check(model_type, values):
        try:
            spec = spec_from_config({"model_type": model_type, **valid, **values})
        except UserError:
            outcomes.append("refused")
            return
        counts = count_params(spec)
        assert counts.total >= counts.active > 0
        outcomes.append("counted")

    valid = {
        **TINY,
        "n_embd": 48,
        "n_layer": 2,
        "n_head": 6,
        "n_positions": 64,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 24,
        "shared_expert_intermediate_size": 40,
    }
    outcomes: list[str] = []
    check()
    assert {"refused", "counted"} <= set(outcomes)  # both paths ran
