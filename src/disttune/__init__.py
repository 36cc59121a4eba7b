"""disttune: predictable distributed fine-tuning on Hugging Face Accelerate + DeepSpeed."""

__version__ = "0.1.0"
