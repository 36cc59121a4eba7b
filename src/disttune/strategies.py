"""The strategies, one row each: the one home of what every command says about them.

``config new`` writes a row's YAML from it, ``bench`` launches a row's shipped file, ``estimate`` names its
rows after it and ``recommend`` ranks them by ``speed_rank``, the training script's run-folder checks (train/prepare.py) name a run's
checkpoint layout with it and ``train.distributed.describe`` tells which row a running job is.
``tests/unit/test_strategies_table.py`` proves that the shipped YAMLs and what ``config new`` writes agree
with it (distributed_type, ZeRO stage, offload devices, fsdp_version and the header comment).

Adding a strategy: one row here, its YAML in ``accelerate_configs/`` (or ``config_file=None`` for a row only
``disttune estimate`` knows), and its memory formula in ``estimate/memory.py`` (a test fails until it has one).

Imports neither torch nor deepspeed (``config``, ``plan`` and ``estimate`` read it; a test proves it).
"""

from __future__ import annotations

from dataclasses import dataclass

from disttune.errors import UserError


@dataclass(frozen=True)
class Strategy:
    """One distributed training strategy as accelerate runs it."""

    name: str  # what users type: config new --strategy, bench/estimate --strategies, estimate's JSON "name"
    what: str  # one line: what is sharded or offloaded (the shipped YAML's first comment line)
    pick_when: str  # one line: when to pick it (the shipped YAML's second comment line)
    config_file: str | None  # the shipped accelerate config in accelerate_configs/; None: estimate only
    distributed_type: str  # accelerate's distributed_type in the YAML: MULTI_GPU, DEEPSPEED or FSDP
    speed_rank: int  # 1 = fastest; ``recommend`` picks the lowest rank that fits
    zero_stage: int | None = None  # DeepSpeed ZeRO stage (deepspeed_config.zero_stage)
    fsdp_version: int | None = None  # fsdp_config.fsdp_version
    offload_optimizer: bool = False  # optimizer states (and the fp32 master) in host RAM
    offload_params: bool = False  # parameter partitions in host RAM

    @property
    def offloads(self) -> bool:
        """Anything kept in host RAM (so the node's RAM must hold it)."""
        return self.offload_optimizer or self.offload_params

    @property
    def checkpoint_layout(self) -> str:
        """How its checkpoints lay out the optimizer state: ``ddp``, ``deepspeed-zero<stage>`` or ``fsdp``.

        Written into every checkpoint's marker and compared on resume, so these strings never change.
        Offload does not change the layout: a ZeRO-3 checkpoint resumes with or without it.
        """
        return checkpoint_layout(self.distributed_type, self.zero_stage)


# Display order: the order ``disttune estimate`` prints and ``config new --help`` lists. speed_rank: less
# communication and no PCIe traffic win (FSDP2 and ZeRO-3 are about even); parameter offload moves every
# layer's weights over PCIe at each forward and backward, so it comes last.
STRATEGIES: tuple[Strategy, ...] = (
    Strategy(
        "ddp",
        "DDP (data parallel): every GPU holds a full copy of the model, optimizer and gradients.",
        "Pick it when the model fits on one GPU with room to spare (fastest, simplest).",
        "multi_gpu_ddp.yaml",
        "MULTI_GPU",
        speed_rank=1,
    ),
    Strategy(
        "zero1",
        "DeepSpeed ZeRO-1: optimizer states are sharded across GPUs; parameters and gradients are replicated.",
        "Pick it when DDP almost fits: saves most of the optimizer memory at nearly DDP speed.",
        "deepspeed_zero1.yaml",
        "DEEPSPEED",
        speed_rank=2,
        zero_stage=1,
    ),
    Strategy(
        "zero2",
        "DeepSpeed ZeRO-2: optimizer states and gradients are sharded across GPUs; parameters are replicated.",
        "Pick it for 1B-7B models that do not fit under DDP; slightly slower than DDP, much less memory.",
        "deepspeed_zero2.yaml",
        "DEEPSPEED",
        speed_rank=3,
        zero_stage=2,
    ),
    Strategy(
        "zero3",
        "DeepSpeed ZeRO-3: parameters, gradients and optimizer states are all sharded across GPUs.",
        "Pick it for models above ~7B, or whenever ZeRO-2 does not fit; more communication than ZeRO-2.",
        "deepspeed_zero3.yaml",
        "DEEPSPEED",
        speed_rank=5,
        zero_stage=3,
    ),
    Strategy(
        "zero2_offload",
        "DeepSpeed ZeRO-2 + optimizer offload: ZeRO-2, with the optimizer states and the step in CPU RAM.",
        "Pick it when ZeRO-2 almost fits and the node has CPU RAM to spare; the step runs on the CPU.",
        None,
        "DEEPSPEED",
        speed_rank=6,
        zero_stage=2,
        offload_optimizer=True,
    ),
    Strategy(
        "zero3_offload_optimizer",
        "DeepSpeed ZeRO-3 + optimizer offload: everything sharded, optimizer states in CPU RAM.",
        "Pick it when ZeRO-3 does not fit but the parameters do; slower (the step runs on the CPU).",
        None,
        "DEEPSPEED",
        speed_rank=7,
        zero_stage=3,
        offload_optimizer=True,
    ),
    Strategy(
        "zero3_offload_params",
        "DeepSpeed ZeRO-3 + parameter offload: everything sharded, parameter partitions in CPU RAM.",
        "Pick it when the optimizer fits on the GPU but the parameters do not; every layer crosses PCIe.",
        None,
        "DEEPSPEED",
        speed_rank=8,
        zero_stage=3,
        offload_params=True,
    ),
    Strategy(
        "zero3_offload",
        "DeepSpeed ZeRO-3 + CPU offload: everything sharded, optimizer states AND parameters kept in CPU RAM.",
        "Pick it when even ZeRO-3 runs out of GPU memory; much slower (PCIe traffic), needs lots of CPU RAM.",
        "deepspeed_zero3_offload.yaml",
        "DEEPSPEED",
        speed_rank=9,
        zero_stage=3,
        offload_optimizer=True,
        offload_params=True,
    ),
    Strategy(
        "fsdp2",
        "PyTorch FSDP2 (fully_shard): parameters, gradients and optimizer states sharded, like ZeRO-3, in PyTorch.",
        "Pick it for large models when you prefer native PyTorch to DeepSpeed (needs accelerate >= 1.7).",
        "fsdp2.yaml",
        "FSDP",
        speed_rank=4,
        fsdp_version=2,
    ),
)

