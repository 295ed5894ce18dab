"""The velocity rule against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neqtune.trainables import VelocityTracker
from neqtune.trainables.policies.velocity import output_change


def test_phi_cosine_rules() -> None:
    # [N=1, C=5, L=2]: identical, opposite, orthogonal, both zero, one zero
    before = torch.tensor([[[1.0, 2.0], [1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    after = torch.tensor([[[2.0, 4.0], [-3.0, 0.0], [0.0, 5.0], [0.0, 0.0], [1.0, 1.0]]])
    assert output_change(after, before).tolist() == pytest.approx([0.0, 2.0, 1.0, 0.0, 1.0])


def test_phi_is_a_mean_over_samples() -> None:
    before = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    after = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert output_change(after, before).tolist() == pytest.approx([0.5])


class RowNet(nn.Module):
    """A 1x1 conv from 2 channels to 2 neurons; on the probe image its output over
    the two positions is exactly the neuron's weight row, so cosines are set by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def set_rows(self, rows: list[list[float]]) -> None:
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(rows).view(2, 2, 1, 1))


PROBE = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2 channels, 1, 2 positions]


def test_velocity_recurrence_over_three_epochs() -> None:
    net = RowNet()
    net.set_rows([[1, 0], [1, 0]])
    tracker = VelocityTracker(net, mu=0.5)
    assert tracker.observe([PROBE]) is None  # baseline
    # neuron 0: phi = 1 (orthogonal), 0 (same), 1 - 1/sqrt2; neuron 1: phi = 0, 2 (flipped), 1 (to zero)
    steps = [[[0, 1], [1, 0]], [[0, 1], [-1, 0]], [[1, 1], [0, 0]]]
    got = []
    for rows in steps:
        net.set_rows(rows)
        velocity = tracker.observe([PROBE])
        assert velocity is not None
        got.append(velocity["conv"].tolist())
    # by hand, mu = 0.5: v_t = s_{t-1} - d_t, s_t = mu v_t + d_t, d_t = phi_t - phi_{t-1}
    # neuron 0: d = 1, -1, 0.2929 -> v = -1, 1.5, -0.25 - 0.2929; neuron 1: d = 0, 2, -1 -> v = 0, -2, 2
    expected = [[-1.0, 0.0], [1.5, -2.0], [-0.25 - (1 - 1 / math.sqrt(2)), 2.0]]
    for g, e in zip(got, expected, strict=True):
        assert g == pytest.approx(e, abs=1e-6)
    assert got[0][0] == -1.0 and isinstance(got[0][0], float)


def test_velocity_dtype_and_shapes(small_net: nn.Module) -> None:
    tracker = VelocityTracker(small_net)
    batches = [torch.randn(2, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    tracker.observe(batches)
    velocity = tracker.observe(batches)
    assert velocity is not None
    assert {k: tuple(v.shape) for k, v in velocity.items()} == {"a": (4,), "b": (4,), "c": (8,)}
    assert all(v.dtype == torch.float32 for v in velocity.values())
    # unchanged weights: no change, so phi = 0 and velocity 0
    assert all(torch.allclose(v, torch.zeros_like(v), atol=1e-6) for v in velocity.values())


def test_batches_may_be_pairs_and_split_freely() -> None:
    net = RowNet()
    net.set_rows([[1, 0], [0, 1]])
    two = torch.cat([PROBE, -PROBE])
    whole, split = VelocityTracker(net), VelocityTracker(net)
    whole.observe([two])
    split.observe([(PROBE, torch.tensor([0])), (-PROBE, torch.tensor([1]))])
    net.set_rows([[0, 1], [1, 1]])
    a, b = whole.observe([two]), split.observe([(PROBE, 0), (-PROBE, 1)])
    assert a is not None and b is not None
    assert torch.allclose(a["conv"], b["conv"])


def test_observe_restores_mode_and_hooks_can_be_removed(small_net: nn.Module) -> None:
    tracker = VelocityTracker(small_net)
    small_net.train()
    tracker.observe([torch.randn(2, 3, 8, 8)])
    assert small_net.training
    small_net.eval()
    tracker.observe([torch.randn(2, 3, 8, 8)])
    assert not small_net.training
    assert len(small_net.a._forward_hooks) == 1
    tracker.remove()
    assert all(len(m._forward_hooks) == 0 for m in (small_net.a, small_net.b, small_net.c))
    with pytest.raises(RuntimeError):
        tracker.observe([torch.randn(2, 3, 8, 8)])


def test_observe_uses_eval_mode_batchnorm_statistics(small_net: nn.Module) -> None:
    running_before = small_net.bn.running_mean.clone()
    tracker = VelocityTracker(small_net)
    small_net.train()
    tracker.observe([torch.randn(4, 3, 8, 8) + 3])
    assert torch.equal(small_net.bn.running_mean, running_before)


def test_state_dict_round_trip() -> None:
    net = RowNet()
    net.set_rows([[1, 0], [1, 0]])
    first = VelocityTracker(net)
    first.observe([PROBE])
    net.set_rows([[0, 1], [1, 0]])
    first.observe([PROBE])
    second = VelocityTracker(net)
    second.load_state_dict(first.state_dict())
    net.set_rows([[1, 1], [-1, 0]])
    a, b = first.observe([PROBE]), second.observe([PROBE])
    assert a is not None and b is not None
    assert torch.equal(a["conv"], b["conv"])
