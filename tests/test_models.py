import pytest
import torch
from torch import nn

from mlhelpers.models import ResidualBlock, conv4, mlp, resnet12


def test_conv4_on_omniglot_sized_inputs():
    features = conv4()
    assert features(torch.randn(3, 1, 28, 28)).shape == (3, 64)
    assert sum(isinstance(m, nn.Conv2d) for m in features.modules()) == 4
    head = conv4(out_features=5, hidden_channels=32)
    assert head(torch.randn(2, 1, 28, 28)).shape == (2, 5)


@pytest.mark.parametrize("norm, kind, running", [("batch", nn.BatchNorm2d, True), ("task", nn.BatchNorm2d, False)])
def test_conv4_norm_switch(norm, kind, running):
    bns = [m for m in conv4(norm=norm).modules() if isinstance(m, kind)]
    assert len(bns) == 4 and all(bn.track_running_stats == running for bn in bns)


def test_task_norm_uses_batch_statistics_in_eval_mode():
    model = conv4(norm="task").eval()
    x = torch.randn(8, 1, 28, 28)
    # With batch statistics, one image's features depend on the others in the batch.
    assert not torch.allclose(model(x)[:1], model(x[:1]))
    plain = conv4(norm="none").eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    torch.testing.assert_close(plain(x)[:1], plain(x[:1]))


def test_conv4_rejects_bad_options():
    with pytest.raises(ValueError, match="norm must be one of"):
        conv4(norm="layer")
    with pytest.raises(ValueError, match="too small"):
        conv4(out_features=5, image_size=8)


def test_mlp_matches_finn_regressor():
    net = mlp(1, 1)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(1, 40), (40, 40), (40, 1)]
    assert net(torch.randn(7, 1)).shape == (7, 1)
    with pytest.raises(ValueError, match="hidden must be at least 1"):
        mlp(1, 1, hidden=(0,))


def test_resnet12_has_the_standard_size_and_pools_any_input_to_its_last_width():
    standard = resnet12()
    assert sum(p.numel() for p in standard.parameters()) == pytest.approx(12.4e6, rel=0.01)  # as cited in few-shot work
    assert standard(torch.zeros(2, 1, 28, 28)).shape == (2, 640)
    narrow = resnet12(3, widths=(4, 8, 8, 16), norm="task")
    assert narrow(torch.rand(3, 3, 84, 84)).shape == (3, 16)
    assert not any(isinstance(m, nn.BatchNorm2d) and m.track_running_stats for m in narrow.modules())


def test_residual_block_adds_its_shortcut():
    torch.manual_seed(0)
    block = ResidualBlock(2, 4, norm="none")
    x = torch.randn(1, 2, 8, 8)
    expected = block.out(block.body(x) + block.shortcut(x))
    torch.testing.assert_close(block(x), expected)
    with torch.no_grad():
        block.shortcut[0].weight.zero_()
    assert not torch.allclose(block(x), expected)  # the shortcut is part of the output


def test_resnet12_rejects_a_wrong_number_of_widths():
    with pytest.raises(ValueError, match="widths must give the 4 blocks' widths, got 3"):
        resnet12(widths=(8, 16, 32))
