"""Names shared across lorastack that must not pull in torch (the CLI reads them at start-up)."""

#: Formats lorastack reads and writes ("bfl": the original FLUX.1 / SD3 layout, ComfyUI's native keys).
FORMATS = ("diffusers", "kohya", "bfl")
#: Base-model families the probe can name.
FAMILIES = ("sd1", "sd2", "sdxl", "flux", "sd3")
UNKNOWN = "unknown"
FAMILY_NAMES = {
    "sd1": "SD 1.x",
    "sd2": "SD 2.x",
    "sdxl": "SDXL",
    "flux": "FLUX.1",
    "sd3": "SD 3.x",
    UNKNOWN: "unknown",
}
LAYER_KINDS = ("lora", "locon", "loha", "lokr", "full")
