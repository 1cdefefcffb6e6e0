"""H2ASeg: shapes at any size, deep supervision, variants, attention paths, TAMW algebra, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from h2aseg.models import build_model
from h2aseg.models.attention import BDSA, window_partition, window_reverse
from h2aseg.models.blocks import GroupPReLU, instance_norm, prelu_conv
from h2aseg.models.h2aseg import H2ASeg
from h2aseg.models.tamw import TAMW

TINY = (2, 4, 8, 16, 32)
SIZE = (32, 32, 16)
VARIANTS = ("h2aseg", "h2aseg-baseline", "h2aseg-mcsa", "h2aseg-tamw")


def tiny_model(**kwargs: object) -> H2ASeg:
    torch.manual_seed(0)
    return H2ASeg(channels=TINY, **kwargs)


def inputs(*size: int, batch: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 2, *size, generator=torch.Generator().manual_seed(seed))


def test_odd_size_is_padded_and_cropped_back() -> None:
    model = tiny_model().eval()
    assert model.size_multiple == (32, 32, 16)
    with torch.no_grad():
        logits = model(inputs(70, 90, 50))
    assert logits.shape == (1, 2, 70, 90, 50)
    assert logits.is_contiguous()


def test_padding_is_edge_replication_split_over_both_ends() -> None:
    model = tiny_model().eval()
    x = inputs(30, 27, 13)
    # To (32, 32, 16): extra (2, 5, 3), the smaller half before.
    padded = F.pad(x, (1, 2, 2, 3, 1, 1), mode="replicate")
    with torch.no_grad():
        logits = model(x)
        reference = model(padded)[:, :, 1:31, 2:29, 1:14]
    torch.testing.assert_close(logits, reference)


def test_forward_deep_five_heads_at_input_size_and_forward_is_the_finest() -> None:
    model = tiny_model().eval()
    x = inputs(*SIZE, batch=2)
    with torch.no_grad():
        heads = model.forward_deep(x)
        finest = model(x)
    assert len(heads) == 5
    assert all(head.shape == (2, 2, *SIZE) for head in heads)
    torch.testing.assert_close(finest, heads[0])


def test_batch_elements_are_independent() -> None:
    model = tiny_model().eval()
    x = inputs(*SIZE, batch=2)
    with torch.no_grad():
        both = model(x)
        second = model(x[1:])
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, channels=TINY).train()
    heads = model.forward_deep(inputs(*SIZE))
    sum(w * head.square().mean() for w, head in zip((5, 4, 3, 2, 1), heads, strict=True)).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_variants_set_the_ablation_switches() -> None:
    switches = {
        name: (m.use_mcsa, m.use_tamw) for name in VARIANTS for m in [build_model(name, channels=TINY)]
    }
    assert switches == {
        "h2aseg": (True, True),
        "h2aseg-baseline": (False, False),
        "h2aseg-mcsa": (True, False),
        "h2aseg-tamw": (False, True),
    }
    assert build_model("h2aseg-baseline", channels=TINY).size_multiple == (16, 16, 16)
    with pytest.raises(ValueError, match="use_mcsa=False"):
        build_model("h2aseg-baseline", use_mcsa=True)


def test_default_parameter_count_matches_the_official_network() -> None:
    assert sum(p.numel() for p in H2ASeg().parameters()) == 7_164_869


def test_sdpa_and_naive_attention_agree() -> None:
    x = inputs(*SIZE)
    outputs = []
    for impl in ("sdpa", "naive"):
        model = tiny_model(attention_impl=impl).eval()
        with torch.no_grad():
            outputs.append(model.forward_deep(x))
    for sdpa, naive in zip(*outputs, strict=True):
        torch.testing.assert_close(sdpa, naive, atol=1e-5, rtol=1e-5)


def test_bdsa_sdpa_and_naive_gradients_agree() -> None:
    x = torch.randn(2, 16, 8, 8, 4, generator=torch.Generator().manual_seed(2))
    grads = []
    for impl in ("sdpa", "naive"):
        torch.manual_seed(0)
        bdsa = BDSA(8, channel_scale=4, window=(4, 4, 2), attention_impl=impl).train()
        bdsa(x).square().sum().backward()
        grads.append([p.grad for p in bdsa.parameters()])
    for sdpa, naive in zip(*grads, strict=True):
        torch.testing.assert_close(sdpa, naive, atol=1e-4, rtol=1e-4)


def test_checkpointed_attention_gives_the_same_dropout_and_gradients() -> None:
    x = torch.randn(1, 16, 8, 8, 4, generator=torch.Generator().manual_seed(3))
    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        bdsa = BDSA(
            8, channel_scale=4, window=(4, 4, 2), dropout=0.5, checkpoint_attention=checkpointed
        ).train()
        torch.manual_seed(1)
        out = bdsa(x)
        out.square().sum().backward()
        results.append([out.detach(), *(p.grad for p in bdsa.parameters())])
    for plain, checkpointed in zip(*results, strict=True):
        torch.testing.assert_close(plain, checkpointed)


def test_bdsa_attends_each_window_alone() -> None:
    torch.manual_seed(0)
    bdsa = BDSA(4, channel_scale=2, window=(2, 2, 2)).eval()
    x = torch.randn(1, 8, 4, 4, 2)
    changed = x.clone()
    changed[:, :, 2:, 2:, :] += 1.0  # the last of the four windows
    with torch.no_grad():
        out, out_changed = bdsa(x), bdsa(changed)
    torch.testing.assert_close(out[:, :, :2], out_changed[:, :, :2])
    assert not torch.allclose(out[:, :, 2:, 2:], out_changed[:, :, 2:, 2:])


def test_window_partition_round_trip() -> None:
    x = torch.arange(2 * 3 * 4 * 6 * 2, dtype=torch.float32).reshape(2, 3, 4, 6, 2)
    tokens = window_partition(x, (2, 3, 1))
    assert tokens.shape == (2 * 2 * 2 * 2, 6, 3)
    torch.testing.assert_close(tokens[0, :, 0], x[0, 0, :2, :3, 0].flatten())
    torch.testing.assert_close(window_reverse(tokens, (2, 3, 1), (2, 4, 6, 2)), x)


def test_tamw_equals_the_official_formula() -> None:
    torch.manual_seed(0)
    tamw = TAMW(3, 4)
    ct, pet, f = torch.randn(2, 3, 4, 4, 2), torch.randn(2, 3, 4, 4, 2), torch.randn(2, 4, 4, 4, 2)
    logits = torch.randn(2, 2, 2, 2, 1)
    p = torch.softmax(F.interpolate(logits, scale_factor=2, mode="trilinear", align_corners=True), dim=1)

    def weighted(mlp: torch.nn.Module, parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
        weights = mlp(torch.cat([part.mean(dim=(2, 3, 4)) for part in parts], dim=1))[:, :, None, None, None]
        return torch.cat(parts, dim=1) * weights

    fore = weighted(tamw.fore, (ct * p[:, 1:], pet * p[:, 1:], f))
    back = weighted(tamw.back, (ct * p[:, :1], pet * p[:, :1], f))
    expected = torch.cat((ct, pet, f), dim=1) + fore - back
    torch.testing.assert_close(tamw(torch.cat((ct, pet), dim=1), f, logits), expected)


def test_tamw_sigmoid_uses_one_minus_sigmoid_as_background() -> None:
    torch.manual_seed(0)
    tamw = TAMW(2, 2, output_activation="sigmoid")
    enc, f, logit = torch.randn(1, 4, 2, 2, 2), torch.randn(1, 2, 2, 2, 2), torch.randn(1, 1, 1, 1, 1)
    fg = torch.sigmoid(logit).item()  # a 1-voxel logit up-samples to a constant
    enc_means, f_means = enc.mean(dim=(2, 3, 4)), f.mean(dim=(2, 3, 4))
    w_fore = tamw.fore(torch.cat((enc_means * fg, f_means), dim=1))[:, :, None, None, None]
    w_back = tamw.back(torch.cat((enc_means * (1 - fg), f_means), dim=1))[:, :, None, None, None]
    enc_factor = 1 + w_fore[:, :4] * fg - w_back[:, :4] * (1 - fg)
    expected = torch.cat((enc * enc_factor, f * (1 + w_fore[:, 4:] - w_back[:, 4:])), dim=1)
    torch.testing.assert_close(tamw(enc, f, logit), expected)


def test_tamw_paper_mask_weights_the_whole_concatenation() -> None:
    torch.manual_seed(0)
    tamw = TAMW(3, 4, mask="all")
    features = torch.randn(2, 10, 4, 4, 2)
    logits = torch.randn(2, 2, 2, 2, 1)
    p = torch.softmax(F.interpolate(logits, scale_factor=2, mode="trilinear", align_corners=True), dim=1)

    def weighted(mlp: torch.nn.Module, masked: torch.Tensor) -> torch.Tensor:
        return masked * mlp(masked.mean(dim=(2, 3, 4)))[:, :, None, None, None]

    expected = features + weighted(tamw.fore, features * p[:, 1:]) - weighted(tamw.back, features * p[:, :1])
    torch.testing.assert_close(tamw(features[:, :6], features[:, 6:], logits), expected)


def test_paper_window_merge_pools_whole_windows() -> None:
    model = tiny_model(window_merge="window")
    assert model.interaction[0].merge.kernel_size == (8, 8, 4)
    assert model.interaction[0].merge.stride == (8, 8, 4)
    with torch.no_grad():
        assert model.eval()(inputs(*SIZE)).shape == (1, 2, *SIZE)


def test_prelu_conv_recomputes_the_activation_with_identical_gradients() -> None:
    torch.manual_seed(0)
    act, conv = GroupPReLU(3, groups=2), torch.nn.Conv3d(6, 4, 3, padding=1, groups=2)
    with torch.no_grad():
        act.weight.copy_(torch.tensor([0.1, 0.4]))
    x = torch.randn(2, 6, 5, 4, 3, requires_grad=True)
    params = [x, act.weight, conv.weight, conv.bias]
    out = prelu_conv(x, act, conv)
    grad = torch.randn_like(out)
    fused = torch.autograd.grad(out, params, grad)
    plain = torch.autograd.grad(conv(act(x)), params, grad)
    for ours, reference in zip(fused, plain, strict=True):
        torch.testing.assert_close(ours, reference)

    x_bf16 = x.detach().bfloat16().requires_grad_()  # as the output of an autocast layer
    params = [x_bf16, act.weight, conv.weight, conv.bias]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = (prelu_conv(x_bf16, act, conv), conv(act(x_bf16)))
    mixed, reference = (torch.autograd.grad(out.float().sum(), params) for out in outputs)  # outside autocast
    for ours, expected in zip(mixed, reference, strict=True):
        torch.testing.assert_close(ours, expected)

    source = x.detach() * 1.0
    out = prelu_conv(source.requires_grad_(), act, conv)
    with torch.no_grad():
        source.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()


def test_instance_norm_matches_pytorch_and_keeps_channels_last() -> None:
    x = (torch.randn(2, 3, 6, 5, 4, dtype=torch.float64) * 0.5 + 3.0).requires_grad_()
    assert torch.autograd.gradcheck(instance_norm, (x,))
    channels_last = x.detach().to(memory_format=torch.channels_last_3d).float()
    normed = instance_norm(channels_last)
    assert normed.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(normed, F.instance_norm(x.detach()).float(), atol=1e-6, rtol=1e-5)


def test_concat_fusion_and_sigmoid_options() -> None:
    x = inputs(*SIZE)
    concat = tiny_model(bdsa_fusion="concat").train()
    sum(head.mean() for head in concat.forward_deep(x)).backward()
    assert concat.interaction[0].intra.fuse.weight.grad is not None

    sigmoid = tiny_model(output_activation="sigmoid").eval()
    assert (sigmoid.out_channels, sigmoid.output_activation) == (1, "sigmoid")
    with torch.no_grad():
        assert sigmoid(x).shape == (1, 1, *SIZE)
    with pytest.raises(ValueError, match="out_channels=1"):
        H2ASeg(out_channels=2, output_activation="sigmoid")


def test_multiclass_softmax_runs() -> None:
    model = tiny_model(out_channels=3).eval()
    with torch.no_grad():
        assert model(inputs(*SIZE)).shape == (1, 3, *SIZE)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.randn(2, 32, 32, 16), r"received shape \(2, 32, 32, 16\)"),
        (torch.randn(1, 3, 32, 32, 16), r"\(3 channels\)"),
        (torch.ones(1, 2, 32, 32, 16, dtype=torch.int64), "not floating point"),
    ],
)
def test_bad_input_is_a_value_error(bad: torch.Tensor, message: str) -> None:
    with pytest.raises(ValueError, match=r"H2ASeg expects a float tensor \(B, 2, X, Y, Z\)") as error:
        tiny_model()(bad)
    assert error.match(message)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": (2, 4, 8)}, "5 positive integers"),
        ({"window_size": (8, 8)}, "3 positive integers"),
        ({"output_activation": "relu"}, "output_activation must be one of 'softmax', 'sigmoid'"),
        ({"out_channels": 1}, "out_channels >= 2"),
        ({"bdsa_fusion": "sum", "use_mcsa": False}, "bdsa_fusion"),
        ({"attention_impl": "flash"}, "attention_impl"),
        ({"window_merge": "mean"}, "window_merge"),
        ({"tamw_mask": "decoder", "use_tamw": False}, "tamw_mask"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        H2ASeg(**{"channels": TINY, **kwargs})
