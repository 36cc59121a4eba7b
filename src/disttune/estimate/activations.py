"""What autograd keeps for one training step of a Hugging Face decoder, tensor by tensor, and the loss's peak.

Counted from what each operation saves for its backward in transformers 5 (``modeling_llama.py`` and the
families that share its layout), torch 2.x autograd (an operation saves an input only when the other
input's gradient needs it) and TRL 1.16. Three precision layouts decide the bytes (``precision_mode``):

    autocast  DDP with bf16/fp16: fp32 weights, torch autocast. The residual stream is fp32 (r = 4): the
              embedding output is fp32 and every residual add promotes. Each linear casts its input to
              16-bit itself (autocast caches only weights), so q, k and v save three copies of their input.
    16-bit    DeepSpeed (the engine casts the module) and FSDP2 (MixedPrecisionPolicy gathers bf16 weights):
              a bf16 residual stream (r = 2); the linears share their 16-bit input.
    fp32      ``--mixed_precision no``: everything 4 bytes, no casts.

c = 2 (4 under ``no``) is the compute dtype. Per layer and token (h hidden, q = heads x head_dim, kv the
key/value width, i the MLP width), full fine-tuning, Llama layout, no liger:

    each RMSNorm   4h    the fp32 upcast of its input (``pow`` and the ``rsqrt`` product save it)
                 + r h   the normalized tensor the weight multiplies (saved for the weight's gradient)
    linear inputs        autocast: c h per consuming linear (3 for q/k/v, 2 for gate/up); else c h per norm
    attention    c q (q) + c kv x 2 (k, v) + c q (output, shared with o_proj's input); with a mask (SDPA
                 and packed or padded rows) transformers repeats k and v to all heads (c q each) and
                 SDPA's memory-efficient kernel saves the mask as a 16-bit bias: c x row_len per token
    SwiGLU       4 c i: gate, up, silu(gate), their product (down_proj's input)

LoRA (PEFT, every linear, dropout): frozen weights save no inputs and frozen norms no normalized tensor;
each adapter saves its dropout mask (1 byte) and the dropped input cast to c (c) per input feature, and its
r-wide A output. Liger's kernels (``--use_liger_kernel``: RMSNorm, SwiGLU, RoPE) save each norm's input
as it is (r h) and SwiGLU's gate and up only. ``tests/unit/test_estimate_activations.py`` pins each term.
"""

from __future__ import annotations

from dataclasses import dataclass

from disttune.estimate.models import ModelSpec, lora_params, matmul_params

MODES = ("autocast", "16-bit", "fp32")
ATTENTION = ("sdpa", "flash_attention_2", "eager")
LOSSES = ("chunked", "full", "fused")
# trl/kernels/chunked_logprob.py: TOKEN_CHUNK_SIZE tokens x _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary per tile
TRL_TILE_TOKENS, TRL_TILE_VOCAB = 4096, 32768
LORA_DROPOUT = 0.05  # TRL ModelConfig's default; > 0 makes PEFT save a dropout mask per adapted linear
DROPOUT_MASK_BYTES = 1  # CUDA's fused dropout keeps a bool mask (the CPU's unfused one a float noise tensor)


def precision_mode(strategy: str, mixed_precision: str, model_dtype: str = "float32") -> str:
    """``autocast`` (DDP on fp32 weights), ``16-bit`` (DeepSpeed, FSDP2, or weights loaded in 16-bit) or
    ``fp32`` (``--mixed_precision no`` on fp32 weights)."""
    if model_dtype != "float32":
        return "16-bit"
    if mixed_precision == "no":
        return "fp32"
    return "autocast" if strategy == "ddp" else "16-bit"


