"""Layer records against the published formulas, on hand-built tensors (diffusers cannot load these kinds)."""

import pytest
import torch
from safetensors.torch import save_file

from lorastack.adapters import (
    FullLayer,
    InvalidAdapterError,
    LoHaLayer,
    LoKrLayer,
    LoRALayer,
    UnsupportedAdapterError,
    read_adapter,
    write_adapter,
)

g = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=g)


def test_lora_linear_and_scale():
    down, up = rnd(4, 10), rnd(6, 4)
    layer = LoRALayer(down, up, alpha=2.0)
    assert layer.kind == "lora" and layer.rank == 4 and layer.scale == 0.5
    torch.testing.assert_close(layer.delta(), 0.5 * up @ down)
    assert LoRALayer(down, up).scale == 1.0  # no alpha stored: alpha = rank


def test_locon_conv_and_tucker():
    down, up = rnd(4, 3, 3, 3), rnd(8, 4, 1, 1)
    conv = LoRALayer(down, up, alpha=8.0)
    assert conv.kind == "locon" and conv.natural_shape == (8, 3, 3, 3)
    expected = 2.0 * torch.einsum("or,rikl->oikl", up[:, :, 0, 0], down)
    torch.testing.assert_close(conv.delta(), expected)

    down1, mid, up1 = rnd(4, 3, 1, 1), rnd(4, 4, 3, 3), rnd(8, 4, 1, 1)
    tucker = LoRALayer(down1, up1, mid, alpha=4.0)
    assert tucker.kind == "locon" and tucker.natural_shape == (8, 3, 3, 3)
    # W[o, i, k, l] = Σ_m Σ_n up[o, m] · mid[m, n, k, l] · down[n, i]
    expected = torch.zeros(8, 3, 3, 3)
    for o in range(8):
        for i in range(3):
            expected[o, i] = sum(up1[o, m, 0, 0] * mid[m, n] * down1[n, i, 0, 0] for m in range(4) for n in range(4))
    torch.testing.assert_close(tucker.delta(), expected, atol=1e-5, rtol=1e-5)


def test_loha_linear_conv_and_tucker():
    w1a, w1b, w2a, w2b = rnd(6, 2), rnd(2, 10), rnd(6, 2), rnd(2, 10)
    loha = LoHaLayer(w1a, w1b, w2a, w2b, alpha=1.0)
    torch.testing.assert_close(loha.delta(), 0.5 * (w1a @ w1b) * (w2a @ w2b))
    # conv LoHa stores the kernel flattened into w1_b; the target weight gives the shape back
    w1b_conv, w2b_conv = rnd(2, 3 * 9), rnd(2, 3 * 9)
    conv = LoHaLayer(w1a, w1b_conv, w2a, w2b_conv, alpha=2.0)
    assert conv.natural_shape is None
    delta = conv.delta(shape=(6, 3, 3, 3))
    torch.testing.assert_close(delta, ((w1a @ w1b_conv) * (w2a @ w2b_conv)).reshape(6, 3, 3, 3))
    with pytest.raises(InvalidAdapterError, match="does not fit"):
        conv.delta(shape=(6, 4, 3, 3))
    # Tucker: rebuild_n = einsum('i j k l, j r, i p -> p r k l', t_n, w_n_b, w_n_a)
    t1, t2 = rnd(2, 2, 3, 3), rnd(2, 2, 3, 3)
    a1, b1, a2, b2 = rnd(2, 6), rnd(2, 3), rnd(2, 6), rnd(2, 3)
    tucker = LoHaLayer(a1, b1, a2, b2, t1, t2, alpha=2.0)
    r1 = torch.einsum("ijkl,jr,ip->prkl", t1, b1, a1)
    r2 = torch.einsum("ijkl,jr,ip->prkl", t2, b2, a2)
    assert tucker.natural_shape == (6, 3, 3, 3)
    torch.testing.assert_close(tucker.delta(), r1 * r2)


