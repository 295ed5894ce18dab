"""nn.Linear as a budgeted layer: its costs (TraDy's SwinT total), what the engine computes and keeps, norms, velocity."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml
from torch import nn

from neqtune.search.cli import main
from neqtune.trainables.budget.costs import channel_costs, mask_memory, network_memory
from neqtune.trainables.budget.resolve import build_budget
from neqtune.trainables.budget.schemes import su_update_mask
from neqtune.trainables.budget.units import (
    LinearCalls,
    Masks,
    Unit,
    budgeted_layers,
    frozen_bias_elements,
    frozen_weight_elements,
    unit_length,
)
from neqtune.trainables.config import BudgetConfig, ConfigError, TrialConfig
from neqtune.trainables.models import registry as model_registry
from neqtune.trainables.models.registry import register_model
from neqtune.trainables.policies.velocity import VelocityTracker
from neqtune.trainables.trainer import BudgetedRun, run_epoch
from neqtune.trainables.update.engine import SparseUpdateEngine, parameter_masks
from neqtune.trainables.update.optim import MaskedSGD

UNITS: tuple[Unit, ...] = ("neuron", "input_channel")


class TokenMLP(nn.Module):
    """A patch conv to 16 tokens of 8 features at 32 px, an MLP whose second Linear is used through ``F.linear`` on
    tokens padded to 20 (as Swin pads to whole windows), a LayerNorm between them, and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, stride=8)
        self.fc1 = nn.Linear(8, 12)
        self.norm = nn.LayerNorm(12)
        self.proj = nn.Linear(12, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)  # (batch, 16, 8)
        hidden = self.norm(torch.relu(self.fc1(tokens)))
        padded = F.pad(hidden, (0, 0, 0, 4))  # 20 tokens, as a window partition would pad
        tokens = tokens + F.linear(padded, self.proj.weight, self.proj.bias)[:, :16]
        out: torch.Tensor = self.head(tokens.mean(dim=1))
        return out


class SmallViT(nn.Module):
    """A ViT-like net at 32 px: 8 px patches (16 tokens of 16), a class token, a position embedding, one pre-norm block
    with nn.MultiheadAttention (its out_proj is called inside torch.nn.functional) and a GELU MLP, a final norm, a head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, width, 8, stride=8)
        self.class_token = nn.Parameter(torch.randn(1, 1, width) * 0.1)
        self.pos_embedding = nn.Parameter(torch.randn(1, 17, width) * 0.1)
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos_embedding
        y = self.norm1(tokens)
        tokens = tokens + self.attn(y, y, y, need_weights=False)[0]
        tokens = tokens + self.fc2(F.gelu(self.fc1(self.norm2(tokens))))
        out: torch.Tensor = self.head(self.norm(tokens)[:, 0])
        return out


def swin_t() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.swin_t(num_classes=10)


def small_swin() -> nn.Module:
    """torchvision's Swin class (its shifted-window attention, window padding and patch merging) at a few thousand parameters,
    without stochastic depth (random per step)."""
    return torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=[7, 7], stochastic_depth_prob=0.0, num_classes=10
    )


# --- costs ----------------------------------------------------------------------------------------------------------
def test_swin_t_costs_tradys_printed_total() -> None:
    """Every conv and Linear but the head, weights and biases plus their inputs at 128 px: TraDy's 31,889,952."""
    costs = channel_costs(swin_t(), 128)
    assert len(costs) == 52 and "head" not in costs  # the 4x4 patch conv, 12 blocks x 4 Linear, 3 patch mergings
    assert network_memory(costs) == 31_889_952
    assert sum(c.total_parameters for c in costs.values()) == 27_471_264
    assert sum(c.total_activation for c in costs.values()) == 4_418_688
    # qkv and proj see the tokens padded to whole 7x7 windows (stage 1: 32x32 -> 35x35), the MLP the unpadded ones
    qkv, fc1 = costs["features.1.0.attn.qkv"], costs["features.1.0.mlp.0"]
    assert (qkv.plane, costs["features.1.0.attn.proj"].plane, fc1.plane) == (35 * 35, 35 * 35, 32 * 32)
    assert qkv.weight.tolist() == [288] * 96 and qkv.bias == 288  # an input channel: one column of the 288x96 weight


