"""Vision transformers: a ViT that takes any multiple of its patch size, torchvision's ``vit_b_16`` as one, and a small configurable one.

:class:`PatchViT` lays its modules out under torchvision's ``VisionTransformer``
names (``conv_proj``, ``class_token``, ``encoder.pos_embedding``,
``encoder.layers.encoder_layer_<i>``, ``heads.head``), so torchvision's
ImageNet state dict of ``vit_b_16`` loads into it as it is, with two
differences that matter to a budget:

- **Attention through ``nn.Linear`` modules.** torchvision keeps the query,
  key and value projection as ``nn.MultiheadAttention.in_proj_weight``, a bare
  parameter used inside ``F.multi_head_attention_forward`` together with
  ``out_proj``: neither is called through a module's ``forward``, so a cost
  model or an engine that works on ``nn.Linear`` modules would see no
  attention at all. :class:`LinearAttention` holds them as ``qkv`` and ``proj``
  (``nn.Linear``, called as modules) and reads torchvision's parameter names
  when a state dict is loaded. The numbers are the same.
- **Any side that is a multiple of the patch size.** The position
  embeddings are learned for one grid (14 x 14 for ``vit_b_16``, its 224 px);
  at another grid they are resized bicubically, as ViTs are commonly
  fine-tuned at another resolution. torchvision's model takes 224 px only.

The small ViT (registered as ``vit``) takes its shape from the model keys
``patch_size``, ``depth``, ``width``, ``heads`` and ``mlp_ratio``
(:func:`vit_shape`); its position embeddings are laid out for 32 px.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from neqtune.trainables.config import ARCHITECTURE_KEYS, ConfigError, ModelConfig

VIT_NATIVE_SIDE = 32
"""The input side the small ViT's position embeddings are laid out for (its patch grid is ``32 // patch_size``)."""


@dataclass(frozen=True)
class ViTShape:
    """The shape of a :class:`PatchViT`.

    Attributes:
        patch_size: side of a square patch in pixels; the image side must be a multiple of it.
        depth: number of encoder blocks.
        width: token width (the hidden dimension).
        heads: attention heads; ``width`` must be a multiple of it.
        mlp_ratio: width of each block's MLP, as a multiple of ``width`` (rounded down).
        grid: patches per side the position embeddings are learned for.
    """

    patch_size: int = 4
    depth: int = 6
    width: int = 128
    heads: int = 4
    mlp_ratio: float = 2.0
    grid: int = VIT_NATIVE_SIDE // 4

    @property
    def mlp_width(self) -> int:
        """Hidden width of each block's MLP."""
        return int(self.width * self.mlp_ratio)


VIT_B_16 = ViTShape(patch_size=16, depth=12, width=768, heads=12, mlp_ratio=4.0, grid=14)
"""torchvision's ``vit_b_16``: 16 px patches, 12 blocks of width 768 with 12 heads, MLP 3,072, learned at 224 px."""

VIT_KEYS = ARCHITECTURE_KEYS
"""The model keys of the small ViT (all of :class:`~neqtune.trainables.config.ModelConfig`'s architecture keys)."""