@dataclass(frozen=True)
class Layout:
    """How one micro batch is laid out and computed; ``rows x row_len`` tokens reach the attention."""

    mode: str
    rows: int  # attention rows: the batch, or 1 when packing flattens it (TRL's padding-free collator)
    row_len: int
    attention: str = "sdpa"
    lora_r: int | None = None
    liger: bool = False
    loss: str = "chunked"
    packed: bool = False  # several sequences per row (packing): SDPA then needs a mask

    @property
    def tokens(self) -> int:
        return self.rows * self.row_len

    @property
    def c(self) -> int:  # compute bytes
        return 4 if self.mode == "fp32" else 2

    @property
    def r(self) -> int:  # residual stream bytes
        return 2 if self.mode == "16-bit" else 4

    @property
    def masked(self) -> bool:
        """SDPA gets a mask (and transformers repeats k/v) when a row holds several sequences or padding."""
        return self.attention == "eager" or (self.attention == "sdpa" and (self.rows > 1 or self.packed))


def _norm(lay: Layout, h: int, fp32_scale: bool = False) -> list[tuple[str, int]]:
    """An RMSNorm; ``fp32_scale``: Gemma's, which multiplies by (1 + weight) in fp32 before casting back."""
    T = lay.tokens
    if lay.liger:  # LigerRMSNorm saves its input as it is and the fp32 per-token rstd
        return [("norm.input", lay.r * h * T), ("norm.rstd", 4 * T)]
    out = [("norm.input_fp32", 4 * h * T), ("norm.rstd", 4 * T)]
    if lay.lora_r is None:  # a frozen norm weight needs no normalized tensor
        out.append(("norm.normalized", (4 if fp32_scale else lay.r) * h * T))
    return out


def _linear_inputs(lay: Layout, h: int, consumers: int) -> list[tuple[str, int]]:
    if lay.lora_r is not None:  # frozen weights: the base linear saves no input (the adapters do)
        return []
    copies = consumers if lay.mode == "autocast" else 1
    return [("linear.input", lay.c * h * lay.tokens)] * copies


def _adapters(lay: Layout, widths: list[int]) -> list[tuple[str, int]]:
    if lay.lora_r is None:
        return []
    T, mask = lay.tokens, DROPOUT_MASK_BYTES if LORA_DROPOUT > 0 else 0
    out = []
    for width in widths:
        out += [("lora.dropout_mask", mask * width * T), ("lora.input", lay.c * width * T)]
        out.append(("lora.a_output", lay.c * lay.lora_r * T))
    return [t for t in out if t[1]]


def _attention(lay: Layout, spec: ModelSpec) -> list[tuple[str, int]]:
    c, T, q, kv = lay.c, lay.tokens, spec.q_dim, spec.kv_dim
    kv_saved = q if lay.masked else kv  # repeat_kv when a mask rules out SDPA's native GQA
    out = [("attention.q", c * q * T), ("attention.k", c * kv_saved * T), ("attention.v", c * kv_saved * T)]
    if lay.attention != "eager" or lay.lora_r is None:  # the kernel's output (eager: o_proj's input copy)
        out.append(("attention.output", c * q * T))
    square = lay.rows * lay.row_len * lay.row_len
    if lay.attention == "sdpa" and lay.masked:
        out.append(("attention.mask_bias", c * square))  # the bool mask as a 16-bit bias, every layer
    if lay.attention == "eager":
        cast = c if c < 4 else 0  # the fp32 softmax and its cast to the compute dtype (none in fp32)
        out.append(("attention.scores", spec.num_attention_heads * square * (4 + cast)))
    if spec.qk_norm:  # RMSNorm per head on q and k: fp32 input, normalized (when it trains), rstd per head
        heads = spec.num_attention_heads + spec.num_key_value_heads
        normalized = (4 if spec.model_type.startswith("gemma") else c) if lay.lora_r is None else 0
        out.append(("attention.qk_norm", (4 + normalized) * (q + kv) * T + 4 * heads * T))
    return out


def _mlp(lay: Layout, spec: ModelSpec) -> list[tuple[str, int]]:
    c, T, i = lay.c, lay.tokens, int(spec.mlp_width_per_token)
    if not spec.mlp_gated:  # GPT-2: fc output (the activation's input) and the activation (proj's input)
        names = ["mlp.fc"] + ([] if lay.lora_r is not None else ["mlp.act"])
    else:
        names = ["mlp.gate", "mlp.up"]
        names += [] if lay.liger else ["mlp.act"]  # Liger's SwiGLU recomputes silu(gate)
        names += [] if lay.lora_r is not None else ["mlp.product"]  # frozen down_proj: its adapter saves it
    return [(name, c * i * T) for name in names]


