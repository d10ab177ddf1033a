"""lorastack: a plugin-based LoRA adapter manager and model registry for Stable Diffusion."""

from lorastack.errors import LorastackError

__version__ = "0.1.0"

__all__ = ["LorastackError", "__version__"]
