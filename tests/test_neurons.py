from __future__ import annotations

import pytest
import torch
from torch import nn

from neqtune.trainables import conv_neuron_params
from neqtune.trainables.budget.units import conv_flops, layer_flops, mask_stats, total_params
from neqtune.trainables.config import ModelConfig
from neqtune.trainables.models.registry import build_model


def test_neuron_params_count_groups_and_bias(small_net: nn.Module) -> None:
    params = conv_neuron_params(small_net)
    assert list(params) == ["a", "b", "c"]
    assert params["a"].dtype == torch.long
    assert params["a"].tolist() == [3 * 3 * 3 + 1] * 4  # bias adds one
    assert params["b"].tolist() == [1 * 3 * 3] * 4  # depthwise: in/groups = 1
    assert params["c"].tolist() == [4] * 8
    assert total_params(params) == 4 * 28 + 4 * 9 + 8 * 4


@pytest.mark.parametrize(("name", "expected"), [("mbv2", 2_189_760), ("resnet18", 11_166_912)])
def test_conv_totals_match_the_study(name: str, expected: int) -> None:
    assert total_params(conv_neuron_params(build_model(ModelConfig(name=name), 10))) == expected


def test_conv_flops_formula() -> None:
    conv = nn.Conv2d(6, 4, 3, groups=2, bias=True)
    # kh*kw*(Cin/groups)*Cout*H*W + Cout*H*W
    assert conv_flops(conv, (5, 7)) == 3 * 3 * 3 * 4 * 5 * 7 + 4 * 5 * 7


def test_mask_stats_counts_by_hand(small_net: nn.Module) -> None:
    params = conv_neuron_params(small_net)
    flops = layer_flops(small_net, torch.zeros(1, 3, 8, 8))
    masks = {
        "a": torch.tensor([True, False, False, False]),
        "b": torch.zeros(4, dtype=torch.bool),
        "c": torch.ones(8, dtype=torch.bool),
    }
    stats = mask_stats(masks, params, flops)
    assert stats.neurons_total == 16
    assert stats.neurons_updated == 9
    assert stats.params_updated == 28 + 8 * 4
    assert stats.frozen_pct == pytest.approx(100 * 7 / 16)
    assert stats.layer_frozen_pct == [75.0, 100.0, 0.0]
    assert flops["a"] == 3 * 3 * 3 * 4 * 64 + 4 * 64
    assert stats.layer_flops_saved == [pytest.approx(flops["a"] * 0.75), pytest.approx(flops["b"]), 0.0]
    assert stats.flops_saved_pct == pytest.approx(100 * (0.75 * flops["a"] + flops["b"]) / sum(flops.values()))