def test_lokr_variants():
    w1, w2 = rnd(2, 3), rnd(4, 5)
    full = LoKrLayer(w1=w1, w2=w2, alpha=7.0)
    assert full.rank is None and full.scale == 1.0  # both factors full: alpha is ignored (LyCORIS)
    torch.testing.assert_close(full.delta(), torch.kron(w1, w2))
    w2a, w2b = rnd(4, 2), rnd(2, 5)
    decomposed = LoKrLayer(w1=w1, w2_a=w2a, w2_b=w2b, alpha=1.0)
    assert decomposed.rank == 2 and decomposed.natural_shape == (8, 15)
    torch.testing.assert_close(decomposed.delta(), 0.5 * torch.kron(w1, w2a @ w2b))
    w1a, w1b = rnd(2, 3), rnd(3, 3)
    both = LoKrLayer(w1_a=w1a, w1_b=w1b, w2_a=w2a, w2_b=w2b, alpha=4.0)
    torch.testing.assert_close(both.delta(), 2.0 * torch.kron(w1a @ w1b, w2a @ w2b))  # w2's rank sets the scale
    w2conv = rnd(4, 5, 3, 3)
    conv = LoKrLayer(w1=w1, w2=w2conv)
    assert conv.natural_shape == (8, 15, 3, 3)
    torch.testing.assert_close(conv.delta(), torch.kron(w1[:, :, None, None], w2conv))
    t2 = rnd(2, 2, 3, 3)
    w2a_t, w2b_t = rnd(2, 4), rnd(2, 5)
    tucker = LoKrLayer(w1=w1, w2_a=w2a_t, w2_b=w2b_t, t2=t2, alpha=2.0)
    rebuilt = torch.einsum("ijkl,jr,ip->prkl", t2, w2b_t, w2a_t)
    torch.testing.assert_close(tucker.delta(), torch.kron(w1[:, :, None, None], rebuilt.contiguous()))


def _dora_reference(weight, delta, magnitude, per_output):
    merged = weight + delta
    if per_output:
        norm = torch.stack([merged[o].norm() for o in range(merged.shape[0])]).reshape(-1, 1)
        return merged * magnitude.reshape(-1, 1) / norm - weight
    norm = torch.stack([merged[:, i].norm() for i in range(merged.shape[1])]).reshape(1, -1)
    return merged * magnitude.reshape(1, -1) / norm - weight


@pytest.mark.parametrize("per_output", [True, False])
def test_dora_both_axes(per_output):
    weight, down, up = rnd(6, 10), rnd(4, 10), rnd(6, 4)
    magnitude = rnd(6).abs() + 0.5 if per_output else rnd(1, 10).abs() + 0.5
    layer = LoRALayer(down, up, alpha=2.0, dora_scale=magnitude)
    assert layer.kind_label == "lora+dora"
    expected = _dora_reference(weight, 0.5 * up @ down, magnitude, per_output)
    torch.testing.assert_close(layer.delta(weight), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="base weight"):
        layer.delta()


def test_dora_on_loha():
    weight = rnd(6, 10)
    w1a, w1b, w2a, w2b = rnd(6, 2), rnd(2, 10), rnd(6, 2), rnd(2, 10)
    magnitude = rnd(1, 10).abs() + 0.5
    layer = LoHaLayer(w1a, w1b, w2a, w2b, alpha=2.0, dora_scale=magnitude)
    expected = _dora_reference(weight, (w1a @ w1b) * (w2a @ w2b), magnitude, per_output=False)
    torch.testing.assert_close(layer.delta(weight), expected, atol=1e-5, rtol=1e-5)


def test_full_diff():
    diff, diff_b = rnd(6, 10), rnd(6)
    layer = FullLayer(diff, diff_b)
    torch.testing.assert_close(layer.delta(), diff)
    torch.testing.assert_close(layer.bias_delta(), diff_b)


