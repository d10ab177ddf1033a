"""The lorastack command line."""
