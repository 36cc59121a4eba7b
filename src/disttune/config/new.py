"""Write accelerate configs from a few choices (``disttune config new``), in the shipped configs' style.

GPU detection parses ``nvidia-smi`` (never torch), so this stays instant and works on a login node.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from disttune.errors import UserError
from disttune.strategies import BY_NAME, SHIPPED

STRATEGIES = tuple(s.name for s in SHIPPED)  # the rows of disttune/strategies.py that ship a YAML
PRECISIONS = ("auto", "bf16", "fp16", "no")
SCRIPT = "07_distributed_training.py"


@dataclass(frozen=True)
class NewConfig:
    """The choices behind a new config. ``num_processes`` is the total over all machines."""

    strategy: str
    num_processes: int
    num_machines: int = 1
    machine_rank: int = 0
    main_process_ip: str | None = None
    main_process_port: int = 29500
    mixed_precision: str = "bf16"  # already resolved: bf16 | fp16 | no

    @property
    def per_machine(self) -> int:
        return self.num_processes // self.num_machines


@dataclass(frozen=True)
class Gpu:
    """One GPU as ``nvidia-smi`` reports it."""

    name: str
    compute_cap: float


def detect_gpus(runner=subprocess.run) -> list[Gpu] | None:
    """The local NVIDIA GPUs, or ``None`` when ``nvidia-smi`` is missing or fails (no torch import)."""
    if runner is subprocess.run and shutil.which("nvidia-smi") is None:
        return None
    try:
        proc = runner(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    gpus = []
    for line in proc.stdout.splitlines():
        name, _, cap = line.rpartition(",")
        try:
            gpus.append(Gpu(name.strip(), float(cap)))
        except ValueError:
            continue
    return gpus or None


def pick_mixed_precision(requested: str, gpus: list[Gpu] | None) -> tuple[str, str | None]:
    """(precision, note): ``auto`` is bf16 when every local GPU has compute capability >= 8.0, else fp16."""
    if requested != "auto":
        return requested, None
    if not gpus:
        return "bf16", (
            "mixed_precision: auto picked bf16 because no NVIDIA GPU is visible here (nvidia-smi found "
            "none); bf16 needs Ampere (compute capability 8.0) or newer on the training machines: "
            "pass --mixed_precision fp16 for older GPUs"
        )
    old = [g for g in gpus if g.compute_cap < 8.0]
    if old:
        return "fp16", (
            f"mixed_precision: auto picked fp16 because {old[0].name} has compute capability "
            f"{old[0].compute_cap} (bf16 needs 8.0 or newer)"
        )
    return (
        "bf16",
        f"mixed_precision: auto picked bf16 (all {len(gpus)} local GPUs have compute capability >= 8.0)",
    )


def validate(cfg: NewConfig, slurm: bool = False) -> None:
    """Raise one ``UserError`` listing every problem with the choices."""
    problems = []
    if cfg.strategy not in STRATEGIES:
        problems.append(f"--strategy must be one of {', '.join(STRATEGIES)}")
    if cfg.num_processes < 1:
        problems.append("--num_processes must be at least 1")
    if cfg.num_machines < 1:
        problems.append("--num_machines must be at least 1")
    elif cfg.num_processes % cfg.num_machines:
        problems.append(
            f"--num_processes {cfg.num_processes} (the total) must be a multiple of "
            f"--num_machines {cfg.num_machines}"
        )
    if cfg.num_machines >= 1 and not 0 <= cfg.machine_rank < cfg.num_machines:
        problems.append(
            f"--machine_rank must be in 0..{cfg.num_machines - 1} for {cfg.num_machines} machine(s)"
        )
    if not 1 <= cfg.main_process_port <= 65535:
        problems.append("--main_process_port must be in 1-65535")
    if cfg.num_machines > 1 and not cfg.main_process_ip and not slurm:
        problems.append(
            "several machines need --main_process_ip (the address of the machine with rank 0), "
            "or --slurm to take it from the allocation"
        )
    if problems:
        raise UserError("cannot write the config:\n  - " + "\n  - ".join(problems))


def render_yaml(cfg: NewConfig, config_name: str = "CONFIG.yaml") -> str:
    """The accelerate YAML for ``cfg``: the shipped configs' keys and comments."""
    row = BY_NAME[cfg.strategy]
    lines = [
        f"# {row.what}",
        f"# {row.pick_when}",
        f"# Launch:  accelerate launch --config_file {config_name} {SCRIPT}",
        "# Written by `disttune config new`; check it with `disttune check`.",
        "compute_environment: LOCAL_MACHINE",
        f"distributed_type: {row.distributed_type}",
        f"num_processes: {cfg.num_processes}          # total processes over all machines",
        f"machine_rank: {cfg.machine_rank}           # this machine's rank (0 = main node)",
        f"num_machines: {cfg.num_machines}",
    ]
    if cfg.num_machines > 1 and cfg.main_process_ip:
        lines.append(f"main_process_ip: {cfg.main_process_ip}")
    if cfg.num_machines > 1:
        lines.append(f"main_process_port: {cfg.main_process_port}")
    lines += [
        "gpu_ids: all",
        f"mixed_precision: {_quote(cfg.mixed_precision)}",
        "rdzv_backend: static",
        "same_network: true",
        "main_training_function: main",
        "use_cpu: false",
    ]
    if row.zero_stage is not None:
        lines += [
            "deepspeed_config:",
            f"  zero_stage: {row.zero_stage}",
            f"  offload_optimizer_device: {'cpu' if row.offload_optimizer else 'none'}",
            f"  offload_param_device: {'cpu' if row.offload_params else 'none'}",
            "  gradient_accumulation_steps: 1",
            "  gradient_clipping: 1.0",
        ]
        if row.zero_stage == 3:
            lines += [
                "  zero3_init_flag: true          # build/load the model already sharded (no full copy per GPU)",
                "  zero3_save_16bit_model: true   # gather the full 16-bit weights when saving",
            ]
        lines.append("  deepspeed_multinode_launcher: standard   # run accelerate launch on every machine")
    elif row.fsdp_version is not None:
        lines += [
            "fsdp_config:",
            f"  fsdp_version: {row.fsdp_version}",
            "  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP   # one shard unit per decoder layer",
            "  fsdp_reshard_after_forward: true                # ZeRO-3-like; false = ZeRO-2-like",
            f"  fsdp_offload_params: {'true' if row.offload_params else 'false'}",
            "  fsdp_cpu_ram_efficient_loading: true",
            "  fsdp_state_dict_type: FULL_STATE_DICT           # save one full, loadable checkpoint",
            "  fsdp_activation_checkpointing: false",
        ]
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    return "'no'" if value == "no" else value  # unquoted, YAML would read no as false


