"""The training engine shared by the trainer plugins."""
