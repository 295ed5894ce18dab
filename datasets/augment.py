"""The study's training and evaluation transforms, run on whole batches of ``uint8`` images on their own device.

:mod:`neqtune.datasets.samples` augments one PIL image at a time; on a GPU,
or with small images where the per-sample Python overhead dominates, that is
the bottleneck. This module applies the same transforms *in distribution* to
a padded batch at once:

- ``images``: ``uint8 [B, C, Hmax, Wmax]`` with ``C`` 1 (grey) or 3; image
  ``b`` occupies the top-left ``sizes[b]`` corner of its slot;
- ``sizes``: integer ``[B, 2]``, each image's real ``(height, width)``.

A crop is a box ``(x1, y1, x2, y2)`` in source pixels (pixel ``i`` spans
``[i, i + 1)``); :func:`crop_resize` resamples boxes with
:func:`torchvision.ops.roi_align`, whose adaptive sampling averages several
bilinear samples per output pixel when it shrinks, the anti-aliasing that
PIL's resize has. All randomness comes from a :class:`torch.Generator` on the
batch's device, so a seed fixes the output.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from neqtune.datasets.samples import EVAL_RESIZE_RATIO

__all__ = [
    "BatchTransform",
    "JitterParams",
    "apply_jitter",
    "centre_boxes",
    "color_jitter",
    "crop_resize",
    "flip",
    "full_boxes",
    "jitter_params",
    "normalize",
    "pad_batch",
    "random_resized_boxes",
]

RESIZED_CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop.get_params tries 10 boxes before its fallback
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale (ITU-R 601-2 luma)
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2  # column of each jitter op in JitterParams.factors


def pad_batch(arrays: Sequence[np.ndarray] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as one padded ``uint8`` batch.

    Args:
        arrays: ``uint8`` images ``H x W`` (grey) or ``H x W x 3``, or one
            array ``[N, H, W]`` / ``[N, H, W, 3]`` of equal-sized images,
            which is converted without padding. A list mixing grey and RGB
            images gets grey expanded to three channels.

    Returns:
        ``images uint8 [B, C, Hmax, Wmax]`` (contiguous, CPU; zero padding to
        the bottom and right) and ``sizes int64 [B, 2]``, each image's
        ``(height, width)``.
    """
    if isinstance(arrays, np.ndarray):
        return _stacked_batch(arrays)
    if not arrays:
        raise ValueError("pad_batch needs at least one image")
    if len({array.shape for array in arrays}) == 1:
        return _stacked_batch(np.stack(arrays))
    channels = 3 if any(array.ndim == 3 for array in arrays) else 1
    height = max(array.shape[0] for array in arrays)
    width = max(array.shape[1] for array in arrays)
    images = torch.zeros((len(arrays), channels, height, width), dtype=torch.uint8)
    for slot, array in zip(images, arrays, strict=True):
        slot[:, : array.shape[0], : array.shape[1]] = _channels_first(array)
    sizes = torch.tensor([array.shape[:2] for array in arrays], dtype=torch.int64)
    return images, sizes


