"""Supervised fine-tuning that runs under every accelerate strategy (DDP, ZeRO-1/2/3, FSDP2, 1 GPU, CPU).

    accelerate launch --config_file accelerate_configs/multi_gpu_ddp.yaml 07_distributed_training.py

With no arguments it fine-tunes the built-in tiny model on the built-in dataset; see
``python 07_distributed_training.py --help`` for every option. The code lives in ``disttune.train``.
"""

import sys

from disttune.train.main import main

if __name__ == "__main__":
    sys.exit(main())