def layer_tensors(spec: ModelSpec, lay: Layout) -> list[tuple[str, int]]:
    """Every tensor one decoder layer saves for its backward: ``(term, bytes)`` for the whole micro batch."""
    h, q = spec.hidden_size, spec.q_dim
    i = int(spec.mlp_width_per_token)
    qkv = 1 if spec.fused_qkv else 3
    up = 1 if spec.fused_gate_up or not spec.mlp_gated else 2
    mlp_in = spec.shared_expert_intermediate_size if spec.num_moe_layers else i  # experts: no nn.Linear
    widths = [h] * qkv + [q] + ([h] * up + [mlp_in] if mlp_in else [])
    gemma = spec.model_type.startswith("gemma")
    out = _norm(lay, h, gemma) + _linear_inputs(lay, h, qkv) + _attention(lay, spec)
    out += _norm(lay, h, gemma) + _linear_inputs(lay, h, up) + _mlp(lay, spec) + _adapters(lay, widths)
    for _ in range(spec.norms_per_layer - 2):  # Gemma 2/3's post-norms
        out += _norm(lay, h, gemma)
    return out


def weight_copies(spec: ModelSpec, lay: Layout) -> int:
    """``autocast_weight_copies``: c x the decoder's matmul weights, cast to 16-bit in the forward and saved
    by each matmul until its backward (autocast caches trainable weights; a frozen one is cast per call and
    saved the same way). The full loss's lm_head is an autocast linear too. Only under ``autocast``."""
    if lay.mode != "autocast":
        return 0
    lm_head = spec.vocab_size * spec.hidden_size if lay.loss == "full" else 0
    adapters = lora_params(spec, lay.lora_r) if lay.lora_r is not None else 0
    return lay.c * (matmul_params(spec) + adapters + lm_head)


def head_saved(spec: ModelSpec, lay: Layout) -> dict[str, int]:
    """What the final norm and the loss keep until backward."""
    h, V, T, c = spec.hidden_size, spec.vocab_size, lay.tokens, lay.c
    out = dict(_norm(lay, h))
    if lay.loss == "chunked":  # TRL's fused LM head keeps hidden[mask], a copy in the final norm's dtype
        out["loss.hidden"] = lay.r * h * T
    elif lay.loss == "full":  # the lm_head's input (the logits' 12 bytes are in loss_peak)
        out["loss.hidden"] = c * h * T
    else:  # liger's fused linear cross-entropy computes its gradients in the forward: grad_input, grad_weight
        out["loss.grad_input"] = c * T * h
        out["loss.grad_weight"] = c * V * h if lay.lora_r is None else 0
    return out