def test_a_linear_priced_by_hand() -> None:
    costs = channel_costs(TokenMLP(), 32)
    assert list(costs) == ["patch", "fc1", "proj"]  # the head is not budgeted
    fc1, proj = costs["fc1"], costs["proj"]
    # fc1 (8 -> 12) on 16 tokens: an input channel is a column of 12 weights and 16 activations; a neuron its row and bias
    assert fc1.weight.tolist() == [12] * 8 and fc1.activation.tolist() == [16] * 8 and fc1.bias == 12
    assert fc1.neuron.weight.tolist() == [8 + 1] * 12 and fc1.neuron.activation.tolist() == [8 * 16] * 12
    assert fc1.input_channel.wgrad_flops.tolist() == [12 * 16] * 8
    # proj, used only through F.linear, on the 20 padded tokens
    assert proj.plane == 20 and proj.weight.tolist() == [8] * 12
    patch = 3 * 8 * 64 + 8 + 3 * 32 * 32
    assert network_memory(costs) == patch + (96 + 12 + 8 * 16) + (96 + 8 + 12 * 20)
    # under input channels a layer's bias is paid once, with its first selected channel
    masks = {"patch": torch.zeros(3, dtype=torch.bool), "fc1": torch.tensor([True, True] + [False] * 6), "proj": torch.zeros(12, dtype=torch.bool)}
    use = mask_memory(masks, costs, "input_channel")
    assert (use.weight_elements, use.activation_elements) == (2 * 12 + 12, 2 * 16)
    neurons = {"patch": torch.zeros(8, dtype=torch.bool), "fc1": torch.tensor([True] + [False] * 11), "proj": torch.zeros(8, dtype=torch.bool)}
    use = mask_memory(neurons, costs, "neuron")
    assert (use.weight_elements, use.activation_elements) == (9, 8 * 16)


def test_multihead_attention_out_proj_sees_its_tokens() -> None:
    """nn.MultiheadAttention calls its out_proj inside torch.nn.functional, with the batch folded into the tokens."""
    costs = channel_costs(SmallViT(), 32)
    assert list(costs) == ["patch", "attn.out_proj", "fc1", "fc2"]
    assert costs["attn.out_proj"].plane == 17 and costs["fc1"].plane == 17