def _stacked_batch(array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The fast path of :func:`pad_batch`: equal-sized images, one copy into channels-first order."""
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] != 3):
        raise ValueError(f"expected uint8 images [N, H, W] or [N, H, W, 3], got {array.dtype} {array.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(array))
    # channels-first in shape, channels-last in memory: no copy here; the resampling reads either layout
    images = pixels.unsqueeze(1) if array.ndim == 3 else pixels.permute(0, 3, 1, 2)
    sizes = torch.tensor([array.shape[1:3]], dtype=torch.int64).expand(array.shape[0], 2)
    return images, sizes.contiguous()


def _channels_first(array: np.ndarray) -> torch.Tensor:
    """One ``uint8`` image ``H x W`` or ``H x W x 3`` as ``[C, H, W]`` (``C`` 1 or 3)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected a uint8 image H x W or H x W x 3, got {array.dtype} {array.shape}")
    pixels = torch.from_numpy(np.ascontiguousarray(array))
    return pixels.unsqueeze(0) if array.ndim == 2 else pixels.permute(2, 0, 1)


def random_resized_boxes(
    sizes: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """RandomResizedCrop's boxes, one per image, drawn for the whole batch at once.

    The rule of :meth:`torchvision.transforms.RandomResizedCrop.get_params`:
    up to ten attempts of an area uniform in ``scale`` (a fraction of the
    image) and an aspect ratio (width / height) log-uniform in ``ratio``,
    rounded to whole pixels; the first attempt that fits is placed at a
    uniform integer offset. An image where none fits gets the centred crop
    with its own aspect ratio clamped into ``ratio``. All ten attempts are
    drawn for every image, so the draws do not depend on which fit.

    Args:
        sizes: integer ``[B, 2]``, each image's ``(height, width)``, on the
            generator's device.
        generator: the source of randomness.

    Returns:
        ``float32 [B, 4]`` boxes ``(x1, y1, x2, y2)`` in source pixels, with
        integer corners inside each image.
    """
    device = sizes.device
    heights, widths = sizes[:, 0:1].double(), sizes[:, 1:2].double()  # [B, 1], to broadcast over attempts
    shape = (sizes.shape[0], RESIZED_CROP_ATTEMPTS)
    area_fraction = _uniform(shape, scale, generator, device)
    log_ratio = _uniform(shape, (math.log(ratio[0]), math.log(ratio[1])), generator, device)
    area, aspect = heights * widths * area_fraction, torch.exp(log_ratio)
    crop_w, crop_h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))  # half to even, like round()
    fits = (crop_w > 0) & (crop_w <= widths) & (crop_h > 0) & (crop_h <= heights)
    first = fits.int().argmax(dim=1, keepdim=True)  # the first attempt that fits (0 where none does)
    crop_w, crop_h = crop_w.gather(1, first), crop_h.gather(1, first)
    offsets = torch.rand((sizes.shape[0], 2), generator=generator, device=device).double()
    top = _uniform_integer(offsets[:, 0:1], heights - crop_h + 1)
    left = _uniform_integer(offsets[:, 1:2], widths - crop_w + 1)
    fallback = _clamped_ratio_centre_boxes(heights, widths, ratio)
    boxes = torch.cat([left, top, left + crop_w, top + crop_h], dim=1)
    return torch.where(fits.any(dim=1, keepdim=True), boxes, fallback).float()