def loss_peak(spec: ModelSpec, lay: Layout, weight_bytes: int) -> dict[str, int]:
    """The loss's transient bytes at the start of backward (``weight_bytes``: the lm_head's dtype).

    chunked (TRL 1.16 SFTTrainer, always: ``add_fused_lm_head``): trl/kernels/chunked_logprob.py's backward
    holds grad_hidden (fp32, N x h), grad_weight (fp32, V x h, and its cast to a 16-bit weight's dtype),
    the tile buffer (c x 4096 x 32768) and, under autocast, the 16-bit copies of the weight and of a token
    tile. full (transformers' ForCausalLMLoss): 12 T V inside log_softmax's backward (saved fp32
    log-probabilities, nll_loss's dense fp32 gradient, log_softmax's input gradient). fused (Liger's fused
    linear cross-entropy): logits of C = next_pow2(T / ceil(V / h)) tokens at a time.
    """
    h, V, T, c = spec.hidden_size, spec.vocab_size, lay.tokens, lay.c
    if lay.loss == "full":
        return {"loss.logits": 12 * T * V}
    if lay.loss == "fused":
        chunk = 1 << max(0, (max(1, -(-T // max(1, -(-V // h)))) - 1).bit_length())
        return {"loss.logits_chunk": c * min(chunk, T) * V}
    trains = lay.lora_r is None
    out = {
        "loss.grad_hidden": 4 * h * T,
        "loss.grad_weight": (4 + (weight_bytes if weight_bytes < 4 else 0)) * V * h if trains else 0,
        "loss.tile": c * min(T, TRL_TILE_TOKENS) * TRL_TILE_VOCAB if V else 0,
    }
    if lay.mode == "autocast":  # fp32 weight and hidden cast tile by tile
        out["loss.weight_tile"] = c * min(V, TRL_TILE_VOCAB) * h
        out["loss.token_tile"] = c * min(T, TRL_TILE_TOKENS) * h
    return out


@dataclass(frozen=True)
class Activations:
    """One micro batch's activations in the phases that matter for the peak (bytes per rank)."""

    saved: int  # decoder + head tensors alive at the start of backward
    forward_saved: int  # ... at the end of the forward (checkpointing: no layer recomputed yet)
    peak: int  # the loss's transient at the start of backward
    weight_copies: int  # autocast's 16-bit weight copies alive at the start of backward
    forward_copies: int  # ... at the end of the forward (all of them, also under checkpointing)
    last_layer: int  # what the end of backward still holds: one layer's tensors and weight copies
    blocks: tuple[tuple[int, int], ...]  # (bytes, count) of the saved tensors, for the allocator model
    terms: dict  # bytes per term over the whole micro batch


def estimate_activations(
    spec: ModelSpec, lay: Layout, checkpointing: str = "none", weight_bytes: int = 4
) -> Activations:
    """Sum ``layer_tensors`` over the layers (or what checkpointing keeps), the head and the loss.

    Full checkpointing (``checkpointing="full"``, transformers' non-reentrant checkpoint per decoder layer)
    keeps each layer's input (r h per token) and the packed-sequence mask (one byte per pair, an input of
    every layer) and recomputes one layer at a time; ``"selective"`` (torchtitan's op policy) keeps c (2h +
    2q + kv + i) per token: the input, q, v, the attention output, gate and down.
    """
    L, T = spec.num_hidden_layers, lay.tokens
    layer = layer_tensors(spec, lay)
    one = sum(b for _, b in layer)
    copies = weight_copies(spec, lay)
    lm_head_copy = lay.c * spec.vocab_size * spec.hidden_size if copies and lay.loss == "full" else 0
    layer_copies = (copies - lm_head_copy) // L
    head = head_saved(spec, lay)
    terms: dict[str, int] = {}
    if checkpointing == "none":
        kept = [(name, b * L) for name, b in layer]
        blocks = [(b, L) for _, b in layer]
        copies_at_backward = copies
    else:
        if checkpointing == "full":
            per = lay.r * spec.hidden_size * T
            mask = lay.rows * lay.row_len**2 if lay.masked and lay.attention == "sdpa" else 0
            kept = [("checkpoint.layer_input", per * L), ("checkpoint.mask", mask)] + layer
        else:
            h, q, kv, i = spec.hidden_size, spec.q_dim, spec.kv_dim, int(spec.mlp_width_per_token)
            per = lay.c * T * (2 * h + 2 * q + kv + i)
            kept = [("checkpoint.selective", per * L)] + layer
        blocks = [(per, L), *((b, 1) for _, b in layer)]
        copies_at_backward = layer_copies + lm_head_copy
    for name, b in [*kept, *head.items()]:
        terms[name] = terms.get(name, 0) + b
    peak = loss_peak(spec, lay, weight_bytes)
    terms.update(peak)
    if copies:
        terms["autocast_weight_copies"] = copies_at_backward
    saved = sum(b for _, b in kept) + sum(head.values())
    blocks += [(b, 1) for b in head.values()]
    return Activations(
        saved=saved,
        forward_saved=saved - (one if checkpointing != "none" else 0),
        peak=sum(peak.values()),
        weight_copies=copies_at_backward,
        forward_copies=copies,
        last_layer=one + layer_copies,
        blocks=tuple((b, n) for b, n in blocks if b and n),
        terms={k: v for k, v in terms.items() if v},
    )
