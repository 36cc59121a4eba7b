"""GPU cards by name, with the memory the driver reports (``nvidia-smi --query-gpu=memory.total``).

Cards are sold in GB (10^9 bytes, rounded: "80GB", "141GB") while ``--gpu_memory_gb`` and the estimate
are in GiB (2^30): an "80GB" H100 reports 81,559 MiB = 79.6 GiB, an "80GB" A100 81,920 MiB = 80.0 GiB.
torch's ``get_device_properties().total_memory`` is a little lower still (the driver's own reservation).
"""

from __future__ import annotations

from disttune.errors import UserError

# name -> memory.total in MiB, as nvidia-smi prints it for the card
GPUS_MIB = {
    "H100-80GB": 81_559,  # NVIDIA H100 80GB HBM3 (SXM and PCIe); H800 the same
    "H100-NVL": 95_830,  # NVIDIA H100 NVL, sold as 94GB
    "H200": 143_771,  # NVIDIA H200, sold as 141GB
    "B200": 183_359,  # NVIDIA B200, sold as 180GB/192GB
    "A100-80GB": 81_920,  # NVIDIA A100-SXM4-80GB / A100 80GB PCIe
    "A100-40GB": 40_960,  # NVIDIA A100-SXM4-40GB / A100-PCIE-40GB
    "L40S": 46_068,  # sold as 48GB
    "A40": 46_068,
    "A10G": 23_028,  # AWS g5
    "L4": 23_034,
    "RTX-4090": 24_564,
    "V100-32GB": 32_768,
    "T4": 15_360,
}


def _key(name: str) -> str:
    return name.upper().replace("_", "-").replace(" ", "-").removeprefix("NVIDIA-")


_BY_KEY = {_key(name): name for name in GPUS_MIB}
_ALIASES = {
    "H100": "H100-80GB",
    "H800": "H100-80GB",
    "A100": "A100-80GB",
    "H100-94GB": "H100-NVL",
    "H200-141GB": "H200",
    "L40S-48GB": "L40S",
    "4090": "RTX-4090",
    "V100": "V100-32GB",
}


def gpu_memory_gib(name: str) -> tuple[str, float]:
    """``(card name, memory in GiB)`` for ``--gpu NAME``; a ``UserError`` listing the cards otherwise."""
    key = _key(name)
    card = _BY_KEY.get(key) or _ALIASES.get(key)
    if card is None:
        raise UserError(
            f"--gpu {name}: unknown card. Known: {', '.join(GPUS_MIB)}. Or give the memory the "
            f"driver reports with --gpu_memory_gb (GiB: nvidia-smi's MiB / 1024)."
        )
    return card, GPUS_MIB[card] / 1024