# Old names that still work wherever a strategy is typed (``estimate --strategies``): old -> current.
ALIASES = {"zero3_offload_all": "zero3_offload"}  # estimate's name for it before the table

# The one shipped config that is no strategy: one process, nothing distributed (the baseline).
BASELINE_CONFIG = "single_gpu.yaml"

# accelerate's distributed types that are data parallel (DDP): MULTI_GPU in the YAML, MULTI_CPU without GPUs.
DATA_PARALLEL_TYPES = ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU")

NAMES: tuple[str, ...] = tuple(s.name for s in STRATEGIES)
BY_NAME: dict[str, Strategy] = {s.name: s for s in STRATEGIES}
SHIPPED: tuple[Strategy, ...] = tuple(s for s in STRATEGIES if s.config_file)


def resolve(
    names: list[str] | tuple[str, ...], among: tuple[str, ...] = NAMES, flag: str = "--strategies"
) -> list[str]:
    """The current names of ``names`` (old ``ALIASES`` accepted); one ``UserError`` naming every unknown one."""
    current = [ALIASES.get(n, n) for n in names]
    unknown = [n for n, c in zip(names, current, strict=True) if c not in among]
    if unknown:
        raise UserError(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(among)}.")
    return current


def speed_rank(name: str) -> int:
    """``name``'s rank, fastest first; raises ``ValueError`` for a name the table does not hold.

    ``recommend`` sorts by it, so a strategy without a rank stops it instead of silently dropping out.
    """
    row = BY_NAME.get(ALIASES.get(name, name))
    if row is None:
        raise ValueError(
            f"strategy {name!r} has no row (and so no speed rank) in disttune/strategies.py; "
            f"known: {', '.join(NAMES)}"
        )
    return row.speed_rank


def checkpoint_layout(distributed_type: str, zero_stage: int | str | None) -> str:
    """``ddp``, ``deepspeed-zero<stage>`` or ``fsdp``: the checkpoint marker's name of a running layout."""
    if distributed_type == "DEEPSPEED":
        return f"deepspeed-zero{'?' if zero_stage is None else zero_stage}"
    if distributed_type == "FSDP":
        return "fsdp"
    return "ddp"


def identify(
    distributed_type: str,
    zero_stage: int | None = None,
    fsdp_version: int | None = None,
    offload_optimizer: bool = False,
    offload_params: bool = False,
) -> str | None:
    """The row a running job matches (``distributed_type`` as accelerate reports it), or None.

    None for a single process (``NO``) and for any combination the table does not hold.
    """
    kind = "MULTI_GPU" if distributed_type in DATA_PARALLEL_TYPES else distributed_type
    for row in STRATEGIES:
        if (
            row.distributed_type,
            row.zero_stage,
            row.fsdp_version,
            row.offload_optimizer,
            row.offload_params,
        ) == (kind, zero_stage, fsdp_version, offload_optimizer, offload_params):
            return row.name
    return None


def start_from(name: str) -> str | None:
    """For a row without a shipped file: which shipped file to copy and what to change in it (None otherwise)."""
    row = BY_NAME[ALIASES.get(name, name)]
    if row.config_file or row.zero_stage is None:
        return None
    base = next(
        (s for s in SHIPPED if (s.distributed_type, s.zero_stage) == (row.distributed_type, row.zero_stage)),
        None,
    )
    if base is None:
        return None
    changes = [
        f"{key}: {'cpu' if want else 'none'}"
        for key, want, has in (
            ("offload_optimizer_device", row.offload_optimizer, base.offload_optimizer),
            ("offload_param_device", row.offload_params, base.offload_params),
        )
        if want != has
    ]
    return (
        f"{row.name} has no shipped config: copy accelerate_configs/{base.config_file} and set "
        f"{' and '.join(changes)} under deepspeed_config"
    )
