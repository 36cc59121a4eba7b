"""Cross-field rules of an accelerate YAML: each rule reads the whole config and returns findings.

Every rule states the accelerate 1.15 behaviour it guards against. Severity: ``error`` when the run fails,
or would run but not as written (a value silently ignored, a count silently changed, a feature silently
off); ``warning`` when it runs as written but is probably not what the user wants.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from disttune.config.findings import Finding, error, warning
from disttune.config.schema import (
    CONFIG_FILE_CONFLICTS,
    DISTRIBUTED_TYPES,
    LAUNCH_LINE_FLAGS,
    MIXED_PRECISIONS,
    SAGEMAKER_DISTRIBUTED_TYPES,
)
from disttune.config.zero import as_int, rule_zero, truth, zero_from_yaml

GPU_TYPES = ("MULTI_GPU", "DEEPSPEED", "FSDP", "MEGATRON_LM")


@dataclass
class Accelerate:
    """The typed view of one loaded accelerate config, built once per file; every rule reads it.

    Attributes:
        data: the mapping as loaded.
        file: the file, as findings name it.
        num_processes: ``--num_processes`` given to ``disttune check`` (overrides the file's).
        ds: ``deepspeed_config`` (``{}`` when absent or not a mapping).
        fsdp: ``fsdp_config`` with every key under its ``fsdp_`` name, as accelerate's launcher reads it.
    Properties: ``dtype`` (distributed_type as accelerate uses it), ``world``, ``machines``, ``sagemaker``.
    """

    data: dict
    file: str
    num_processes: int | None = None
    ds: dict = field(init=False)
    fsdp: dict = field(init=False)

    def __post_init__(self):
        ds = self.data.get("deepspeed_config")
        self.ds = ds if isinstance(ds, dict) else {}
        fsdp = self.data.get("fsdp_config")
        fsdp = fsdp if isinstance(fsdp, dict) else {}
        self.fsdp = {(k if str(k).startswith("fsdp_") else f"fsdp_{k}"): v for k, v in fsdp.items()}

    @property
    def dtype(self) -> object:
        """distributed_type as accelerate uses it: YAML's unquoted NO loads as False, which accelerate runs as NO."""
        value = self.data.get("distributed_type")
        return "NO" if value is False else value

    @property
    def world(self) -> int | None:
        """Total processes: --num_processes if given, else the YAML's num_processes (NO: always 1)."""
        if self.num_processes is not None:
            return self.num_processes
        return as_int(self.data.get("num_processes"))

    @property
    def machines(self) -> int:
        """num_machines when it is a usable number (the schema reports one below 1), else 1."""
        n = as_int(self.data.get("num_machines"))
        return n if n is not None and n >= 1 else 1

    @property
    def sagemaker(self) -> bool:
        return self.data.get("compute_environment") == "AMAZON_SAGEMAKER"


def rule_distributed_type(y: Accelerate) -> list[Finding]:
    """distributed_type is required and one accelerate knows (an unquoted NO loads as false: accelerate runs NO)."""
    value = y.dtype
    if "distributed_type" not in y.data:
        return [
            error(
                y.file,
                "distributed_type",
                None,
                "missing: accelerate requires distributed_type",
                "add distributed_type: MULTI_GPU (or DEEPSPEED, FSDP, 'NO', ...)",
            )
        ]
    if value is True:
        return [
            error(
                y.file,
                "distributed_type",
                value,
                "YAML reads an unquoted yes/true/on as the boolean true, which is no distributed type",
                "write a distributed type, e.g. distributed_type: MULTI_GPU",
            )
        ]
    allowed = SAGEMAKER_DISTRIBUTED_TYPES if y.sagemaker else DISTRIBUTED_TYPES
    if value not in allowed:
        close = difflib.get_close_matches(str(value).upper(), allowed, n=1)
        return [
            error(
                y.file,
                "distributed_type",
                value,
                "not a distributed type accelerate knows (names are upper case)",
                f"use one of: {', '.join(allowed)}" + (f" (did you mean {close[0]}?)" if close else ""),
            )
        ]
    return []


def rule_mixed_precision(y: Accelerate) -> list[Finding]:
    """mixed_precision is no|fp16|bf16|fp8; YAML reads an unquoted no as false and accelerate then crashes."""
    value = y.data.get("mixed_precision")
    if isinstance(value, bool):
        return [
            error(
                y.file,
                "mixed_precision",
                value,
                "YAML reads an unquoted no as the boolean false; accelerate launch then fails "
                "('bool' object has no attribute 'lower')",
                "quote it: mixed_precision: 'no'",
            )
        ]
    if value is not None and str(value).lower() not in MIXED_PRECISIONS:
        return [
            error(
                y.file,
                "mixed_precision",
                value,
                "not a mixed precision accelerate knows",
                "use one of: 'no', fp16, bf16, fp8",
            )
        ]
    return []


def rule_processes(y: Accelerate) -> list[Finding]:
    """num_processes / num_machines / machine_rank / main process address must add up."""
    out: list[Finding] = []
    d, world, machines = y.data, y.world, y.machines
    if y.sagemaker:
        return out
    if "num_processes" not in d and y.num_processes is None and y.dtype not in ("NO", None, False):
        out.append(
            warning(
                y.file,
                "num_processes",
                None,
                f"not set, so it must come on the launch line ({LAUNCH_LINE_FLAGS['num_processes']} N); without "
                "it accelerate launch stops with 'You need to manually pass in --num_processes'",
                "pass --num_processes <total processes over all machines> to accelerate launch (and to disttune "
                "check, for the batch-size checks), or add num_processes: N here",
            )
        )
    if y.dtype == "NO" and world is not None and world > 1:
        out.append(
            error(
                y.file,
                "num_processes",
                world,
                f"distributed_type 'NO' starts a single process; num_processes {world} is ignored",
                "use distributed_type: MULTI_GPU (or DEEPSPEED/FSDP) for several processes, "
                "or set num_processes: 1",
            )
        )
    mpirun = d.get("mpirun_config") if isinstance(d.get("mpirun_config"), dict) else {}
    if y.dtype == "MULTI_CPU" and world is not None and world > 1 and not mpirun.get("mpirun_hostfile"):
        out.append(
            error(
                y.file,
                "num_processes",
                world,
                f"distributed_type 'MULTI_CPU' without mpirun_hostfile: accelerate launch starts a single "
                f"process, not {world}",
                "use distributed_type: MULTI_GPU (on a machine without GPUs it runs N CPU processes "
                "over gloo with the disttune training script), or set mpirun_config.mpirun_hostfile to launch with "
                "mpirun",
            )
        )
    if world is not None and world >= 1 and world % machines != 0:
        out.append(
            error(
                y.file,
                "num_processes",
                world,
                f"{world} processes cannot be split evenly over {machines} machines "
                f"(accelerate starts num_processes // num_machines = {world // machines} per machine)",
                f"make num_processes a multiple of num_machines, e.g. {machines * max(1, world // machines)}",
            )
        )
    rank = as_int(d.get("machine_rank"))
    if rank is not None and not 0 <= rank < machines:
        out.append(
            error(
                y.file,
                "machine_rank",
                rank,
                f"machine_rank must be in 0..{machines - 1} for num_machines {machines}",
                "set machine_rank: 0 on the main machine and 1, 2, ... on the others",
            )
        )
    out += _main_process(y)
    return out


def _main_process(y: Accelerate) -> list[Finding]:
    out: list[Finding] = []
    d, machines = y.data, y.machines
    port = d.get("main_process_port")
    if port is not None:
        ok = isinstance(port, int) and not isinstance(port, bool) and 0 <= port <= 65535
        if not ok:
            out.append(
                error(
                    y.file,
                    "main_process_port",
                    port,
                    "not a TCP port number",
                    "use a whole number in 1-65535, unquoted, e.g. main_process_port: 29500",
                )
            )
        elif port == 0 and machines > 1:
            out.append(
                error(
                    y.file,
                    "main_process_port",
                    port,
                    "port 0 picks a random free port on each machine, so the machines cannot meet",
                    "use the same fixed port on every machine, e.g. 29500",
                )
            )
    # SLURM-style configs leave the address and the rank to the launch line: a warning, not an error.
    if machines > 1 and not d.get("main_process_ip"):
        out.append(
            warning(
                y.file,
                "main_process_ip",
                d.get("main_process_ip"),
                f"num_machines is {machines} but there is no main_process_ip: the machines find rank 0 "
                "only if every launch line gives it",
                "pass --main_process_ip ADDR_OF_RANK_0 to accelerate launch on every machine (as a SLURM "
                "script does), or set main_process_ip here",
            )
        )
    if machines > 1 and "machine_rank" not in d:
        out.append(
            warning(
                y.file,
                "machine_rank",
                None,
                f"num_machines is {machines} but there is no machine_rank: every machine would start as "
                "rank 0 unless its launch line says otherwise",
                "pass --machine_rank 0, 1, ... to accelerate launch on each machine (e.g. $SLURM_NODEID), "
                "or write one config per machine",
            )
        )
    return out


def notes_processes(y: Accelerate) -> list[str]:
    """Facts worth saying that are not problems: several "machines" on a loopback address (fine on one host)."""
    ip = str(y.data.get("main_process_ip") or "")
    if y.machines > 1 and (ip in ("localhost", "::1") or ip.startswith("127.")):
        return [
            f"{y.file}: main_process_ip {ip} is a loopback address: only processes on this host can join "
            f"the {y.machines} machines (use the LAN/InfiniBand address of machine_rank 0 for real machines)"
        ]
    return []


def rule_gpu_ids(y: Accelerate) -> list[Finding]:
    """gpu_ids is a string, read as accelerate reads it; its count must match the processes per machine.

    accelerate 1.15 (commands/launch.py, utils/launch.py): ``gpu_ids != "all"`` compares exactly, the refusal
    of a single id under MULTI_GPU counts ``gpu_ids.split(",")`` (empty parts too), and anything but "all"
    becomes CUDA_VISIBLE_DEVICES as written, which makes visible the ids it lists.
    """
    value = y.data.get("gpu_ids")
    if value is None or y.sagemaker:
        return []
    if not isinstance(value, str):
        return [
            error(
                y.file,
                "gpu_ids",
                value,
                f"gpu_ids must be a string; YAML reads {value!r} as a {type(value).__name__} and "
                "accelerate launch fails calling .split on it",
                f"quote it: gpu_ids: '{value}' (or gpu_ids: all)",
            )
        ]
    if value != "all" and value.strip().lower() == "all":
        return [
            error(
                y.file,
                "gpu_ids",
                value,
                f"accelerate compares gpu_ids with 'all' exactly, so {value!r} is passed on as "
                f"CUDA_VISIBLE_DEVICES={value.strip()}, which hides every GPU",
                "write gpu_ids: all",
            )
        ]
    if value == "all" or y.dtype not in GPU_TYPES or y.data.get("use_cpu") is True:
        return []
    ids = [s for s in value.split(",") if s.strip()]  # the GPUs CUDA_VISIBLE_DEVICES makes visible
    out: list[Finding] = []
    world = y.world
    if y.dtype == "MULTI_GPU" and y.machines <= 1 and len(value.split(",")) < 2:
        out.append(
            error(
                y.file,
                "gpu_ids",
                value,
                "MULTI_GPU with fewer than two GPU ids: accelerate launch refuses it",
                "list at least two ids (gpu_ids: '0,1') or use gpu_ids: all",
            )
        )
    elif world is not None and world % y.machines == 0:
        per = world // y.machines
        if per > len(ids):
            out.append(
                error(
                    y.file,
                    "gpu_ids",
                    value,
                    f"{per} processes per machine but only {len(ids)} GPU ids: the extra processes "
                    "find no GPU of their own",
                    f"list {per} GPU ids, or lower num_processes to {len(ids) * y.machines}",
                )
            )
        elif per < len(ids):
            out.append(
                warning(
                    y.file,
                    "gpu_ids",
                    value,
                    f"{len(ids)} GPU ids but only {per} processes per machine: "
                    f"{len(ids) - per} of the listed GPUs stay idle",
                    f"set num_processes to {len(ids) * y.machines}, or list {per} ids",
                )
            )
    return out + _gpu_ids_not_applied(y, value)


def _gpu_ids_not_applied(y: Accelerate, value: str) -> list[Finding]:
    launcher = y.ds.get("deepspeed_multinode_launcher") or "pdsh"
    if y.dtype != "DEEPSPEED" or y.machines <= 1 or launcher == "standard":
        return []
    return [
        error(
            y.file,
            "gpu_ids",
            value,
            f"with num_machines > 1 and the {launcher!r} launcher accelerate runs "
            "`deepspeed --hostfile ... --num_gpus N`, which picks the GPUs itself: gpu_ids is not applied",
            "remove gpu_ids (use deepspeed_inclusion_filter to choose GPUs), "
            "or use deepspeed_multinode_launcher: standard",
        )
    ]


def rule_ignored_sections(y: Accelerate) -> list[Finding]:
    """deepspeed_config / fsdp_config only apply to their own distributed_type: elsewhere silently ignored."""
    out: list[Finding] = []
    both = " (DeepSpeed and FSDP are both configured)" if y.ds and y.fsdp else ""
    if y.ds and y.dtype != "DEEPSPEED":
        out.append(
            error(
                y.file,
                "deepspeed_config",
                None,
                f"distributed_type is {y.dtype!r}, so deepspeed_config is ignored{both}",
                "set distributed_type: DEEPSPEED to use it, or remove deepspeed_config",
            )
        )
    if y.fsdp and y.dtype != "FSDP":
        out.append(
            error(
                y.file,
                "fsdp_config",
                None,
                f"distributed_type is {y.dtype!r}, so fsdp_config is ignored{both}",
                "set distributed_type: FSDP to use it, or remove fsdp_config",
            )
        )
    return out


def rule_deepspeed(y: Accelerate, ds_json: dict | None = None, ds_file: str = "") -> list[Finding]:
    """ZeRO stage vs offload and ZeRO-3-only flags; deepspeed_config_file vs the keys accelerate refuses.

    ``ds_json`` is the DeepSpeed JSON that ``deepspeed_config_file`` points at, when it loaded.
    """
    from disttune.config.deepspeed_rules import json_precision, json_zero_stage

    if y.dtype != "DEEPSPEED":
        return []
    out: list[Finding] = []
    ds, f, p = y.ds, y.file, "deepspeed_config."
    has_file = bool(ds.get("deepspeed_config_file"))
    if has_file:
        for key, json_key in CONFIG_FILE_CONFLICTS.items():
            if key in ds:
                out.append(
                    error(
                        f,
                        p + key,
                        ds[key],
                        "accelerate refuses this key next to deepspeed_config_file (ValueError: When using "
                        "`deepspeed_config_file`, the following accelerate config variables will be ignored)",
                        f"remove it here and set `{json_key}` in the DeepSpeed JSON instead",
                    )
                )
        if y.data.get("mixed_precision") is not None:
            precision, key = json_precision(ds_json) if ds_json is not None else (None, None)
            mp = str(y.data["mixed_precision"]).lower()
            also = (
                f"; it also contradicts {ds_file} ({key} means {precision})"
                if precision not in (None, mp)
                else ""
            )
            out.append(
                error(
                    f,
                    "mixed_precision",
                    y.data["mixed_precision"],
                    "accelerate refuses mixed_precision in the YAML next to deepspeed_config_file "
                    f"(it is one of the 'variables that will be ignored'){also}",
                    "remove mixed_precision here and set fp16.enabled / bf16.enabled in the DeepSpeed JSON",
                )
            )
    json_stage = json_zero_stage(ds_json) if has_file and ds_json is not None else None
    out += rule_zero(
        zero_from_yaml(f, ds, json_stage, has_file, tuple(CONFIG_FILE_CONFLICTS) if has_file else ())
    )
    launcher = ds.get("deepspeed_multinode_launcher") or "pdsh"
    if y.machines > 1 and launcher != "standard" and not ds.get("deepspeed_hostfile"):
        out.append(
            error(
                f,
                p + "deepspeed_hostfile",
                None,
                f"num_machines > 1 with the {launcher!r} launcher needs a hostfile; without one accelerate "
                "runs `deepspeed --hostfile None` and DeepSpeed trains on the local machine only",
                "set deepspeed_hostfile, or use deepspeed_multinode_launcher: standard and run "
                "accelerate launch on every machine",
            )
        )
    return out


__all__ = ["Accelerate", "as_int", "truth"]
