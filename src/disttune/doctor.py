"""Pre-flight checks for a distributed run: each check is a small function returning a ``Check``.

Status: ``pass`` (nothing to do), ``warn`` (works, but probably not as you expect), ``fail`` (will break
or hang), ``info`` (guidance from the FAQ: what to measure or turn on; nothing is judged). Nothing here
touches the network unless ``probe_host`` is given explicitly.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from disttune.extensions import extensions_root, human_duration, inspect_locks

GIB = 2**30
DEFAULT_PORT = 29500  # torchrun / accelerate's default rendezvous port
STATUSES = ("pass", "info", "warn", "fail")


@dataclass(frozen=True)
class Check:
    """One result: what was checked, how it went, what was seen, and how to fix it."""

    name: str
    status: str  # one of STATUSES
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        """Plain data for ``--json``."""
        return asdict(self)


# --- resources -------------------------------------------------------------------------------------


def shm_size_bytes(path: str = "/dev/shm") -> int | None:
    """Total size of the shared-memory filesystem at ``path``, or None when it does not exist."""
    try:
        return shutil.disk_usage(path).total
    except OSError:
        return None


def check_shm(path: str = "/dev/shm", gpu_count: int = 0) -> Check:
    """NCCL (intra-node transport) and DataLoader workers put buffers in /dev/shm; docker gives 64 MiB."""
    size = shm_size_bytes(path)
    if size is None:
        return Check(
            "shared memory",
            "warn",
            f"{path} does not exist on this system.",
            "Only Linux has /dev/shm; multi-process training is supported on Linux.",
        )
    detail = f"{path} is {size / GIB:.2f} GiB."
    if size >= GIB:
        return Check("shared memory", "pass", detail)
    fix = (
        "In docker run with `--shm-size=16g` (or `--ipc=host`); in Kubernetes mount an emptyDir with "
        "`medium: Memory` at /dev/shm."
    )
    if gpu_count > 1:
        return Check(
            "shared memory",
            "fail",
            detail + " NCCL needs >= 1 GiB between GPUs of one machine "
            "(fails with 'No space left on device' or hangs).",
            fix,
        )
    return Check(
        "shared memory",
        "warn",
        detail + " DataLoader workers and NCCL need >= 1 GiB (symptom: 'Bus error' in a worker).",
        fix,
    )


def _procs_per_machine(config: Mapping[str, Any]) -> int | None:
    procs, machines = config.get("num_processes"), config.get("num_machines") or 1
    if not isinstance(procs, int) or not isinstance(machines, int) or machines < 1:
        return None
    return max(1, procs // machines)  # num_processes counts every machine


def check_gpus(
    gpus: list[dict[str, Any]],
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Check:
    """Visible GPUs against the processes the config starts on this machine."""
    config = config or {}
    per_machine = _procs_per_machine(config)
    visible = (os.environ if environ is None else environ).get("CUDA_VISIBLE_DEVICES")
    seen = f"{len(gpus)} GPU(s) visible" + (
        f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    )
    if config.get("use_cpu") is True:
        return Check("GPUs", "pass", f"{seen}; the config asks for CPU (use_cpu: true).")
    if not gpus:
        return Check(
            "GPUs",
            "warn",
            f"{seen}: the run will use the CPU with the gloo backend (slow, fine for a smoke test).",
            "For GPU training check `nvidia-smi`, the driver, "
            "CUDA_VISIBLE_DEVICES and that torch is a CUDA build (`disttune env`).",
        )
    if per_machine is None:
        return Check("GPUs", "pass", seen + ".")
    if per_machine > len(gpus):
        return Check(
            "GPUs",
            "fail",
            f"{seen}, but the config starts {per_machine} process(es) per machine.",
            f"Set num_processes to {len(gpus) * (config.get('num_machines') or 1)} in the config "
            "(or pass --num_processes), or make more GPUs visible.",
        )
    if per_machine < len(gpus):
        return Check("GPUs", "pass", f"{seen}; the config uses {per_machine} of them per machine.")
    return Check("GPUs", "pass", f"{seen}, one per process.")


def check_precision(gpus: list[dict[str, Any]], config: Mapping[str, Any] | None = None) -> Check:
    """mixed_precision against the hardware: bf16 needs Ampere+, fp16 is ignored on CPU."""
    precision = str((config or {}).get("mixed_precision", "no"))
    if not gpus or (config or {}).get("use_cpu") is True:
        if precision == "fp16":
            # accelerate/accelerator.py only enables fp16 autocast when the device is not the CPU.
            return Check(
                "mixed precision",
                "warn",
                "mixed_precision: fp16 on CPU is silently ignored by accelerate: the run is fp32.",
                "Use `--mixed_precision no` (or bf16) on CPU.",
            )
        return Check("mixed precision", "pass", f"{precision} on CPU.")
    if precision == "bf16":
        old = [g for g in gpus if not g.get("bf16")]
        if old:
            names = ", ".join(f"[{g['index']}] {g['name']} (sm_{g['compute_capability']})" for g in old)
            return Check(
                "mixed precision",
                "fail",
                f"mixed_precision: bf16 but {names} lacks bf16 "
                "(needs compute capability >= 8.0, Ampere or newer).",
                "Use `--mixed_precision fp16` (or set mixed_precision: fp16 in the config).",
            )
    return Check("mixed precision", "pass", f"{precision}, supported by every visible GPU.")


# --- network ---------------------------------------------------------------------------------------


def check_port(port: int = DEFAULT_PORT, host: str = "127.0.0.1", machine_rank: int = 0) -> Check:
    """The main node must be able to open the rendezvous port: try to bind it."""
    if machine_rank != 0:
        return Check(
            "rendezvous port",
            "pass",
            f"machine_rank {machine_rank}: port {port} is opened on the "
            "main node, not here (run doctor there too).",
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return Check(
                "rendezvous port",
                "fail",
                f"port {port} on {host} is taken ({exc.strerror}); "
                "the launch would fail with 'address already in use' (often a previous run still "
                "alive).",
                f"Find it with `ss -ltnp | grep {port}` and stop it, or pick another port: "
                "`--main_process_port 29501`.",
            )
    return Check("rendezvous port", "pass", f"port {port} on {host} is free.")


def check_reachable(host: str, port: int = DEFAULT_PORT, timeout: float = 3.0) -> Check:
    """TCP connect to the main node (only called when the user names ``--probe_host``)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except ConnectionRefusedError:
        return Check(
            "main node reachable",
            "pass",
            f"{host} answered; nothing listens on port {port} yet "
            "(normal before the main node starts its run).",
        )
    except socket.gaierror as exc:
        return Check(
            "main node reachable",
            "fail",
            f"cannot resolve {host!r}: {exc}.",
            "Use the main node's IP address as main_process_ip.",
        )
    except OSError as exc:  # timeout, no route to host
        return Check(
            "main node reachable",
            "fail",
            f"no answer from {host}:{port} within {timeout:g}s ({exc}).",
            f"Check the IP, the firewall (`sudo ufw allow {port}/tcp` or your cloud security group) "
            "and that both nodes share a network; set NCCL_SOCKET_IFNAME to the right interface.",
        )
    return Check("main node reachable", "pass", f"{host}:{port} accepts connections.")