@pytest.mark.parametrize(
    "make, problem",
    [
        (lambda: LoRALayer(rnd(4, 10), rnd(6, 3)), "rank mismatch"),
        (lambda: LoRALayer(rnd(4, 10), rnd(6, 4, 1, 1)), "lora_up has shape"),
        (lambda: LoRALayer(rnd(4, 10).to(torch.int32), rnd(6, 4)), "floating point"),
        (lambda: LoRALayer(torch.full((4, 10), float("nan")), rnd(6, 4)), "NaN"),
        (lambda: LoHaLayer(rnd(6, 2), rnd(2, 10), rnd(5, 2), rnd(2, 10)), "different shapes"),
        (lambda: LoKrLayer(w1=rnd(2, 3)), "lokr_w2"),
        (lambda: FullLayer(rnd(6, 10), rnd(5)), "diff_b"),
    ],
)
def test_inconsistent_tensors_are_typed_errors(make, problem):
    with pytest.raises(InvalidAdapterError, match=problem):
        make().validate()


def _lycoris_file(path):
    """A LyCORIS-style kohya file with one layer of each kind, keyed like LyCORIS writes them."""
    blocks = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1"
    sd = {
        f"{blocks}_to_q.hada_w1_a": rnd(32, 2),
        f"{blocks}_to_q.hada_w1_b": rnd(2, 32),
        f"{blocks}_to_q.hada_w2_a": rnd(32, 2),
        f"{blocks}_to_q.hada_w2_b": rnd(2, 32),
        f"{blocks}_to_q.alpha": torch.tensor(1.0),
        f"{blocks}_to_k.lokr_w1": rnd(4, 4),
        f"{blocks}_to_k.lokr_w2_a": rnd(8, 2),
        f"{blocks}_to_k.lokr_w2_b": rnd(2, 8),
        f"{blocks}_to_k.alpha": torch.tensor(2.0),
        f"{blocks}_to_v.lora_down.weight": rnd(2, 32),
        f"{blocks}_to_v.lora_up.weight": rnd(32, 2),
        f"{blocks}_to_v.dora_scale": rnd(1, 32).abs(),
        f"{blocks}_to_v.alpha": torch.tensor(2.0),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight": rnd(2, 32, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight": rnd(2, 2, 3, 3),
        "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight": rnd(32, 2, 1, 1),
        "lora_unet_down_blocks_0_resnets_0_conv1.alpha": torch.tensor(1.0),
        "lora_unet_down_blocks_0_resnets_0_conv2.diff": rnd(32, 32, 3, 3),
    }
    save_file(sd, str(path), metadata={"ss_network_module": "lycoris.kohya"})
    return sd


def test_lycoris_file_reads_every_kind_and_round_trips_through_kohya(tmp_path):
    sd = _lycoris_file(tmp_path / "lycoris.safetensors")
    adapter = read_adapter(tmp_path / "lycoris.safetensors")
    assert adapter.kinds() == {"full": 1, "locon": 1, "loha": 1, "lokr": 1, "lora+dora": 1}
    q = adapter.layers["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"]
    blocks = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1"
    assert torch.equal(q.w1_a, sd[f"{blocks}_to_q.hada_w1_a"]) and q.alpha == 1.0

    out = write_adapter(adapter, tmp_path / "again.safetensors", "kohya")
    again = read_adapter(out)
    assert set(again.layers) == set(adapter.layers)
    for name, layer in adapter.layers.items():
        other = again.layers[name]
        assert type(other) is type(layer) and other.alpha == layer.alpha
        assert layer.tensors().keys() == other.tensors().keys()
        assert all(torch.equal(t, other.tensors()[k]) for k, t in layer.tensors().items())


def test_diffusers_format_refuses_lycoris_kinds(tmp_path):
    _lycoris_file(tmp_path / "lycoris.safetensors")
    adapter = read_adapter(tmp_path / "lycoris.safetensors")
    with pytest.raises(UnsupportedAdapterError, match=r"loha.*lokr|--to kohya"):
        write_adapter(adapter, tmp_path / "out.safetensors", "diffusers")
    assert not (tmp_path / "out.safetensors").exists()
