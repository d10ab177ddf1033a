"""A base's own settings (core/base_settings.py) and the default device (core/devices.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from lorastack.core.base import shipped_config_dir
from lorastack.core.base_settings import (
    base_settings,
    folder_settings,
    resolution_warning,
    warn_resolution,
)
from lorastack.core.devices import best_device
from lorastack.core.errors import BaseModelError


def test_the_toy_base_draws_at_64_px_with_its_recommended_guidance():
    settings = base_settings("toy")
    assert (settings.resolution, settings.resolution_from) == (64, "model config")
    assert (settings.guidance, settings.guidance_from) == (1.5, "lorastack.json")


@pytest.mark.parametrize(("family", "resolution"), [("sd1", 512), ("sd2", 768), ("sdxl", 1024)])
def test_shipped_family_configs_give_their_native_resolution(family, resolution):
    settings = folder_settings(shipped_config_dir(family))
    assert (settings.family, settings.resolution) == (family, resolution)


def test_lorastack_json_overrules_the_configs(tmp_path):
    folder = tmp_path / "base"
    shutil.copytree(shipped_config_dir("sd1"), folder)
    (folder / "lorastack.json").write_text(json.dumps({"recommended": {"resolution": 256, "guidance": 3}}))
    settings = folder_settings(folder)
    assert (settings.resolution, settings.guidance, settings.resolution_from) == (256, 3.0, "lorastack.json")


@pytest.mark.parametrize("bad", [{"resolution": 100}, {"resolution": True}, {"guidance": 0}, {"guidance": "7"}])
def test_a_bad_recommended_setting_is_one_line_naming_it(tmp_path, bad):
    (tmp_path / "lorastack.json").write_text(json.dumps({"recommended": bad}))
    with pytest.raises(BaseModelError, match=next(iter(bad))) as caught:
        folder_settings(tmp_path)
    assert "\n" not in str(caught.value)


def test_unknown_bases_fall_back_to_their_family():
    assert base_settings("stabilityai/stable-diffusion-xl-base-1.0").resolution == 1024
    assert base_settings("someone/flux-dev-copy").resolution == 1024
    assert base_settings(None).resolution == 512


def test_a_resolution_far_from_the_bases_is_one_warning_line(capsys):
    toy = base_settings("toy")
    assert resolution_warning(64, toy) is None and resolution_warning(128, toy) is None
    assert warn_resolution(512, toy)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "512" in err and "64" in err
    assert not warn_resolution(96, toy)
    assert warn_resolution(16, toy)


def test_best_device_is_what_torch_sees(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert best_device() == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert best_device() == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert best_device() == "cpu"


def test_a_loaded_base_and_its_folder_read_one_lorastack_json(tiny_sd1_dir, tmp_path):
    from lorastack.core.base import load_base
    from lorastack.core.base_settings import pipe_settings

    folder = tmp_path / "base"
    shutil.copytree(tiny_sd1_dir, folder)
    (folder / "lorastack.json").write_text(json.dumps({"recommended": {"resolution": 48, "guidance": 2.5}}))
    pipe = load_base(folder)  # the loader accepts every setting the settings reader knows
    assert (pipe_settings(pipe).resolution, pipe_settings(pipe).guidance) == (48, 2.5)
    assert (folder_settings(folder).resolution, folder_settings(folder).guidance) == (48, 2.5)
    (folder / "lorastack.json").write_text(" " * (2 << 20))
    with pytest.raises(BaseModelError, match="at most 1 MiB"):
        folder_settings(folder)