# --- collectives and hangs -------------------------------------------------------------------------

TIMEOUT_FIX = (
    "Set the timeout in code: `--ddp_timeout 1800` (transformers TrainingArguments; `disttune launch "
    "--timeout 1800` appends it), or `Accelerator(kwargs_handlers=[InitProcessGroupKwargs("
    "timeout=timedelta(seconds=1800))])`."
)


def check_collective_timeout(environ: Mapping[str, str] | None = None) -> Check:
    """The seed's FAQ says `export NCCL_TIMEOUT=1800`: no library in the stack reads that variable."""
    environ = os.environ if environ is None else environ
    if "NCCL_TIMEOUT" in environ:
        return Check(
            "collective timeout",
            "warn",
            f"NCCL_TIMEOUT={environ['NCCL_TIMEOUT']} does nothing: neither torch.distributed nor "
            "accelerate, transformers or deepspeed reads it. The timeout of init_process_group "
            "applies (TrainingArguments.ddp_timeout, 1800 s by default).",
            TIMEOUT_FIX + " Then `unset NCCL_TIMEOUT`.",
        )
    if environ.get("TORCH_NCCL_ASYNC_ERROR_HANDLING") == "0":
        return Check(
            "collective timeout",
            "warn",
            "TORCH_NCCL_ASYNC_ERROR_HANDLING=0: a timed-out NCCL "
            "collective is not torn down, so a stuck rank hangs the job forever.",
            "`unset TORCH_NCCL_ASYNC_ERROR_HANDLING` (torch's default aborts the job on timeout), "
            "or set TORCH_NCCL_BLOCKING_WAIT=1 to raise the timeout in the waiting thread.",
        )
    legacy = [v for v in ("NCCL_ASYNC_ERROR_HANDLING", "NCCL_BLOCKING_WAIT") if v in environ]
    if legacy:
        return Check(
            "collective timeout",
            "warn",
            f"{', '.join(legacy)}: old names, deprecated by torch.",
            "Use the TORCH_-prefixed names: " + ", ".join(f"TORCH_{v}" for v in legacy) + ".",
        )
    return Check(
        "collective timeout",
        "pass",
        "set by the training script: --ddp_timeout (1800 s by "
        "default in TrainingArguments); enforced by torch's NCCL watchdog "
        "(TORCH_NCCL_ASYNC_ERROR_HANDLING / TORCH_NCCL_BLOCKING_WAIT).",
    )


