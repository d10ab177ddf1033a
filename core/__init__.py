"""The runtime: base-model loading, adapter stacks, generation and the training engine.

``configs/`` holds the diffusers configs (JSON only) of the full-size SD1.5, SD2.1 and SDXL models.
"""
