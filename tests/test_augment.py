"""The batched transforms against torchvision's and PIL's: boxes, resampling, flip, jitter, whole chains, seeds.

Distributions are compared with a two-sample Kolmogorov-Smirnov statistic
against its 0.1 % critical value; every draw is seeded, so the tests are
exact repeats, and the bound says how far apart the samples may honestly be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from neqtune.datasets.augment import (
    BatchTransform,
    JitterParams,
    apply_jitter,
    centre_boxes,
    color_jitter,
    crop_resize,
    flip,
    full_boxes,
    pad_batch,
    random_resized_boxes,
)
from neqtune.datasets.samples import eval_transform, train_transform

KS_CRITICAL_0_1_PERCENT = 1.949  # c(alpha) of the two-sample KS test at alpha = 0.001


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The machine is shared: one thread (conftest restores the count afterwards); torch's global RNG left as found."""
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        yield


def natural_image(height: int, width: int, seed: int, *, grey: bool = False) -> np.ndarray:
    """A smooth, photo-like ``uint8`` image: a few low-frequency waves of random phase, a gradient and mild noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = []
    for _ in range(1 if grey else 3):
        waves = sum(
            rng.uniform(20, 50) * np.sin(2 * np.pi * (rng.uniform(1, 5) * x + rng.uniform(1, 5) * y) + rng.uniform(0, 6)) for _ in range(3)
        )
        channels.append(128 + waves + rng.uniform(-40, 40) * (x - y) + rng.normal(0, 6, (height, width)))
    image = np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)
    return image[..., 0] if grey else image


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ks_statistic(first: torch.Tensor, second: torch.Tensor) -> float:
    """The largest gap between the two samples' empirical distribution functions."""
    first, second = first.double().sort().values, second.double().sort().values
    points = torch.cat([first, second])
    cdf_first = torch.searchsorted(first, points, right=True) / len(first)
    cdf_second = torch.searchsorted(second, points, right=True) / len(second)
    return float((cdf_first - cdf_second).abs().max())


def assert_same_distribution(ours: torch.Tensor, reference: torch.Tensor, what: str) -> None:
    n, m = len(ours), len(reference)
    bound = KS_CRITICAL_0_1_PERCENT * math.sqrt((n + m) / (n * m))
    statistic = ks_statistic(ours, reference)
    assert statistic < bound, f"{what}: KS statistic {statistic:.4f} >= {bound:.4f} (means {ours.mean():.4f} vs {reference.mean():.4f})"


def pil_tensor(image: Image.Image) -> torch.Tensor:
    tensor: torch.Tensor = TF.to_tensor(image)
    return tensor


def one_image_batch(array: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return pad_batch([array])


# --- pad_batch ---------------------------------------------------------------------------------------------------


def test_pad_batch_pads_mixed_sizes_to_the_top_left_and_expands_grey_among_rgb() -> None:
    rgb, grey = natural_image(5, 7, 0), natural_image(6, 3, 1, grey=True)
    images, sizes = pad_batch([rgb, grey])
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 6, 7)
    assert sizes.tolist() == [[5, 7], [6, 3]]
    assert torch.equal(images[0, :, :5, :7], torch.from_numpy(rgb).permute(2, 0, 1))
    assert all(torch.equal(images[1, c, :6, :3], torch.from_numpy(grey)) for c in range(3))
    assert images[0, :, 5:].eq(0).all() and images[1, :, :, 3:].eq(0).all()


def test_pad_batch_stacks_equal_sized_images_without_padding() -> None:
    stack = np.stack([natural_image(28, 28, seed, grey=True) for seed in range(4)])
    images, sizes = pad_batch(stack)
    assert images.shape == (4, 1, 28, 28) and images.is_contiguous()
    assert torch.equal(images[:, 0], torch.from_numpy(stack)) and sizes.tolist() == [[28, 28]] * 4
    listed, listed_sizes = pad_batch(list(stack))
    assert torch.equal(listed, images) and torch.equal(listed_sizes, sizes)
    with pytest.raises(ValueError, match="uint8"):
        pad_batch(stack.astype(np.float32))


# --- random_resized_boxes -----------------------------------------------------------------------------------------

BOX_SIZES = [(375, 500), (100, 400), (28, 28), (333, 250)]  # (100, 400): about 12 % of draws find no fitting box


