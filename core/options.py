"""Choices the runtime accepts, as plain data (the CLI builds its options from them without importing torch)."""

DTYPE_NAMES = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda", "mps")

#: scheduler name → (diffusers class, extra config)
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {}),
    "dpm++2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "flow_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_heun": ("FlowMatchHeunDiscreteScheduler", {}),
}
#: The schedulers for rectified-flow bases (Flux, SD3); the others are for the noise-predicting UNet families.
FLOW_SCHEDULERS = ("flow_euler", "flow_heun")
