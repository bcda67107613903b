"""Properties of drawn shapes against their geometry."""

import numpy as np
import pytest

from gradcamo.exaggerate.properties import RIM_WIDTH, measure, property_names

SIZE = 64


def _grid():
    y, x = np.mgrid[:SIZE, :SIZE].astype(float)
    return y - SIZE / 2 + 0.5, x - SIZE / 2 + 0.5


def _image(shape, inside=100.0, background=10.0, channels=2):
    """(C, H, W): channel k is (k + 1) * inside on the shape, plus noise-free background."""
    return np.stack([np.where(shape, (k + 1) * inside, background) for k in range(channels)])


def _disc(radius):
    y, x = _grid()
    return np.hypot(y, x) < radius


def _star(arms, inner, outer):
    y, x = _grid()
    angle = np.arctan2(y, x)
    reach = inner + (outer - inner) * np.clip(np.cos(arms * angle), 0, 1) ** 8
    return np.hypot(y, x) < reach


def test_disc():
    radius = 14.0
    values, masks = measure(_image(_disc(radius))[None])
    np.testing.assert_array_equal(masks[0], _disc(radius))
    assert values["area"][0] == pytest.approx(np.pi * radius**2, rel=0.02)
    assert values["perimeter"][0] == pytest.approx(2 * np.pi * radius, rel=0.05)
    assert values["solidity"][0] > 0.97 and values["protrusion"][0] < 0.03
    assert values["eccentricity"][0] < 0.1
    assert values["intensity_inside_c0"][0] == 100.0 and values["intensity_inside_c1"][0] == 200.0


def test_ellipse_eccentricity():
    y, x = _grid()
    a, b = 20.0, 10.0
    values, _ = measure(_image((x / a) ** 2 + (y / b) ** 2 < 1)[None])
    assert values["eccentricity"][0] == pytest.approx(np.sqrt(1 - (b / a) ** 2), abs=0.01)
    assert values["area"][0] == pytest.approx(np.pi * a * b, rel=0.02)


def test_star_has_lower_solidity_and_more_protrusion_than_a_disc():
    star, disc = _star(5, 8, 26), _disc(12)
    values, _ = measure(np.stack([_image(disc), _image(star)]))
    assert values["solidity"][1] < 0.8 < 0.97 < values["solidity"][0]
    assert values["protrusion"][1] > 0.2
    np.testing.assert_allclose(values["protrusion"], 1 - values["solidity"])


def test_bright_rim_and_dim_centre_is_one_filled_cell():
    disc = _disc(14)
    rim = disc & ~_disc(14 - 4)
    image = _image(disc, inside=40.0) + 100.0 * rim  # the centre is dimmer than Otsu's threshold
    values, masks = measure(image[None])
    np.testing.assert_array_equal(masks[0], disc)
    # rim = the disc's pixels within RIM_WIDTH 4-connected steps of the outside, all on the bright ring
    eroded = disc.copy()
    for _ in range(RIM_WIDTH):
        eroded = eroded & np.roll(eroded, 1, 0) & np.roll(eroded, -1, 0) & np.roll(eroded, 1, 1) & np.roll(eroded, -1, 1)
    expected_rim = disc & ~eroded
    assert values["intensity_rim_c0"][0] == pytest.approx(image[0][expected_rim].mean(), rel=1e-12)
    assert values["intensity_rim_c0"][0] == 140.0
    assert values["intensity_inside_c0"][0] == pytest.approx(image[0][disc].mean(), rel=1e-12)


def test_the_cell_under_the_centre_is_measured_not_a_bigger_neighbour():
    y, x = _grid()
    small = np.hypot(y, x) < 6
    big = np.hypot(y - 20, x - 20) < 10
    values, masks = measure(_image(small | big)[None])
    np.testing.assert_array_equal(masks[0], small)


def test_constant_image_gives_nan_and_3d_uses_the_projection():
    values, masks = measure(np.full((1, 2, SIZE, SIZE), 5.0))
    assert not masks.any() and all(np.isnan(values[name][0]) for name in property_names(2))
    volume = np.zeros((2, 4, SIZE, SIZE))
    volume[:, 2] = _image(_disc(10))
    values3d, masks3d = measure(volume[None])
    values2d, _ = measure(_image(_disc(10))[None])
    np.testing.assert_array_equal(masks3d[0], _disc(10))
    assert {k: v[0] for k, v in values3d.items()} == {k: v[0] for k, v in values2d.items()}