def vit_shape(config: ModelConfig) -> ViTShape:
    """The small ViT's shape from the model keys (null keys take :class:`ViTShape`'s defaults).

    Raises:
        ConfigError: (``heads``, relative to the model section) ``width`` is no multiple of ``heads``.
    """
    keys = {**{key: getattr(ViTShape, key) for key in VIT_KEYS}, **config.shape_keys()}
    shape = ViTShape(**keys, grid=max(1, VIT_NATIVE_SIDE // int(keys["patch_size"])))
    if shape.width % shape.heads:
        raise ConfigError("heads", f"width {shape.width} must be a multiple of heads, got {shape.heads}")
    if shape.mlp_width < 1:
        raise ConfigError("mlp_ratio", f"gives an MLP of width {shape.mlp_width} at width {shape.width}; it needs at least 1")
    return shape


class LinearAttention(nn.Module):
    """Multi-head self-attention whose projections are ``nn.Linear`` modules called through their ``forward``.

    ``qkv`` maps a token to its queries, keys and values (in that order,
    ``3 * width`` outputs), ``proj`` maps the heads' outputs back to the
    width. A state dict of torchvision's ``nn.MultiheadAttention``
    (``in_proj_weight``, ``in_proj_bias``, ``out_proj.*``) loads as well: the
    layout of ``in_proj_weight`` is that of ``qkv.weight``.
    """

    _TORCHVISION_NAMES: ClassVar[dict[str, str]] = {"in_proj_weight": "qkv.weight", "in_proj_bias": "qkv.bias", "out_proj.weight": "proj.weight", "out_proj.bias": "proj.bias"}

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, width = tokens.shape
        q, k, v = self.qkv(tokens).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v)
        projected: torch.Tensor = self.proj(attended.transpose(1, 2).reshape(batch, length, width))
        return projected

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        for old, new in self._TORCHVISION_NAMES.items():
            if prefix + old in state_dict and prefix + new not in state_dict:
                state_dict[prefix + new] = state_dict.pop(prefix + old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class EncoderBlock(nn.Module):
    """A pre-norm transformer block: ``x + attention(ln_1(x))``, then ``x + mlp(ln_2(x))`` (torchvision's names and layout)."""

    def __init__(self, width: int, heads: int, mlp_width: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention = LinearAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        # Linear, GELU, Dropout, Linear, Dropout: the indices of torchvision's MLPBlock (mlp.0, mlp.3), so its weights load.
        self.mlp = nn.Sequential(nn.Linear(width, mlp_width), nn.GELU(), nn.Dropout(0.0), nn.Linear(mlp_width, width), nn.Dropout(0.0))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.self_attention(self.ln_1(tokens))
        mixed: torch.Tensor = tokens + self.mlp(self.ln_2(tokens))
        return mixed


class Encoder(nn.Module):
    """The position embeddings, the blocks and the final norm."""

    def __init__(self, shape: ViTShape) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, shape.grid * shape.grid + 1, shape.width).normal_(std=0.02))
        blocks = ((f"encoder_layer_{i}", EncoderBlock(shape.width, shape.heads, shape.mlp_width)) for i in range(shape.depth))
        self.layers = nn.Sequential(OrderedDict(blocks))
        self.ln = nn.LayerNorm(shape.width, eps=1e-6)

    def position_embedding(self, rows: int, columns: int) -> torch.Tensor:
        """The class token's embedding and the patches', resized bicubically from the learned grid to ``rows x columns``."""
        cls, patches = self.pos_embedding[:, :1], self.pos_embedding[:, 1:]
        grid = math.isqrt(patches.shape[1])
        if (rows, columns) == (grid, grid):
            return self.pos_embedding
        width = patches.shape[2]
        laid_out = patches.reshape(1, grid, grid, width).permute(0, 3, 1, 2)
        resized = F.interpolate(laid_out, size=(rows, columns), mode="bicubic", align_corners=False)
        return torch.cat([cls, resized.permute(0, 2, 3, 1).reshape(1, rows * columns, width)], dim=1)


class PatchViT(nn.Module):
    """A vision transformer over square patches; the classifier reads the class token (module docstring).

    Args:
        shape: patch size, depth, width, heads, MLP ratio and the learned grid.
        num_classes: outputs of ``heads.head``.
    """

    def __init__(self, shape: ViTShape, num_classes: int) -> None:
        super().__init__()
        self.shape = shape
        self.patch_size = shape.patch_size
        self.conv_proj = nn.Conv2d(3, shape.width, kernel_size=shape.patch_size, stride=shape.patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, shape.width))
        self.encoder = Encoder(shape)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(shape.width, num_classes)))
        fan_in = self.conv_proj.in_channels * shape.patch_size**2
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        assert self.conv_proj.bias is not None
        nn.init.zeros_(self.conv_proj.bias)
        for module in self.encoder.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"image side {height}x{width} is not a multiple of the patch size {self.patch_size}")
        patches = self.conv_proj(images)  # (batch, width, rows, columns)
        rows, columns = patches.shape[-2:]
        tokens = patches.flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.encoder.position_embedding(rows, columns)
        tokens = self.encoder.ln(self.encoder.layers(tokens))
        logits: torch.Tensor = self.heads(tokens[:, 0])
        return logits
