"""Test support for lorastack and its plugins: offline tiny and full-size SD models, adapter files, fixtures.

The pytest fixtures live in :mod:`lorastack.testing.pytest_plugin`, which pytest loads automatically once lorastack
is installed. The builders are plain functions usable anywhere:

>>> from lorastack.testing.models import build_tiny_pipeline, save_tiny_pipeline, build_full_unet
"""