def check_hang_debugging(environ: Mapping[str, str] | None = None) -> Check:
    """FAQ: 'DeepSpeed training is stuck' -> what to turn on before the next try."""
    environ = os.environ if environ is None else environ
    wanted = {"NCCL_DEBUG": "INFO", "ACCELERATE_LOG_LEVEL": "INFO", "TORCH_DISTRIBUTED_DEBUG": "DETAIL"}
    on = [k for k, v in wanted.items() if environ.get(k, "").upper() == v]
    state = f"on: {', '.join(on)}" if on else "debug logging is off (normal)"
    return Check(
        "if it hangs",
        "info",
        f"{state}.",
        "Relaunch with `disttune launch --debug` (sets NCCL_DEBUG=INFO, ACCELERATE_LOG_LEVEL=INFO, "
        "TORCH_DISTRIBUTED_DEBUG=DETAIL); while stuck run `py-spy dump --pid PID` on every rank to "
        "see which collective each one waits in; a rank that never reaches it is the culprit "
        "(different data length, a rank-0-only branch, one rank out of memory).",
    )


# --- software --------------------------------------------------------------------------------------

_DS_PROBE = """
import json
out = {}
try:
    from deepspeed.accelerator import get_accelerator
    acc = get_accelerator()
    out["accelerator"] = acc.device_name()
    builder = acc.create_op_builder("CPUAdamBuilder")
    out["cpu_adam"] = bool(builder is not None and builder.is_compatible(False))
except Exception as exc:
    out["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
print("DISTTUNE_PROBE " + json.dumps(out))
"""


def probe_deepspeed(timeout: float = 120) -> dict[str, Any]:
    """Import deepspeed in a child process (it is slow, noisy on stdout, and may crash) and ask about ops."""
    import json

    try:
        proc = subprocess.run(
            [sys.executable, "-c", _DS_PROBE], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"import deepspeed took over {timeout:g}s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("DISTTUNE_PROBE "):
            return json.loads(line.split(" ", 1)[1])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"import deepspeed failed: {tail}"}


