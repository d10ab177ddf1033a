"""Names shared across lorastack that must not pull in torch (the CLI reads them at start-up)."""

#: Formats lorastack reads and writes.
FORMATS = ("diffusers", "kohya")
#: Base-model families the probe can name.
FAMILIES = ("sd1", "sd2", "sdxl")
UNKNOWN = "unknown"
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL", UNKNOWN: "unknown"}
LAYER_KINDS = ("lora", "locon", "loha", "lokr", "full")
