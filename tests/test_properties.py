"""Property-based tests (hypothesis) of the data layer: reader, clustering, normalisation,
projection — random shapes, empty showers, single-point showers, showers outside the box."""

from __future__ import annotations

import tempfile
from pathlib import Path

import h5py
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from calogen.data.clustering import cluster_steps
from calogen.data.io import make_showers, read_showers, write_showers
from calogen.data.normalisation import Normalisation
from calogen.data.packed import pack, unpack
from calogen.geometry import ild_ecal, project, slab


def _f32(value: float) -> float:
    """Bound exactly representable in float32 (hypothesis requires it for width=32)."""
    return float(np.float32(value))


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def showers(draw, max_showers: int = 5, max_points: int = 40, half_width: float = 250.0):
    """Random showers: some empty, some single-point, some partly outside the box."""
    n = draw(st.integers(0, max_showers))
    counts = draw(st.lists(st.integers(0, max_points), min_size=n, max_size=n))
    width = max(counts, default=0)
    points = np.zeros((n, width, 4), dtype=np.float32)
    for i, count in enumerate(counts):
        if count == 0:
            continue
        xy = draw(
            arrays(
                np.float32,
                (count, 2),
                elements=st.floats(_f32(-half_width), _f32(half_width), width=32),
            )
        )
        layer = draw(arrays(np.int64, count, elements=st.integers(0, 29)))
        energy = draw(
            arrays(np.float32, count, elements=st.floats(_f32(1e-6), _f32(0.05), width=32))
        )
        points[i, :count, :2] = xy
        points[i, :count, 2] = layer
        points[i, :count, 3] = energy
    energies = draw(arrays(np.float32, n, elements=st.floats(_f32(1.0), _f32(100.0), width=32)))
    return make_showers(points, counts, energies)


@SETTINGS
@given(showers())
def test_write_read_round_trip(s) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_showers(Path(tmp) / "s.h5", s)
        back = read_showers(path)
    assert len(back) == len(s)
    np.testing.assert_array_equal(back._num_points, s._num_points)
    np.testing.assert_array_equal(pack(back).points, pack(s).points)


@SETTINGS
@given(showers(), st.integers(0, 50))
def test_legacy_reader_any_padding(s, extra: int) -> None:
    packed = pack(s)
    width = int(s._num_points.max(initial=0)) + extra
    events = np.zeros((len(s), 4, max(width, 1)), dtype=np.float32)
    for i in range(len(s)):
        pts = packed.points[packed.shower == i]
        if len(pts):
            events[i, :, -len(pts) :] = pts.T
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "legacy.h5"
        with h5py.File(path, "w") as f:
            f["events"] = events
            f["energy"] = s.energies
        back = read_showers(path)
    np.testing.assert_array_equal(back._num_points, s._num_points)
    np.testing.assert_array_equal(pack(back).points, packed.points)


@SETTINGS
@given(showers())
def test_pack_unpack_inverse(s) -> None:
    again = unpack(pack(s), s.energies)
    np.testing.assert_array_equal(again._num_points, s._num_points)
    np.testing.assert_array_equal(pack(again).points, pack(s).points)


@SETTINGS
@given(showers(), st.integers(1, 8))
def test_clustering_conserves_energy_inside_the_box(s, granularity: int) -> None:
    result = cluster_steps(s, granularity=granularity)
    packed = pack(s)
    inside = (np.abs(packed.points[:, 0]) < 200) & (np.abs(packed.points[:, 1]) < 200)
    assert result.dropped_points == int((~inside).sum())
    out = pack(result.showers)
    assert np.all(np.abs(out.points[:, :2]) < 200 + 5.0883 / granularity)
    np.testing.assert_allclose(
        np.bincount(out.shower, weights=out.points[:, 3], minlength=len(s)),
        np.bincount(packed.shower[inside], weights=packed.points[inside, 3], minlength=len(s)),
        rtol=1e-5,
        atol=1e-9,
    )
    assert np.all(result.showers._num_points <= s._num_points)


@SETTINGS
@given(showers(half_width=199.0))
def test_normalisation_round_trip(s) -> None:
    norm = Normalisation(e_min_gev=1e-6, e_max_gev=0.06)
    pts = pack(s).points
    z = norm.forward(pts, rng=np.random.default_rng(0))
    assert np.all(np.abs(z) <= 1.0 + 1e-6)
    back = norm.inverse(z)
    np.testing.assert_array_equal(back[:, 2], pts[:, 2])
    np.testing.assert_allclose(back[:, :2], pts[:, :2], atol=1e-3)
    np.testing.assert_allclose(back[:, 3], pts[:, 3], rtol=1e-3)


@SETTINGS
@given(
    showers(),
    st.tuples(st.floats(-100, 100), st.floats(-100, 100)),
    st.sampled_from(["slab", "ild"]),
)
def test_projection_conserves_energy_up_to_gaps_and_threshold(s, impact, name: str) -> None:
    geometry = slab() if name == "slab" else ild_ecal()
    hits = project(s, geometry, impact, threshold_mev=0.0)
    visible = s.points[..., 3].sum(axis=1).astype(np.float64) * 1000
    deposited = np.bincount(hits.shower, weights=hits.energy_mev, minlength=len(s))
    assert hits.n_showers == len(s)
    assert np.all(deposited <= visible * (1 + 1e-5) + 1e-6)
    if name == "slab":  # no dead area: all energy is seen
        np.testing.assert_allclose(deposited, visible, rtol=1e-5, atol=1e-6)
    with_threshold = project(s, geometry, impact)
    assert np.all(with_threshold.energy_mev >= 0.1)
    assert len(with_threshold) <= len(hits)