def _uniform(shape: tuple[int, int], bounds: tuple[float, float], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``float64`` draws uniform in ``bounds`` (drawn as ``float32``, like ``torch.empty(1).uniform_``)."""
    unit = torch.rand(shape, generator=generator, device=device).double()
    return bounds[0] + (bounds[1] - bounds[0]) * unit


def _uniform_integer(unit: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Integers uniform in ``0 .. count - 1`` from uniform draws in ``[0, 1)`` (``torch.randint``'s distribution)."""
    return torch.minimum(torch.floor(unit * count), count - 1)


def _clamped_ratio_centre_boxes(heights: torch.Tensor, widths: torch.Tensor, ratio: tuple[float, float]) -> torch.Tensor:
    """get_params' fallback: the centred crop of the image's aspect ratio clamped into ``ratio`` (``[B, 4]``)."""
    image_ratio = widths / heights
    crop_w = torch.where(image_ratio > max(ratio), torch.round(heights * max(ratio)), widths)
    crop_h = torch.where(image_ratio < min(ratio), torch.round(widths / min(ratio)), heights)
    left, top = torch.div(widths - crop_w, 2, rounding_mode="floor"), torch.div(heights - crop_h, 2, rounding_mode="floor")
    return torch.cat([left, top, left + crop_w, top + crop_h], dim=1)


def centre_boxes(sizes: torch.Tensor, crop_fraction: float) -> torch.Tensor:
    """The evaluation crop: a centred square of side ``crop_fraction`` x the short side.

    Resizing the short side to ``L`` and centre-cropping ``S`` pixels (the
    PIL evaluation transform) takes this square with ``crop_fraction = S / L``
    from the source, up to the resize's and the crop's rounding to whole
    pixels; resampling it once to ``S`` pixels is the same resize.

    Returns:
        ``float32 [B, 4]`` boxes ``(x1, y1, x2, y2)`` in source pixels
        (fractional corners).
    """
    heights, widths = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    side = crop_fraction * torch.minimum(heights, widths)
    left, top = (widths - side) / 2, (heights - side) / 2
    return torch.cat([left, top, left + side, top + side], dim=1)


def full_boxes(sizes: torch.Tensor) -> torch.Tensor:
    """Each image's whole extent as a box (``float32 [B, 4]``), for the square resize (VWW)."""
    heights, widths = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    return torch.cat([torch.zeros_like(widths), torch.zeros_like(heights), widths, heights], dim=1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, *, sizes: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's box, resampled to ``size`` x ``size`` with antialiased bilinear interpolation.

    Args:
        images: ``uint8 [B, C, Hmax, Wmax]``.
        boxes: ``[B, 4]`` ``(x1, y1, x2, y2)`` in source pixels, inside each
            image's real extent.
        size: the output side, in pixels.
        sizes: each image's ``(height, width)`` when the batch is padded.
            Bilinear samples in an image's last half pixel blend it with the
            pixel beyond; that pixel is set to a copy of the edge (on a float
            copy), so a padded image resamples as it would alone.

    Returns:
        ``float32 [B, 3, size, size]`` in ``[0, 1]``; grey images are
        expanded to three equal channels (``convert("RGB")``'s result).
    """
    if images.device.type == "cpu":
        whole = (boxes == boxes.round()).all(dim=1)  # each box on its own path: an image's result never depends on its batch
        if bool(whole.any()):
            out = _crop_resize_each(images, boxes, size, whole.tolist())
            if not bool(whole.all()):
                rest = (~whole).nonzero().flatten()
                out[rest] = _roi_resize(images[rest], boxes[rest], size, None if sizes is None else sizes[rest])
            return out.expand(-1, 3, -1, -1) if out.shape[1] == 1 else out
    resized = _roi_resize(images, boxes, size, sizes)
    return resized.expand(-1, 3, -1, -1) if resized.shape[1] == 1 else resized


def _roi_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, sizes: torch.Tensor | None) -> torch.Tensor:
    """``roi_align`` over the padded batch: one kernel for every box (the GPU path, and boxes off the pixel grid)."""
    pixels = images.float()
    if sizes is not None:
        _copy_edges_into_padding(pixels, sizes.to(images.device))
    indexed = torch.cat([torch.arange(len(boxes), device=images.device, dtype=pixels.dtype)[:, None], boxes.to(pixels)], dim=1)
    # sampling_ratio=-1: ceil(box side / size) samples per output pixel and axis; aligned=True: pixel i's centre is i + 0.5
    resized: torch.Tensor = roi_align(pixels, indexed, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    return resized.div_(255).clamp_(0, 1)


def _crop_resize_each(images: torch.Tensor, boxes: torch.Tensor, size: int, rows: list[bool]) -> torch.Tensor:
    """:func:`crop_resize` for whole-pixel boxes on the CPU: each crop sliced out and resized on its own.

    On the CPU ``roi_align`` costs about as much per box as a crop's own
    antialiased resize costs in all, and it first needs the whole padded batch
    in float (measured, 32 crops of 256x341 images to 128 px, one thread: 30
    against 9 ms); a slice of whole pixels resized with
    ``F.interpolate(antialias=True)`` is torchvision's own tensor resize.
    """
    corners = boxes.long().tolist()
    out = torch.empty((images.shape[0], images.shape[1], size, size))
    for index, (x1, y1, x2, y2) in enumerate(corners):
        if rows[index]:  # the other rows are filled by the caller
            crop = images[index : index + 1, :, y1:y2, x1:x2].float().contiguous()  # the resize is faster on channels-first
            out[index : index + 1] = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.div_(255).clamp_(0, 1)


def _copy_edges_into_padding(pixels: torch.Tensor, sizes: torch.Tensor) -> None:
    """Set the row below and the column right of each image to copies of its last row and column, in place.

    Images that fill their slot copy their last row onto itself, which keeps
    the indexing one batched operation with no host synchronisation.
    """
    batch = torch.arange(pixels.shape[0], device=pixels.device)
    for axis, extent in ((2, pixels.shape[2]), (3, pixels.shape[3])):
        real = sizes[:, axis - 2]
        target = real.clamp(max=extent - 1)
        source = target - (real < extent).long()
        if axis == 2:
            pixels[batch, :, target, :] = pixels[batch, :, source, :]
        else:
            pixels[batch, :, :, target] = pixels[batch, :, :, source]


def flip(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image mirrored left-right with probability 1/2 (RandomHorizontalFlip), ``batch`` being ``[B, C, H, W]``."""
    mirrored = torch.rand(batch.shape[0], generator=generator, device=batch.device) < 0.5
    return torch.where(mirrored[:, None, None, None], batch.flip(-1), batch)


@dataclass(frozen=True)
class JitterParams:
    """One colour jitter per image.

    Attributes:
        factors: ``[B, 3]`` brightness, contrast and saturation factors (1:
            unchanged).
        order: ``int64 [B, 3]``, a permutation of the ops (0 brightness, 1
            contrast, 2 saturation) per image, in the order they apply.
    """

    factors: torch.Tensor
    order: torch.Tensor


def jitter_params(
    batch_size: int,
    generator: torch.Generator,
    *,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    device: torch.device | str = "cpu",
) -> JitterParams:
    """ColorJitter's draw per image: factors uniform in ``[1 - x, 1 + x]`` and a uniform random order of the three ops."""
    strengths = torch.tensor([brightness, contrast, saturation], device=device)
    unit = torch.rand((batch_size, 3), generator=generator, device=device)
    factors = 1 - strengths + 2 * strengths * unit
    order = torch.rand((batch_size, 3), generator=generator, device=device).argsort(dim=1)  # uniform permutations
    return JitterParams(factors=factors, order=order)


def apply_jitter(batch: torch.Tensor, params: JitterParams) -> torch.Tensor:
    """The jitter of ``params`` applied to a float RGB batch ``[B, 3, H, W]`` in ``[0, 1]``.

    Each op is torchvision's blend ``factor * image + (1 - factor) * target``
    clamped to ``[0, 1]``: brightness blends with black, contrast with the
    mean of the image's greyscale, saturation with the greyscale. In round
    ``r`` every image applies the op ``params.order[:, r]`` names, as one
    batched blend whose target is chosen per image.
    """
    result = batch
    for step in range(3):
        op = params.order[:, step : step + 1]  # [B, 1]
        factor = params.factors.gather(1, op)[:, :, None, None]  # [B, 1, 1, 1]
        grey = _greyscale(result)
        mean_grey = grey.mean(dim=(1, 2, 3), keepdim=True)
        is_saturation = (op == SATURATION)[:, :, None, None].to(result.dtype)
        is_contrast = (op == CONTRAST)[:, :, None, None].to(result.dtype)
        # the target's share of the blend, (1 - factor) * target, in one pass: grey for saturation, its mean for contrast, 0 for brightness
        target_share = grey.mul_((1 - factor) * is_saturation).add_((1 - factor) * is_contrast * mean_grey)
        result = (result * factor).add_(target_share).clamp_(0, 1)
    return result


def _greyscale(batch: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` of ``[B, 3, H, W]``, as ``[B, 1, H, W]``."""
    red, green, blue = batch.unbind(dim=1)
    return (GREY_WEIGHTS[0] * red + GREY_WEIGHTS[1] * green + GREY_WEIGHTS[2] * blue).unsqueeze(1)


def color_jitter(
    batch: torch.Tensor, generator: torch.Generator, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4
) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation) on a float RGB batch ``[B, 3, H, W]`` in ``[0, 1]``, drawn per image."""
    params = jitter_params(batch.shape[0], generator, brightness=brightness, contrast=contrast, saturation=saturation, device=batch.device)
    return apply_jitter(batch, params)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """The study's mean/std 0.5 normalisation: ``[0, 1]`` to ``[-1, 1]``."""
    return batch.mul(2.0).sub_(1.0)  # (x - 0.5) / 0.5 in one new tensor


@dataclass(frozen=True)
class BatchTransform:
    """The study's training or evaluation transform on a padded ``uint8`` batch.

    Training: random-resized crop (scale 0.08-1, ratio 3/4-4/3), flip and
    colour jitter 0.4, or with ``square_resize`` (VWW) a resize of the whole
    image to a square and a flip. Evaluation: the centred square that a
    resize of the short side to ``ceil(image_size / 0.875)`` and a centre
    crop would keep (their roundings included), or with
    ``square_resize`` the whole image; it draws nothing. Both end with the
    0.5 mean/std normalisation, like
    :func:`neqtune.datasets.samples.train_transform` and ``eval_transform``.
    """

    image_size: int
    _: KW_ONLY
    train: bool
    square_resize: bool = False

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``float32 [B, 3, image_size, image_size]``, normalised, on ``images.device``.

        Args:
            images: ``uint8 [B, C, Hmax, Wmax]`` (see :func:`pad_batch`).
            sizes: each image's ``(height, width)``, ``[B, 2]``.
            generator: on ``images.device``; required for training.
        """
        sizes = sizes.to(images.device)
        if not self.train:
            return normalize(crop_resize(images, self._eval_boxes(sizes), self.image_size, sizes=sizes))
        if generator is None:
            raise ValueError("the training transform draws its augmentation from a torch.Generator; pass one")
        if self.square_resize:
            return normalize(flip(crop_resize(images, full_boxes(sizes), self.image_size, sizes=sizes), generator))
        boxes = random_resized_boxes(sizes, generator)
        batch = flip(crop_resize(images, boxes, self.image_size, sizes=sizes), generator)
        return normalize(color_jitter(batch, generator))

    def _eval_boxes(self, sizes: torch.Tensor) -> torch.Tensor:
        if self.square_resize:
            return full_boxes(sizes)
        return _resized_centre_crop_boxes(sizes, math.ceil(self.image_size / EVAL_RESIZE_RATIO), self.image_size)


def _resized_centre_crop_boxes(sizes: torch.Tensor, short_side: int, crop: int) -> torch.Tensor:
    """The source box of ``Resize(short_side)`` then ``CenterCrop(crop)``, with both of torchvision's roundings.

    :func:`centre_boxes` with ``crop / short_side`` is this box up to those
    roundings, but on small images the centre crop's whole-pixel offset
    (``round(2.5) == 2`` for 32 of 37 pixels) shifts the image by a
    sizeable part of a source pixel, so evaluation reproduces them.
    """
    heights, widths = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    long_side = torch.floor(short_side * torch.maximum(heights, widths) / torch.minimum(heights, widths))
    resized_h = torch.where(widths <= heights, long_side, short_side)
    resized_w = torch.where(widths <= heights, short_side, long_side)
    top, left = torch.round((resized_h - crop) / 2), torch.round((resized_w - crop) / 2)  # half to even, like round()
    scale_y, scale_x = heights / resized_h, widths / resized_w
    return torch.cat([left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y], dim=1).float()