def launch_commands(cfg: NewConfig, config_path: str) -> list[str]:
    """The exact ``accelerate launch`` command for each machine (``--machine_rank i``)."""
    base = f"accelerate launch --config_file {config_path}"
    if cfg.num_machines == 1:
        return [f"{base} {SCRIPT}"]
    ip = cfg.main_process_ip or "$MAIN_PROCESS_IP"
    return [
        f"{base} --num_machines {cfg.num_machines} --num_processes {cfg.num_processes} --machine_rank {rank} "
        f"--main_process_ip {ip} --main_process_port {cfg.main_process_port} {SCRIPT}"
        for rank in range(cfg.num_machines)
    ]


def render_sbatch(cfg: NewConfig, config_path: str) -> str:
    """An sbatch script: one task per node, each running ``accelerate launch`` with its node's rank."""
    inner = (
        f"accelerate launch --config_file {config_path} --num_machines $SLURM_NNODES "
        f"--num_processes {cfg.num_processes} --machine_rank $SLURM_NODEID "
        "--main_process_ip $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n1) "
        f"--main_process_port {cfg.main_process_port} {SCRIPT}"
    )
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name=disttune-{cfg.strategy}",
            f"#SBATCH --nodes={cfg.num_machines}",
            "#SBATCH --ntasks-per-node=1          # one accelerate launch per node; it starts the GPU processes",
            f"#SBATCH --gpus-per-node={cfg.per_machine}",
            "#SBATCH --output=%x-%j.out",
            "# Written by `disttune config new --slurm`. Submit with: sbatch "
            + Path(config_path).with_suffix(".sbatch").name,
            "set -euo pipefail",
            "# Single quotes: $SLURM_NODEID and the main node's name are read on each node by srun's task.",
            f"srun bash -c '{inner}'",
            "",
        ]
    )


def yaml_config_for(cfg: NewConfig, slurm: bool) -> NewConfig:
    """What the YAML holds: under Slurm without a known main address, one node's share (the sbatch script
    passes --num_machines, --num_processes, --machine_rank and --main_process_ip for the allocation)."""
    if slurm and cfg.num_machines > 1 and not cfg.main_process_ip:
        return replace(cfg, num_processes=cfg.per_machine, num_machines=1, machine_rank=0)
    return cfg


def write_new(cfg: NewConfig, output: Path, force: bool = False, slurm: bool = False) -> list[Path]:
    """Write the YAML (and the sbatch script with ``slurm``); refuse to overwrite unless ``force``."""
    targets = [output] + ([output.with_suffix(".sbatch")] if slurm else [])
    problems = []
    if not output.parent.is_dir():
        problems.append(f"the folder {output.parent} does not exist; create it first")
    problems += [
        f"{t} already exists; pass --force to overwrite it" for t in targets if t.exists() and not force
    ]
    if problems:
        raise UserError("cannot write the config:\n  - " + "\n  - ".join(problems))
    output.write_text(render_yaml(yaml_config_for(cfg, slurm), str(output)), encoding="utf-8")
    if slurm:
        targets[1].write_text(render_sbatch(cfg, str(output)), encoding="utf-8")
    return targets