# --- the engine -----------------------------------------------------------------------------------------------------
def masks_of(model: nn.Module, unit: Unit, seed: int) -> Masks:
    """Per layer none, some or all of its units, in turn."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for index, (name, layer) in enumerate(budgeted_layers(model).items()):
        length = unit_length(layer, unit)
        kind = ("some", "none", "some", "all")[(index + seed) % 4]
        mask = torch.full((length,), kind == "all")
        if kind == "some":
            mask[torch.randperm(length, generator=generator)[: max(1, length // 3)]] = True
        masks[name] = mask
    return masks


def gradients(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs), torch.arange(len(inputs)) % 10).backward()
    return {name: param.grad for name, param in model.named_parameters() if param.grad is not None}


def check_engine_gradients(build: Callable[[], nn.Module], unit: Unit, size: int, seed: int) -> None:
    """The engine's gradients equal a full backward masked afterwards (float64), for every parameter."""
    torch.manual_seed(seed)
    reference = build().double()
    model = copy.deepcopy(reference)
    masks = masks_of(model, unit, seed)
    inputs = torch.randn(3, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    expected = gradients(reference, inputs)
    engine = SparseUpdateEngine(model, unit=unit)
    engine.set_masks(masks)
    got = gradients(model, inputs)
    layers = budgeted_layers(reference)
    for name, _ in reference.named_parameters():
        layer_name, _, leaf = name.rpartition(".")
        want = expected[name].clone()
        if layer_name in layers:
            layer, mask = layers[layer_name], masks[layer_name]
            frozen = frozen_weight_elements(layer, mask, unit) if leaf == "weight" else frozen_bias_elements(layer, mask, unit)
            want[frozen] = 0
        if name not in got:
            assert not want.any(), f"{name}: the engine computed no gradient, the masked path a non-zero one"
            continue
        torch.testing.assert_close(got[name], want, rtol=1e-10, atol=1e-12, msg=f"{name} ({unit})")
    engine.remove()


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("build", [TokenMLP, SmallViT], ids=["token-mlp", "small-vit"])
def test_engine_gradients_equal_the_masked_full_backward(build: Callable[[], nn.Module], unit: Unit, seed: int) -> None:
    check_engine_gradients(build, unit, 32, seed)


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_engine_gradients_on_swin(unit: Unit, seed: int) -> None:
    """torchvision's Swin at 32 px (8x8 tokens padded to 14x14, then 4x4 padded to 7x7), qkv and proj used through F.linear
    inside a function."""
    check_engine_gradients(small_swin, unit, 32, seed)


def saved_shapes(model: nn.Module, inputs: torch.Tensor) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd keeps for backward (parameters excluded)."""
    params = {p.data_ptr() for p in model.parameters()}
    shapes: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.data_ptr() not in params:
            shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(inputs).sum().backward()
    return shapes


def test_selected_input_columns_are_all_a_linear_keeps() -> None:
    """A Linear with 3 of its 12 input features selected keeps a (batch, tokens, 3) copy; a frozen one keeps no input."""
    model = TokenMLP()
    engine = SparseUpdateEngine(model, unit="input_channel")
    masks = {"patch": torch.ones(3, dtype=torch.bool), "fc1": torch.zeros(8, dtype=torch.bool), "proj": torch.zeros(12, dtype=torch.bool)}
    masks["proj"][[1, 5, 7]] = True
    engine.set_masks(masks)
    shapes = saved_shapes(model, torch.randn(2, 3, 32, 32))
    assert (2, 20, 3) in shapes
    assert (2, 20, 12) not in shapes  # proj's whole (padded) input
    assert (2, 16, 8) not in shapes  # fc1's input: frozen, nothing kept for its weight


def test_frozen_rows_and_columns_stay_bit_identical_on_swin() -> None:
    torch.manual_seed(0)
    model = small_swin()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for unit in UNITS:
        masks = masks_of(model, unit, 3)
        engine = SparseUpdateEngine(model, unit=unit)
        engine.set_masks(masks)
        optimizer = MaskedSGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9, weight_decay=0.01, row_sparse=True)
        optimizer.set_update_masks(parameter_masks(model, masks, unit))
        for _ in range(2):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 2])).backward()
            optimizer.step()
        for name, layer in budgeted_layers(model).items():
            frozen = frozen_weight_elements(layer, masks[name], unit)
            assert torch.equal(layer.weight.detach()[frozen], before[f"{name}.weight"][frozen]), name
            if masks[name].any():
                assert not torch.equal(layer.weight.detach()[~frozen], before[f"{name}.weight"][~frozen]), name
        engine.remove()
        before = {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("unit", UNITS)
def test_layer_norms_train_only_after_selected_layers(unit: Unit) -> None:
    """bn_update: selected covers LayerNorm: SmallViT's norm1 follows the patch conv, norm2 out_proj, the final norm fc2 (module order)."""
    model = SmallViT()
    engine = SparseUpdateEngine(model, unit=unit, bn_update="selected")
    masks = {name: torch.zeros(unit_length(layer, unit), dtype=torch.bool) for name, layer in budgeted_layers(model).items()}
    masks["attn.out_proj"][0] = True
    engine.set_masks(masks)
    assert model.norm2.weight.requires_grad and not model.norm.weight.requires_grad and not model.norm1.weight.requires_grad
    masks["attn.out_proj"][0] = False
    masks["fc2"][:] = True
    engine.set_masks(masks)
    assert model.norm.weight.requires_grad and not model.norm2.weight.requires_grad and not model.norm1.weight.requires_grad


# --- velocity -------------------------------------------------------------------------------------------------------
def test_velocity_measures_linear_neurons_used_inside_functions() -> None:
    model = TokenMLP()
    images = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))]
    with VelocityTracker(model) as tracker:
        assert tracker.observe(images) is None
        with torch.no_grad():
            model.proj.weight[:, :3] += 0.5
        velocities = tracker.observe(images)
    assert velocities is not None and list(velocities) == ["patch", "fc1", "proj"]
    assert velocities["proj"].shape == (8,) and velocities["fc1"].shape == (12,)
    assert float(velocities["proj"].abs().min()) > 0.1 and float(velocities["fc1"].abs().max()) < 1e-12  # only proj's outputs changed


# --- every policy on Linear units -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_vit_model() -> Iterator[str]:
    """SmallViT registered for this module's tests only (the registry-wide tests build every model at their own sizes)."""
    register_model("test-small-vit", source="tests", input_size=32)(lambda config, classes: SmallViT())
    yield "test-small-vit"
    model_registry._MODELS.remove("test-small-vit")


def linear_trial(model: str, **budget: Any) -> TrialConfig:
    return TrialConfig.from_dict(
        {
            "data": {"name": "digits", "image_size": 32, "batch_size": 128, "velocity_images": 16, "workers": 0},
            "model": {"name": model},
            "training": {"epochs": 2, "lr": 0.1, "momentum": 0.9, "device": "cpu"},
            "budget": budget,
        }
    )


