"""lorastack: a plugin-based LoRA adapter manager and model registry for Stable Diffusion."""

__version__ = "0.1.0"
