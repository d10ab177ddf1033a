"""A pipeline's identity (class-image caches are keyed by it): the files' digest, or its weights' when in memory."""

import torch

from lorastack.core.base import base_info, load_base
from lorastack.core.recipe import base_digest, model_digest
from lorastack.testing.models import load_pipeline


def test_a_loaded_base_is_named_by_its_files_and_a_built_one_by_its_weights(tiny_sd1_dir):
    loaded = load_base(tiny_sd1_dir)
    assert model_digest(loaded) == base_digest(base_info(loaded)) and model_digest(loaded).startswith("sha256:")
    built = load_pipeline(tiny_sd1_dir)  # plain diffusers: lorastack knows no files for it
    digest = model_digest(built)
    assert digest.startswith("weights:") and model_digest(load_pipeline(tiny_sd1_dir)) == digest
    with torch.no_grad():
        next(iter(built.unet.state_dict().values())).add_(1.0)  # other weights, another identity
    assert model_digest(built) != digest