POLICY_BUDGETS: list[dict[str, Any]] = [
    {"policy": "velocity", "unit": "neuron", "ratio": 0.3},
    {"policy": "velocity", "unit": "neuron", "memory": 3000},
    {"policy": "random", "unit": "neuron", "memory": 3000},
    {"policy": "random", "unit": "input_channel", "memory": 3000},
    {"policy": "trady", "unit": "input_channel", "memory": 3000, "options": {"trady": {"ranking_batches": 1}}},
    {"policy": "rgn", "unit": "input_channel", "memory": 3000, "options": {"rgn": {"ranking_batches": 1}}},
    {"policy": "medyate", "unit": "input_channel", "options": {"medyate": {"ranking_batches": 1, "layers": [1, 2, 3]}}, "memory": 1500},
    {"policy": "full", "unit": "input_channel"},
]


@pytest.mark.parametrize("budget", POLICY_BUDGETS, ids=lambda b: f"{b['policy']}-{b['unit']}-{'memory' if 'memory' in b else 'params'}")
def test_every_policy_selects_linear_units(small_vit_model: str, budget: dict[str, Any]) -> None:
    """Two epochs: masks over the Linear layers too, the budget kept, units out of the masks bit-identical."""
    torch.set_num_threads(1)
    run = BudgetedRun(linear_trial(small_vit_model, **budget))
    layers = budgeted_layers(run.model)
    assert list(run.masks) == list(layers) == ["patch", "attn.out_proj", "fc1", "fc2"]
    unit: Unit = budget["unit"]
    for _epoch in range(2):
        before = {name: layer.weight.detach().clone() for name, layer in layers.items()}
        trained_with = {name: mask.clone() for name, mask in run.masks.items()}
        run_epoch(run)
        for name, layer in layers.items():
            frozen = frozen_weight_elements(layer, trained_with[name].cpu(), unit)
            assert torch.equal(layer.weight.detach()[frozen], before[name][frozen]), name
        if budget["policy"] != "full":
            spent = mask_memory(run.masks, run.budget.costs, unit).elements if "memory" in budget else None
            assert spent is None or spent <= run.budget.amount
    linear_selected = sum(int(run.masks[name].sum()) for name, layer in layers.items() if isinstance(layer, nn.Linear))
    assert linear_selected > 0


@pytest.mark.parametrize("unit", UNITS)
def test_su_masks_cover_linear_layers(unit: Unit) -> None:
    """SU schemes index every budgeted layer in module order, Linear layers included."""
    model = SmallViT()
    masks = su_update_mask(model, manual_weight_idx=[1, 3], weight_update_ratio=[1.0, 0.5], unit=unit)
    assert list(masks) == ["patch", "attn.out_proj", "fc1", "fc2"]
    assert bool(masks["attn.out_proj"].all()) and not bool(masks["fc1"].any())
    assert int(masks["fc2"].sum()) == unit_length(model.fc2, unit) // 2