def torchvision_boxes(height: int, width: int, draws: int) -> torch.Tensor:
    """``draws`` boxes ``(x1, y1, x2, y2)`` from RandomResizedCrop.get_params on a ``height`` x ``width`` image."""
    torch.manual_seed(0)
    image, rows = torch.empty(1, height, width), []
    for _ in range(draws):
        top, left, h, w = T.RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
        rows.append([left, top, left + w, top + h])
    return torch.tensor(rows, dtype=torch.float32)


def box_shape(boxes: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area fraction and log aspect ratio (width / height) of boxes."""
    box_w, box_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return box_w * box_h / (height * width), torch.log(box_w / box_h)


def test_random_resized_boxes_stay_inside_each_real_image_with_integer_corners() -> None:
    sizes = torch.tensor([[375, 500], [28, 28], [20, 400], [400, 20], [1, 1], [7, 3]] * 300)
    boxes = random_resized_boxes(sizes, seeded(0))
    assert boxes.shape == (len(sizes), 4) and boxes.dtype == torch.float32
    assert torch.equal(boxes, boxes.round())
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] > boxes[:, :2]).all()
    assert (boxes[:, 2] <= sizes[:, 1]).all() and (boxes[:, 3] <= sizes[:, 0]).all()


@pytest.mark.parametrize(("height", "width"), BOX_SIZES)
def test_random_resized_box_shapes_and_places_match_torchvision(height: int, width: int) -> None:
    draws = 3000
    ours = random_resized_boxes(torch.tensor([[height, width]] * draws), seeded(1))
    reference = torchvision_boxes(height, width, draws)
    for name, mine, theirs in zip(
        ("area fraction", "log aspect ratio"), box_shape(ours, height, width), box_shape(reference, height, width), strict=True
    ):
        assert_same_distribution(mine, theirs, f"{height}x{width} {name}")
    centre = ((ours[:, 0] + ours[:, 2]) / 2 / width, (reference[:, 0] + reference[:, 2]) / 2 / width)
    assert_same_distribution(*centre, f"{height}x{width} horizontal box centre")


@pytest.mark.parametrize(("height", "width", "box"), [(20, 400, [186, 0, 213, 20]), (400, 20, [0, 186, 20, 213])])
def test_an_image_too_elongated_for_any_attempt_gets_the_centred_fallback_like_torchvision(height: int, width: int, box: list[int]) -> None:
    ours = random_resized_boxes(torch.tensor([[height, width]] * 50), seeded(2))
    assert (ours == torch.tensor(box, dtype=torch.float32)).all()
    assert (torchvision_boxes(height, width, 5) == torch.tensor(box, dtype=torch.float32)).all()


def test_centre_and_full_boxes() -> None:
    sizes = torch.tensor([[375, 500], [40, 30]])
    assert centre_boxes(sizes, 0.5).tolist() == [[156.25, 93.75, 343.75, 281.25], [7.5, 12.5, 22.5, 27.5]]
    assert full_boxes(sizes).tolist() == [[0, 0, 500, 375], [0, 0, 30, 40]]


# --- crop_resize and the evaluation chain ---------------------------------------------------------------------------

# (source size, output side, bound on mean |difference| in [0, 1] units); measured means 0.0019 (375x500 -> 64),
# 0.0024 (375x500 -> 160), 0.0012 (28x28 -> 32) and 0.0012 (40x30 -> 96), maxima 0.013 and 0.004: PIL's triangle
# filter against roi_align's box of bilinear samples when shrinking, PIL's rounding to uint8 when enlarging.
RESIZES = [((375, 500), 64, 0.005), ((375, 500), 160, 0.005), ((28, 28), 32, 0.003), ((40, 30), 96, 0.003)]


@pytest.mark.parametrize(("source", "side", "bound"), RESIZES)
def test_crop_resize_of_the_whole_image_matches_pils_antialiased_bilinear_resize(source: tuple[int, int], side: int, bound: float) -> None:
    array = natural_image(*source, seed=3)
    images, sizes = one_image_batch(array)
    ours = crop_resize(images, full_boxes(sizes), side)[0]
    reference = pil_tensor(Image.fromarray(array).resize((side, side), Image.Resampling.BILINEAR))
    difference = (ours - reference).abs()
    assert ours.shape == (3, side, side) and 0 <= ours.min() and ours.max() <= 1
    assert difference.mean() < bound and difference.max() < 0.04, f"mean {difference.mean():.4f}, max {difference.max():.4f}"


# (source size, image size, square_resize, bound on mean |difference| after normalisation, in [-1, 1] units);
# measured means 0.0039, 0.0050, 0.0042, 0.0024 and 0.0023, maxima up to 0.035.
EVAL_CASES = [
    ((375, 500), 64, False, 0.01),
    ((500, 375), 128, False, 0.01),
    ((375, 500), 96, True, 0.01),
    ((28, 28), 32, False, 0.006),
    ((240, 320), 224, False, 0.006),
]


@pytest.mark.parametrize(("source", "image_size", "square_resize", "bound"), EVAL_CASES)
def test_eval_chain_matches_eval_transform(source: tuple[int, int], image_size: int, square_resize: bool, bound: float) -> None:
    arrays = [natural_image(*source, seed=seed) for seed in range(3)]
    images, sizes = pad_batch(arrays)
    ours = BatchTransform(image_size, train=False, square_resize=square_resize)(images, sizes)
    pil = eval_transform(image_size, square_resize=square_resize)
    reference = torch.stack([pil(Image.fromarray(array)) for array in arrays])
    difference = (ours - reference).abs()
    assert ours.shape == reference.shape == (3, 3, image_size, image_size)
    assert difference.mean() < bound and difference.max() < 0.1, f"mean {difference.mean():.4f}, max {difference.max():.4f}"


def test_a_padded_batch_of_mixed_sizes_resamples_each_image_as_it_would_alone() -> None:
    arrays = [natural_image(37, 50, 4), natural_image(64, 21, 5), natural_image(12, 80, 6), natural_image(64, 80, 7)]
    images, sizes = pad_batch(arrays)
    boxes = torch.cat([random_resized_boxes(sizes, seeded(8)), full_boxes(sizes), centre_boxes(sizes, 0.875)])
    batch = crop_resize(images.repeat(3, 1, 1, 1), boxes, 24, sizes=sizes.repeat(3, 1))
    for row, box in enumerate(boxes):
        alone, _ = one_image_batch(arrays[row % len(arrays)])
        assert torch.allclose(batch[row], crop_resize(alone, box[None], 24)[0], atol=1e-6), f"image {row % len(arrays)}, box {box.tolist()}"
    transform = BatchTransform(40, train=False)
    for array, together in zip(arrays, transform(images, sizes), strict=True):
        assert torch.allclose(together, transform(*one_image_batch(array))[0], atol=1e-6)


def test_grey_images_come_out_as_three_equal_channels_in_both_chains() -> None:
    images, sizes = pad_batch(np.stack([natural_image(28, 28, seed, grey=True) for seed in range(4)]))
    for transform in (BatchTransform(32, train=True), BatchTransform(32, train=False)):
        batch = transform(images, sizes, seeded(9))
        assert batch.shape == (4, 3, 32, 32)
        assert torch.equal(batch[:, 0], batch[:, 1]) and torch.equal(batch[:, 1], batch[:, 2])


# --- flip -------------------------------------------------------------------------------------------------------------


def test_flip_mirrors_about_half_of_the_images() -> None:
    batch = torch.rand(400, 3, 4, 5, generator=seeded(10))
    flipped = flip(batch, seeded(11))
    mirrored = (flipped == batch.flip(-1)).flatten(1).all(dim=1)
    kept = (flipped == batch).flatten(1).all(dim=1)
    assert (mirrored ^ kept).all()
    assert abs(int(mirrored.sum()) - 200) < 3 * 10  # binomial(400, 1/2): standard deviation 10


# --- colour jitter ------------------------------------------------------------------------------------------------

OPS: list[Callable[[torch.Tensor, float], torch.Tensor]] = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]


def forced(factors: list[float], order: list[int], batch_size: int) -> JitterParams:
    return JitterParams(factors=torch.tensor([factors] * batch_size), order=torch.tensor([order] * batch_size))


@pytest.mark.parametrize("op", [0, 1, 2])
@pytest.mark.parametrize("factor", [0.6, 1.35])
def test_one_forced_jitter_op_equals_torchvisions_functional_op(op: int, factor: float) -> None:
    batch = torch.stack([pil_tensor(Image.fromarray(natural_image(20, 30, seed))) for seed in range(3)])
    factors = [1.0, 1.0, 1.0]
    factors[op] = factor
    ours = apply_jitter(batch, forced(factors, [op, (op + 1) % 3, (op + 2) % 3], len(batch)))
    assert torch.allclose(ours, OPS[op](batch, factor), atol=1e-6)


def test_jitter_ops_apply_in_each_images_own_order() -> None:
    batch = torch.stack([pil_tensor(Image.fromarray(natural_image(20, 30, seed))) for seed in range(2)])
    factors, orders = [[1.3, 0.7, 1.4], [0.65, 1.3, 0.6]], [[2, 0, 1], [1, 2, 0]]
    ours = apply_jitter(batch, JitterParams(factors=torch.tensor(factors), order=torch.tensor(orders)))
    for image, mine, image_factors, order in zip(batch, ours, factors, orders, strict=True):
        reference = image
        for op in order:
            reference = OPS[op](reference, image_factors[op])
        assert torch.allclose(mine, reference, atol=1e-6)


def test_full_jitter_spreads_brightness_and_colourfulness_like_colorjitter() -> None:
    draws = 250
    images = torch.stack([pil_tensor(Image.fromarray(natural_image(16, 16, seed))) for seed in range(8)])
    ours = color_jitter(images.repeat(draws, 1, 1, 1), seeded(12))
    torch.manual_seed(0)
    jitter = T.ColorJitter(0.4, 0.4, 0.4)
    reference = torch.stack([jitter(image) for _ in range(draws) for image in images])
    for name, measure in (("mean brightness", mean_brightness), ("colourfulness", colourfulness)):
        offset = measure(images).repeat(draws)  # each image's own level, so that images pool
        assert_same_distribution(measure(ours) - offset, measure(reference) - offset, name)


def mean_brightness(batch: torch.Tensor) -> torch.Tensor:
    return batch.mean(dim=(1, 2, 3))


def colourfulness(batch: torch.Tensor) -> torch.Tensor:
    return (batch - batch.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3))


# --- whole training chain -------------------------------------------------------------------------------------------


def test_training_chain_matches_train_transform_in_distribution() -> None:
    draws, image_size = 400, 32
    array = natural_image(96, 128, 13)
    images, sizes = pad_batch(np.stack([array] * draws))
    ours = BatchTransform(image_size, train=True)(images, sizes, seeded(14))
    torch.manual_seed(0)
    pil, source = train_transform(image_size, square_resize=False), Image.fromarray(array)
    reference = torch.stack([pil(source) for _ in range(draws)])
    for name, measure in (("mean", mean_brightness), ("std", lambda batch: batch.std(dim=(1, 2, 3))), ("colourfulness", colourfulness)):
        assert_same_distribution(measure(ours), measure(reference), f"per-image {name}")


def test_square_resize_training_is_the_square_resize_or_its_mirror() -> None:
    images, sizes = pad_batch([natural_image(50, 70, seed) for seed in range(6)])
    plain = BatchTransform(40, train=False, square_resize=True)(images, sizes)
    trained = BatchTransform(40, train=True, square_resize=True)(images, sizes, seeded(15))
    for mine, still in zip(trained, plain, strict=True):
        assert torch.equal(mine, still) or torch.equal(mine, still.flip(-1))


def test_the_same_seed_repeats_the_training_chain_and_another_seed_does_not() -> None:
    images, sizes = pad_batch([natural_image(40, 60, 16), natural_image(30, 30, 17, grey=True)])
    transform = BatchTransform(24, train=True)
    first = transform(images, sizes, seeded(18))
    assert torch.equal(first, transform(images, sizes, seeded(18)))
    assert not torch.allclose(first, transform(images, sizes, seeded(19)))
    assert first.shape == (2, 3, 24, 24) and first.min() >= -1 and first.max() <= 1


def test_evaluation_draws_nothing_and_training_needs_a_generator() -> None:
    images, sizes = pad_batch([natural_image(40, 60, 20)])
    generator = seeded(21)
    state = generator.get_state()
    BatchTransform(24, train=False)(images, sizes, generator)
    assert torch.equal(generator.get_state(), state)
    with pytest.raises(ValueError, match="Generator"):
        BatchTransform(24, train=True)(images, sizes)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_chains_run_on_cuda_with_a_cuda_generator() -> None:
    images, sizes = pad_batch([natural_image(40, 60, 22), natural_image(64, 48, 23)])
    cuda_images = images.cuda()
    train = BatchTransform(32, train=True)
    first = train(cuda_images, sizes, torch.Generator(device="cuda").manual_seed(24))
    again = train(cuda_images, sizes, torch.Generator(device="cuda").manual_seed(24))
    assert first.device.type == "cuda" and torch.equal(first, again) and first.shape == (2, 3, 32, 32)
    evaluate = BatchTransform(32, train=False)
    assert torch.allclose(evaluate(cuda_images, sizes).cpu(), evaluate(images, sizes), atol=1e-5)