def check_deepspeed(
    probe: Mapping[str, Any] | None,
    gpu_count: int = 0,
    config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> Check:
    """deepspeed importable, and what its JIT-built ops need: ninja, plus nvcc/CUDA_HOME with GPUs."""
    environ = os.environ if environ is None else environ
    config = config or {}
    wanted = str(config.get("distributed_type", "")).upper() == "DEEPSPEED"
    bad = "fail" if wanted else "warn"
    if probe is None:
        return Check(
            "deepspeed", bad, "deepspeed is not installed.", "`pip install deepspeed` (see the Makefile)."
        )
    if probe.get("error"):
        return Check(
            "deepspeed",
            bad,
            f"deepspeed does not import: {probe['error']}",
            "Rebuild it against this torch: `pip install --no-build-isolation --force-reinstall deepspeed`.",
        )
    problems, fixes = [], []
    if not which("ninja"):
        problems.append("ninja not found (DeepSpeed builds its ops at first use with it)")
        fixes.append("`pip install ninja`")
    if gpu_count and not (environ.get("CUDA_HOME") or which("nvcc")):
        problems.append("no CUDA_HOME and no nvcc on PATH (needed to JIT-build fused/CUDA ops)")
        fixes.append("install the CUDA toolkit matching torch's CUDA and `export CUDA_HOME=/usr/local/cuda`")
    ds = config.get("deepspeed_config") if isinstance(config.get("deepspeed_config"), Mapping) else {}
    if ds.get("offload_optimizer_device") == "cpu" and probe.get("cpu_adam") is False:
        problems.append("the config offloads the optimizer to CPU but the cpu_adam op cannot be built here")
        fixes.append("run `ds_report` to see why (usually a missing compiler or python headers)")
    detail = (
        f"deepspeed imports (accelerator: {probe.get('accelerator', '?')}, cpu_adam buildable: "
        f"{probe.get('cpu_adam', '?')})"
    )
    if problems:
        return Check("deepspeed", bad, detail + "; " + "; ".join(problems) + ".", "; ".join(fixes) + ".")
    return Check("deepspeed", "pass", detail + ".")


def check_default_config(environ: Mapping[str, str] | None = None, config_path: str | None = None) -> Check:
    """`accelerate launch` without --config_file silently reads ~/.cache/huggingface/accelerate/..."""
    from disttune.config import load_accelerate_config
    from disttune.env import default_accelerate_config_path
    from disttune.errors import UserError

    path = default_accelerate_config_path(environ)
    if not path.is_file():
        return Check("default accelerate config", "pass", f"none at {path}.")
    try:  # the bounded reader: this file is text from anywhere too
        settings = load_accelerate_config(path)
    except UserError as exc:
        summary = f"cannot read it: {str(exc).splitlines()[0]}"
    else:
        summary = (
            ", ".join(
                f"{k}: {settings[k]}"
                for k in ("distributed_type", "num_processes", "mixed_precision")
                if k in settings
            )
            or "empty"
        )
    if config_path:
        return Check(
            "default accelerate config",
            "pass",
            f"{path} exists ({summary}) but is ignored: a config file is given.",
        )
    return Check(
        "default accelerate config",
        "warn",
        f"{path} exists ({summary}): a plain `accelerate launch script.py` uses it silently.",
        "Always pass `--config_file` (`disttune launch CONFIG` does), or delete that file.",
    )


# --- the FAQ: scaling and several machines ---------------------------------------------------------


def check_scaling(config: Mapping[str, Any] | None = None, cpu_count: int | None = None) -> Check:
    """FAQ: 'multi-GPU is not faster' -> what to measure, and a data-loading sanity check."""
    per_machine = _procs_per_machine(config or {}) or 1
    cpu_count = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
    fix = (
        "Measure tokens/s with 1 process and with N (`disttune bench` does both); scaling is good when "
        "N processes give close to N x. If not: raise per_device_train_batch_size (small batches are "
        "communication-bound), set dataloader_num_workers >= 2, and on several machines check the "
        "network (NCCL_DEBUG=INFO shows whether it uses IB or plain sockets)."
    )
    if cpu_count < 2 * per_machine:
        return Check(
            "scaling",
            "warn",
            f"{cpu_count} CPU core(s) for {per_machine} process(es): data loading "
            "and tokenization will likely starve the GPUs.",
            fix,
        )
    return Check("scaling", "info", f"{cpu_count} CPU cores for {per_machine} process(es) per machine.", fix)


def check_multinode(fingerprint: str) -> Check:
    """FAQ: several machines -> same versions everywhere (diff this line).

    The config's own multi-node faults (no main_process_ip, a loopback address, ...) are ``disttune check``
    findings, reported once through ``config_checks``.
    """
    fix = (
        "Run `disttune doctor` on every node and diff the fingerprint lines; on worker nodes add "
        "`--probe_host MAIN_IP` to test the connection to the main node."
    )
    return Check("several machines", "info", f"fingerprint: {fingerprint}", fix)


# --- putting it together ---------------------------------------------------------------------------


def config_checks(config_path: str) -> tuple[dict[str, Any], list[Check]]:
    """``disttune check``'s findings as checks (one per finding), and the config as check read it.

    The config is read once, by check; doctor judges the machine against it and does not re-derive config
    faults, so each one is reported once.
    """
    from disttune.config import check_files

    report = check_files([config_path])
    checks: list[Check] = []
    for f in report.findings:
        status = "fail" if f.severity == "error" else "warn"
        value = "" if f.value is None else f" = {f.value!r}"
        detail = f"{f.file}: {f.key}{value}: {f.message}" if f.key else f.message
        checks.append(Check(f"config {f.key}" if f.key else "config", status, detail, f.fix))
    if not checks:
        checks.append(Check("config", "pass", f"{config_path} passes `disttune check`."))
    checks += [Check("config note", "info", note) for note in report.notes]
    return report.configs.get(str(config_path), {}), checks


def check_extension_locks(environ: Mapping[str, str] | None = None) -> Check:
    """``disttune doctor``: a stale lock in the torch extensions cache makes DeepSpeed launches hang."""
    root = extensions_root(environ)
    locks = inspect_locks(environ)
    stale = [lock for lock in locks if lock.stale]
    if stale:
        files = "; ".join(f"{lock.path} (op {lock.op}, {human_duration(lock.age_s)} old)" for lock in stale)
        return Check(
            "op build locks",
            "fail",
            f"{len(stale)} lock(s) that no running build holds: {files}. A DeepSpeed launch that needs "
            "the op waits on it forever, printing nothing.",
            "Delete them: `rm " + " ".join(str(lock.path) for lock in stale) + "`, then start again any "
            "launch that is waiting on them (if other machines share this cache, first make sure none of "
            "them is building that op).",
        )
    if locks:
        held = "; ".join(
            f"{lock.path} (op {lock.op}, held by process {', '.join(map(str, lock.holders))})"
            if lock.holders
            else f"{lock.path} (op {lock.op}, {human_duration(lock.age_s)} old)"
            for lock in locks
        )
        return Check("op build locks", "pass", f"builds in progress: {held}.")
    return Check("op build locks", "pass", f"no op build lock under {root}.")


def run_checks(
    config_path: str | None = None,
    probe_host: str | None = None,
    port: int | None = None,
    environ: Mapping[str, str] | None = None,
    shm_path: str = "/dev/shm",
) -> list[Check]:
    """Every check, in the order they are printed. ``probe_host`` is the only one that uses the network."""
    from disttune.env import collect_env

    environ = os.environ if environ is None else environ
    config, checks = config_checks(config_path) if config_path else ({}, [])
    facts = collect_env(environ)
    gpus = facts["torch"]["gpus"]
    config_port = config.get("main_process_port")
    if not (isinstance(config_port, int) and not isinstance(config_port, bool) and 0 < config_port < 65536):
        config_port = None  # a bad port is one of check's findings above
    port = port or config_port or DEFAULT_PORT
    rank = config.get("machine_rank") if isinstance(config.get("machine_rank"), int) else 0
    installed = facts["packages"].get("deepspeed") != "not installed"
    checks += [
        check_shm(shm_path, len(gpus)),
        check_gpus(gpus, config, environ),
        check_precision(gpus, config),
        check_port(int(port), machine_rank=rank),
        check_collective_timeout(environ),
        check_deepspeed(probe_deepspeed() if installed else None, len(gpus), config, environ),
        check_extension_locks(environ),  # a lock left by a killed op build hangs every DeepSpeed launch
        check_default_config(environ, config_path),
        check_scaling(config, facts["cpu_count"]),
        check_hang_debugging(environ),
        check_multinode(facts["fingerprint"]),
    ]
    if probe_host:
        checks.append(check_reachable(probe_host, int(port)))
    return checks


def render_checks(checks: list[Check]) -> str:
    """One line per check, its fix indented below; a summary line last."""
    lines = []
    for c in checks:
        lines.append(f"[{c.status.upper():>4}] {c.name}: {c.detail}")
        if c.fix and c.status != "pass":
            lines.append(f"       fix: {c.fix}" if c.status != "info" else f"       how: {c.fix}")
    counts = {s: sum(c.status == s for c in checks) for s in STATUSES}
    lines.append("")
    lines.append(", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".")
    return "\n".join(lines)