# --- bad input ------------------------------------------------------------------------------------------------------
def test_a_preselection_may_name_its_layers(small_vit_model: str) -> None:
    budget = {"policy": "trady", "unit": "input_channel", "memory": 1500, "options": {"trady": {"layers": ["attn.out_proj", "fc2"]}}}
    run = BudgetedRun(linear_trial(small_vit_model, **budget))
    assert run.policy.layer_names() == ["attn.out_proj", "fc2"]  # type: ignore[attr-defined]
    assert not run.masks["patch"].any() and not run.masks["fc1"].any()


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        (["fc1", "norm"], "budget.options.rgn.layers: layer 'norm' is not budgeted: the budgeted layers are every conv and every Linear"),
        (["head"], "budget.options.rgn.layers: layer 'head' is not budgeted"),
        ([1, "attn.out_proj"], "budget.options.rgn.layers: a layer is given twice"),
    ],
)
def test_a_layer_that_is_not_budgeted_is_refused(
    small_vit_model: str, layers: list[Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = {
        "experiment": "linear",
        "data": {"name": "digits", "image_size": 32, "batch_size": 64},
        "model": {"name": small_vit_model},
        "training": {"epochs": 1, "lr": 0.1},
        "budget": {"policy": "rgn", "unit": "input_channel", "memory": 1500, "options": {"rgn": {"layers": layers}}},
        "search": {"algorithm": "grid", "num_samples": 1, "max_concurrent": 1, "cpus_per_trial": 1, "params": {"training.seed": {"choice": [0]}}},
    }
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    assert main(["--space", str(path), "--results", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}: {message}"), err
    assert not (tmp_path / "out").exists()


class HiddenLinear(nn.Module):
    """A Linear whose weight is multiplied by hand: no F.linear call, so no price."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 8, 8, stride=8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        out: torch.Tensor = self.head((tokens @ self.mix.weight.t()).mean(dim=1))
        return out


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (HiddenLinear(), "model hidden: budgeted layers ['mix'] were not used in a forward pass"),
        (nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), "model hidden: has no conv or Linear layer besides its classifier"),
    ],
)
def test_a_model_whose_layers_cannot_be_priced_is_refused(model: nn.Module, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_budget(BudgetConfig(policy="random", unit="input_channel", memory=1000), model, model_name="hidden", image_size=32)
    assert caught.value.key == "model.name" and message in str(caught.value)


def test_linear_calls_leave_torch_alone_when_no_layer_is_a_linear(small_net: nn.Module) -> None:
    """A CNN's budgeted layers hold no Linear: entering changes neither ``F.linear`` nor the MHA fast path; with one it does."""
    original, fastpath = F.linear, torch.backends.mha.get_fastpath_enabled()
    convs = {name: layer for name, layer in budgeted_layers(small_net).items() if isinstance(layer, nn.Conv2d)}
    with LinearCalls(convs, lambda *args: pytest.fail("no call is routed")):
        assert F.linear is original and torch.backends.mha.get_fastpath_enabled() == fastpath
        small_net(torch.randn(1, 3, 8, 8))
    routed: list[str] = []

    def record(name: str, inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, linear: Any) -> torch.Tensor:
        routed.append(name)
        return linear(inputs, weight, bias)

    with LinearCalls({"head": small_net.head}, record):
        assert F.linear is not original and not torch.backends.mha.get_fastpath_enabled()
        small_net(torch.randn(1, 3, 8, 8))
    assert routed == ["head"] and F.linear is original and torch.backends.mha.get_fastpath_enabled() == fastpath


def test_a_memory_budget_below_one_input_feature_with_its_layers_bias_is_refused() -> None:
    """The cheapest input feature of the small vit at 16 px: a proj (or fc2) column, 64 weights + 17 tokens, plus the
    layer's 64-element bias that the first feature taken from a layer pays: 145. A budget of 139 would buy nothing."""
    from neqtune.trainables.config import ModelConfig, from_mapping
    from neqtune.trainables.models.registry import build_model
    from neqtune.trainables.policies.fill import select_units

    model = build_model(ModelConfig(name="vit", patch_size=4, depth=4, width=64, heads=4, mlp_ratio=2.0), 10)

    def budget(amount: int) -> Any:
        values = {"policy": "random", "unit": "input_channel", "memory": amount}
        return build_budget(from_mapping(BudgetConfig, values, "budget"), model, model_name="vit", image_size=16)

    with pytest.raises(ConfigError) as caught:
        budget(144)
    assert caught.value.key == "budget.memory" and "below the cheapest input_channel of the model (145 elements per image)" in caught.value.message
    resolved = budget(145)
    masks = select_units("random", scores=None, pricing=resolved.pricing, budget=resolved.amount, generator=torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in masks.values()) == 1
    assert mask_memory(masks, resolved.costs, "input_channel").elements == 145


class AdapterAfterHead(nn.Module):
    """The classifier ``out`` is not the last nn.Linear: an adapter declared after it feeds it."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)
        self.out = nn.Linear(4, num_classes)
        self.adapter = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x).mean(dim=(2, 3))
        return self.out(features + self.adapter(features))


def adapter_after_head(num_classes: int) -> nn.Module:
    return AdapterAfterHead(num_classes)


def test_the_configured_classifier_is_the_one_left_out_of_the_budget() -> None:
    """``model.classifier`` names the head; the budget, its accounting and the trainer leave that layer out, not the last Linear."""
    from neqtune.trainables.config import ModelConfig
    from neqtune.trainables.models.registry import build_model, classifier_name, find_classifier

    model = build_model(ModelConfig(name=f"{__name__}:adapter_after_head", classifier="out"), 3)
    assert find_classifier(model) == "adapter"  # what the search by name and position would take
    assert classifier_name(model) == "out" and list(budgeted_layers(model)) == ["body", "adapter"]
    assert classifier_name(copy.deepcopy(model)) == "out"
    run = BudgetedRun(
        TrialConfig.from_dict(
            {
                "data": {"name": "digits", "image_size": 8, "batch_size": 64},
                "model": {"name": f"{__name__}:adapter_after_head", "classifier": "out"},
                "training": {"epochs": 1, "lr": 0.1},
                "budget": {"policy": "random", "ratio": 0.5},
            }
        )
    )
    assert set(run.masks) == {"body", "adapter"}
