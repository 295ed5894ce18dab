"""Vision transformers: swin_t and vit_b_16 as registered models, the small configurable vit, their input sides and keys.

Forward passes stay tiny (32-64 px); vit_b_16 and swin_t are built without weights.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from neqtune.trainables.checks import check_config, model_problems, side_problems
from neqtune.trainables.config import ConfigError, DataConfig, ModelConfig, TrialConfig
from neqtune.trainables.models.registry import build_model, imagenet_weights_source, model_spec
from neqtune.trainables.models.transformers import LinearAttention, PatchViT, ViTShape, vit_shape


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vit_b_16() -> nn.Module:
    return build_model(ModelConfig(name="vit_b_16"), num_classes=1000)


def _offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
    raise urllib.error.URLError("[Errno -2] Name or service not known")


def test_a_torchvision_vit_state_dict_loads_and_gives_the_same_logits() -> None:
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=7)
    with torch.no_grad():
        for parameter in tv.parameters():
            parameter.normal_(0, 0.2)  # torchvision zero-initialises its head: random weights make the logits tell
    mine = PatchViT(ViTShape(patch_size=16, depth=2, width=64, heads=4, mlp_ratio=2.0, grid=2), 7)
    assert not mine.load_state_dict(tv.state_dict()).missing_keys
    images = torch.randn(3, 3, 32, 32)
    expected = tv.eval()(images)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(mine.eval()(images), expected)
    assert torch.equal(mine.encoder.layers[1].self_attention.qkv.weight, tv.encoder.layers[1].self_attention.in_proj_weight)


def test_vit_b_16_is_torchvisions_network_with_attention_through_linear_modules(vit_b_16: nn.Module) -> None:
    assert sum(p.numel() for p in vit_b_16.parameters()) == 86_567_656  # torchvision's vit_b_16, 1,000 classes
    linears = {name: m for name, m in vit_b_16.named_modules() if isinstance(m, nn.Linear)}
    assert len(linears) == 12 * 4 + 1  # qkv, proj, mlp.0, mlp.3 per block, and heads.head
    assert not any(isinstance(m, nn.MultiheadAttention) for m in vit_b_16.modules())
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: called.add(name)) for name, m in linears.items()]
    with torch.no_grad():
        logits = vit_b_16(torch.zeros(1, 3, 32, 32))  # 2 x 2 patches: the learned 14 x 14 position grid resized
    for hook in hooks:
        hook.remove()
    assert logits.shape == (1, 1000) and called == set(linears)  # every Linear runs as a module: a hook on it sees it


def test_position_embeddings_resize_to_the_image_grid() -> None:
    model = build_model(ModelConfig(name="vit", patch_size=8, depth=1, width=16, heads=2), 3)
    encoder = model.encoder
    assert encoder.pos_embedding.shape == (1, 4 * 4 + 1, 16)  # laid out for 32 px
    assert encoder.position_embedding(4, 4) is encoder.pos_embedding
    with torch.no_grad():
        encoder.pos_embedding[:, 1:] = torch.arange(16.0)  # the same embedding at every patch: resizing keeps it
    resized = encoder.position_embedding(6, 2)
    assert resized.shape == (1, 13, 16)
    torch.testing.assert_close(resized[0, 1:], torch.arange(16.0).expand(12, 16))
    assert torch.equal(resized[:, 0], encoder.pos_embedding[:, 0])  # the class token's is not resized
    assert model(torch.zeros(2, 3, 48, 16)).shape == (2, 3)


def test_the_small_vit_takes_its_shape_from_the_model_keys() -> None:
    assert vit_shape(ModelConfig(name="vit")) == ViTShape(patch_size=4, depth=6, width=128, heads=4, mlp_ratio=2.0, grid=8)
    config = ModelConfig(name="vit", patch_size=8, depth=3, width=48, heads=6, mlp_ratio=3)
    model = build_model(config, 5)
    blocks = model.encoder.layers
    assert len(blocks) == 3 and model.conv_proj.kernel_size == (8, 8) and model.conv_proj.stride == (8, 8)
    block = blocks[0]
    assert isinstance(block.self_attention, LinearAttention) and block.self_attention.heads == 6
    assert block.self_attention.qkv.weight.shape == (144, 48) and block.mlp[0].weight.shape == (144, 48)
    per_block = (48 * 144 + 144) + (48 * 48 + 48) + 2 * (48 * 144) + 144 + 48 + 4 * 48  # qkv, proj, MLP, two LayerNorms
    total = 3 * 64 * 48 + 48 + 48 + 17 * 48 + 3 * per_block + 2 * 48 + 48 * 5 + 5  # patches, class token, positions, blocks, norm, head
    assert sum(p.numel() for p in model.parameters()) == total
    assert model_spec("vit").input_size == 32 and model_spec("vit").keys == ("patch_size", "depth", "width", "heads", "mlp_ratio")


def test_model_keys_are_checked_with_the_key_named() -> None:
    with pytest.raises(ConfigError, match=r"^model.heads: width 30 must be a multiple of heads, got 4$"):
        check_config(TrialConfig(model=ModelConfig(name="vit", width=30, heads=4)))
    problems = model_problems(ModelConfig(name="resnet18", patch_size=4, depth=2))
    assert [str(p) for p in problems] == [
        "model.patch_size: model 'resnet18' does not take patch_size; it shapes vit",
        "model.depth: model 'resnet18' does not take depth; it shapes vit",
    ]
    assert model_problems(ModelConfig(name="torchvision:swin_t", width=64))[0].key == "model.width"
    with pytest.raises(ConfigError, match=r"^model.patch_size: must be >= 1, got 0$"):
        TrialConfig.from_dict({"model": {"name": "vit", "patch_size": 0}})


def test_the_input_side_is_a_model_property() -> None:
    assert model_spec("swin_t").input_size == 128  # TraDy's
    assert side_problems(ModelConfig(name="vit", patch_size=4), 32) == []
    assert side_problems(ModelConfig(name="vit_b_16"), 128) == []
    (problem,) = side_problems(ModelConfig(name="vit_b_16"), 100)
    assert str(problem) == "data.image_size: model vit_b_16 takes image sides that are multiples of its patch size 16, not 100 (use 96 or 112)"
    assert side_problems(ModelConfig(name="vit", patch_size=8), 6)[0].message.endswith("not 6 (use 8)")
    assert side_problems(ModelConfig(name="swin_t"), 130)[0].message.endswith("patch size 4, not 130 (use 128 or 132)")
    assert side_problems(ModelConfig(name="resnet18"), 97) == []  # a CNN takes any side its layers take
    with pytest.raises(ValueError, match="not a multiple of the patch size 4"):
        build_model(ModelConfig(name="vit", depth=1, width=8, heads=2), 3)(torch.zeros(1, 3, 30, 30))
    assert TrialConfig(data=DataConfig(image_size=30)).data.image_size == 30  # parsing alone knows no model


def test_swin_t_is_torchvisions_and_runs_at_128_px() -> None:
    model = build_model(ModelConfig(name="swin_t"), 10)
    assert isinstance(model, torchvision.models.SwinTransformer)
    assert sum(p.numel() for p in model.parameters()) == 27_527_044
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(("name", "file"), [("swin_t", "swin_t-704ceda3.pth"), ("vit_b_16", "vit_b_16-c867db91.pth")])
def test_imagenet_weights_come_from_the_torch_hub_cache_and_offline_fail_in_one_line(
    name: str, file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _offline)
    config = ModelConfig(name=name, pretrained="imagenet")
    source = imagenet_weights_source(config)
    expected = tmp_path / "torch" / "hub" / "checkpoints" / file
    assert source.path == expected and source.url == f"https://download.pytorch.org/models/{file}" and not source.cached
    assert model_problems(config) == []  # checking a trial fetches nothing
    with pytest.raises(ConfigError) as err:
        build_model(config, 10)
    assert err.value.key == "model.pretrained" and str(expected) in str(err.value) and "\n" not in str(err.value)
    assert not expected.exists()
