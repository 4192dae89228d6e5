"""``calogen export``: the exported default model reproduces the Python sampler's showers.

The reference is :meth:`CaloClouds2.generate` with a seeded generator; the exported model gets
the same noise (flow noise, initial point noise, one re-noising per further consistency
step, drawn in that order) laid out per shower.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from calogen.calibration import distribute_counts as distribute_counts_np
from calogen.cli import main
from calogen.export import (
    INFO_NAME,
    N_LAYERS,
    build_pipeline,
    decode,
    distribute_counts,
    export_model,
)

ENERGIES = np.array([10.0, 47.5, 90.0, 25.25])  # exact in float32


@pytest.fixture(scope="module")
def pipeline():
    torch.set_num_threads(1)
    pipe, _ = build_pipeline(None)
    return pipe


def python_noise(pipeline, gen: torch.Generator, n_showers: int, n_points: int):  # type: ignore[no-untyped-def]
    """``(flow_noise, [point noise per tensor])`` in :meth:`CaloClouds2.generate`'s order: the
    Shower Flow's noise, the points' noise, then the two mirror values per shower (which the
    exported model takes as the last two columns of ``flow_noise``)."""
    flow_dim = pipeline.shower_flow.dim
    flow_noise = torch.randn((n_showers, flow_dim), generator=gen)
    noises = [torch.randn((n_points, 4), generator=gen) for _ in range(pipeline.noise_tensors)]
    if pipeline.mirror:
        flow_noise = torch.cat([flow_noise, torch.randn((n_showers, 2), generator=gen)], 1)
    assert flow_noise.shape[1] == pipeline.flow_features
    return flow_noise, noises


@pytest.fixture(scope="module")
def reference(pipeline):
    """Python showers and the exported model's inputs carrying the same noise."""
    from calogen.models.registry import load_generator

    model = load_generator(None).model
    seed = 123
    packed, info = model.generate(ENERGIES, torch.Generator().manual_seed(seed))
    counts = info["n_per_layer"].sum(1)
    total = int(counts.sum())
    gen = torch.Generator().manual_seed(seed)
    flow_noise, noises = python_noise(pipeline, gen, len(ENERGIES), total)
    point_noise = torch.zeros((pipeline.noise_tensors, len(ENERGIES), pipeline.max_points, 4))
    offsets = np.concatenate(([0], np.cumsum(counts)))
    for b in range(len(ENERGIES)):
        for k, noise in enumerate(noises):
            point_noise[k, b, : counts[b]] = noise[offsets[b] : offsets[b + 1]]
    inputs = (torch.as_tensor(ENERGIES, dtype=torch.float32), flow_noise, point_noise)
    showers = [packed.points[packed.shower == b] for b in range(len(ENERGIES))]
    return inputs, showers


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    paths = {}
    for fmt, name in (("torchscript", "model.pt"), ("onnx", "model.onnx")):
        if fmt == "onnx":
            pytest.importorskip("onnx")
        paths[fmt] = folder / name
        export_model(None, fmt, paths[fmt])
    return paths


def _check_layout(flat: np.ndarray, max_points: int) -> None:
    assert flat.shape[1] == N_LAYERS + 4 * max_points
    for counts, points in decode(flat):
        assert np.all(counts >= 0) and np.all(counts == np.rint(counts))
        assert np.all(points[:, 3] > 0)  # every listed point carries energy (GeV)
        # grouped by layer, in the order of the counts
        expected = np.repeat(np.arange(N_LAYERS), counts.astype(int)).astype(np.float32)
        np.testing.assert_array_equal(points[:, 2], expected)
    for row in flat:  # zero padding after the last point
        n = int(row[:N_LAYERS].sum())
        assert np.all(row[N_LAYERS + 4 * n :] == 0)


def _compare(flat: np.ndarray, showers: list[np.ndarray], atol_mm: float, rtol_e: float) -> None:
    """Same points per layer; every Python point has an exported twin within ``atol_mm`` in
    the same layer with the same energy (up to ``rtol_e``).

    The Python sampler merges the ConcatSquash gates into the weights (another float rounding
    than the exported graph's), so two points of nearly equal depth at a layer edge may swap
    layers: at most 0.2 % of the points may go unmatched.
    """
    for (counts, points), ref in zip(decode(flat), showers, strict=True):
        ref_counts = np.bincount(ref[:, 2].astype(int), minlength=N_LAYERS)
        np.testing.assert_array_equal(counts, ref_counts)
        # the energy (GeV x 100) is a coordinate too: the halo's clumps can put two points
        # within 1e-6 mm of each other, and only their energies tell their twins apart
        tree = cKDTree(np.c_[points[:, :2], points[:, 2] * 1e4, points[:, 3] * 1e2])
        dist, idx = tree.query(np.c_[ref[:, :2], ref[:, 2] * 1e4, ref[:, 3] * 1e2])
        matched = dist <= atol_mm
        assert matched.mean() >= 0.998
        assert len(np.unique(idx[matched])) == matched.sum()
        np.testing.assert_allclose(points[idx, 3][matched], ref[matched, 3], rtol=rtol_e)
        layer_e = np.bincount(points[:, 2].astype(int), points[:, 3], minlength=N_LAYERS)
        ref_e = np.bincount(ref[:, 2].astype(int), ref[:, 3], minlength=N_LAYERS)
        np.testing.assert_allclose(layer_e, ref_e, rtol=1e-5, atol=1e-9)


def test_distribute_counts_matches_numpy():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 6, size=(200, N_LAYERS))  # many equal counts: ties in remainders
    counts[:3] = 0  # empty rows
    totals = rng.uniform(0, 300, size=200)
    expected = distribute_counts_np(counts, totals)
    got = distribute_counts(torch.as_tensor(counts, dtype=torch.float64), torch.as_tensor(totals))
    np.testing.assert_array_equal(got.numpy().astype(np.int64), expected)


def test_the_default_exports_its_axis_tilt(pipeline):
    """The parity tests below cover the axis tilt: the shipped default has one, with centre-
    of-gravity offsets for inclined showers (their DDML twins in tests/test_export_ddml.py),
    and the pipeline's interpolation is np.interp's."""
    from calogen.models.registry import load_generator

    tilt = load_generator(None).model.axis_tilt
    assert pipeline.has_axis_tilt and tilt is not None and tilt.theta_nodes_deg.size > 1
    energy = torch.tensor([5.0, 10.0, 33.3, 50.0, 79.9, 95.0])
    got = pipeline._interpolate(energy, pipeline.tilt_nodes, pipeline.tilt_widths, pipeline.tilt_k)
    want = np.interp(energy.double().numpy(), tilt.energy_nodes_gev, tilt.k_per_mm)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_eager_pipeline_is_the_python_sampler(pipeline, reference):
    inputs, showers = reference
    with torch.no_grad():
        flat = pipeline(*inputs).numpy()
    _check_layout(flat, pipeline.max_points)
    _compare(flat, showers, atol_mm=1e-3, rtol_e=1e-4)


def test_torchscript_parity(exported, reference, pipeline):
    inputs, showers = reference
    model = torch.jit.load(str(exported["torchscript"]))
    with torch.no_grad():
        flat = model(*inputs).numpy()
    _check_layout(flat, pipeline.max_points)
    _compare(flat, showers, atol_mm=1e-3, rtol_e=1e-4)
    # one shower at a time (DDML calls per particle) gives the same shower
    with torch.no_grad():
        single = model(inputs[0][1:2], inputs[1][1:2], inputs[2][:, 1:2]).numpy()
    _compare(single, showers[1:2], atol_mm=1e-3, rtol_e=1e-4)  # other matmul blocking
    extra = {INFO_NAME: ""}
    torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    info = json.loads(extra[INFO_NAME])
    assert info["max_points"] == pipeline.max_points
    assert info["output_size"] == N_LAYERS + 4 * pipeline.max_points
    assert info["units"]["E"] == "GeV"


def test_onnx_parity(exported, reference, pipeline):
    ort = pytest.importorskip("onnxruntime")
    inputs, showers = reference
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(exported["onnx"]), options, providers=["CPUExecutionProvider"]
    )
    feed = dict(
        zip(("energy", "flow_noise", "point_noise"), (t.numpy() for t in inputs), strict=True)
    )
    flat = session.run(None, feed)[0]
    _check_layout(flat, pipeline.max_points)
    _compare(flat, showers, atol_mm=1e-3, rtol_e=1e-4)


def test_onnx_runs_without_torch(exported, pipeline):
    pytest.importorskip("onnxruntime")
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        import onnxruntime as ort
        session = ort.InferenceSession({str(exported["onnx"])!r},
                                       providers=["CPUExecutionProvider"])
        meta = session.get_modelmeta().custom_metadata_map
        info = json.loads(meta["{INFO_NAME}"])
        rng = np.random.default_rng(0)
        k, d, m = info["noise_tensors"], info["flow_features"], info["max_points"]
        feed = {{
            "energy": np.array([10.0, 90.0], np.float32),
            "flow_noise": rng.standard_normal((2, d)).astype(np.float32),
            "point_noise": rng.standard_normal((k, 2, m, 4)).astype(np.float32),
        }}
        out = session.run(None, feed)[0]
        assert "torch" not in sys.modules, "torch was imported"
        counts = out[:, :30].sum(1)
        print(json.dumps({{"shape": list(out.shape), "counts": counts.tolist()}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, N_LAYERS + 4 * pipeline.max_points]
    low, high = report["counts"]
    assert 0 < low < high  # 90 GeV showers have more points than 10 GeV ones


def test_cli_export(tmp_path, capsys):
    out = tmp_path / "small.pt"
    assert main(["export", "--format", "torchscript", "--max-points", "3000", "-o", str(out)]) == 0
    assert "max_points" not in capsys.readouterr().err
    assert out.exists() and not list(tmp_path.glob(".*partial"))
    extra = {INFO_NAME: ""}
    model = torch.jit.load(str(out), _extra_files=extra)
    energy = torch.tensor([30.0])
    d = json.loads(extra[INFO_NAME])["flow_features"]
    flow_noise = torch.randn(1, d, generator=torch.Generator().manual_seed(1))
    point_noise = torch.randn(3, 1, 3000, 4, generator=torch.Generator().manual_seed(2))
    flat = model(energy, flow_noise, point_noise).numpy()
    _check_layout(flat, 3000)
    assert main(["export", "--format", "torchscript", "-o", str(out), "--overwrite", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_points"] == 6000  # the model's maximum


def test_cli_export_errors(tmp_path, capsys):
    assert main(["export", "--format", "onnx", "-o", str(tmp_path / "no" / "m.onnx")]) == 2
    assert "output folder does not exist" in capsys.readouterr().err
    existing = tmp_path / "existing.pt"
    existing.write_bytes(b"precious")
    assert main(["export", "--format", "torchscript", "-o", str(existing)]) == 2
    assert "file exists (use --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"precious"
    assert main(["export", "--format", "onnx", "--model", str(tmp_path), "-o", "m.onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("calogen: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_export_follows_normalisation_and_occupancy_options(tmp_path):
    """A model with the radial (asinh) normalisation, a refined occupancy correction, the
    core's azimuths spread evenly in energy and clumps in the halo: the exported ONNX graph
    still gives the Python showers."""
    ort = pytest.importorskip("onnxruntime")
    import dataclasses
    import shutil

    from calogen.calibration import OccupancyCorrection
    from calogen.data.normalisation import Normalisation
    from calogen.models.registry import DEFAULT_MODEL_DIR, load_generator

    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL_DIR, folder)
    info = json.loads((folder / "model.json").read_text())
    if "core_radius_mm" in {f.name for f in dataclasses.fields(Normalisation)}:
        info["normalisation"]["core_radius_mm"] = 5.0
        info["config"]["core_radius_mm"] = 5.0
    if "p_refine" in {f.name for f in dataclasses.fields(OccupancyCorrection)}:
        info["occupancy"]["p_refine"] = [0.01, -0.05, 0.02]
    info["core_azimuth_radius_mm"] = 3.0  # the core's azimuths spread evenly in energy
    # groups of three halo points share an azimuth, of five from layer 18 on
    info["halo_clump"] = [3] * 18 + [5] * 12
    (folder / "model.json").write_text(json.dumps(info))

    energies = np.array([15.0, 80.0])
    model = load_generator(folder).model
    packed, extra = model.generate(energies, torch.Generator().manual_seed(5))
    counts = extra["n_per_layer"].sum(1)
    pipeline, _ = build_pipeline(folder)
    gen = torch.Generator().manual_seed(5)
    flow_noise, noises = python_noise(pipeline, gen, 2, int(counts.sum()))
    k = pipeline.noise_tensors
    point_noise = torch.zeros((k, 2, pipeline.max_points, 4))
    for k, noise in enumerate(noises):
        point_noise[k, 0, : counts[0]] = noise[: counts[0]]
        point_noise[k, 1, : counts[1]] = noise[counts[0] :]
    showers = [packed.points[packed.shower == b] for b in range(2)]

    out = tmp_path / "model.onnx"
    export_model(folder, "onnx", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    feed = {
        "energy": energies.astype(np.float32),
        "flow_noise": flow_noise.numpy(),
        "point_noise": point_noise.numpy(),
    }
    _compare(session.run(None, feed)[0], showers, atol_mm=1e-3, rtol_e=1e-4)


@pytest.mark.parametrize(
    ("depth_relative", "classes"),
    [(False, ()), (True, ()), (True, ("depth", "visible")), (False, ("visible",))],
)
def test_radial_correction_in_the_pipeline_matches_numpy(
    depth_relative: bool, classes: tuple[str, ...]
) -> None:
    """The exported radial quantile map equals :meth:`RadialCorrection.apply` (layer groups
    by layer index, or relative to each shower's depth; with shower classes)."""
    from calogen.calibration import RadialCorrection
    from calogen.export import ShowerPipeline
    from calogen.models.registry import load_generator

    rng = np.random.default_rng(3)

    def showers(width: float, n: int, energies):  # type: ignore[no-untyped-def]
        pts = np.zeros((n * 300, 4))
        pts[:, :2] = rng.normal(0.0, width, size=(n * 300, 2))
        pts[:, 2] = rng.integers(0, 30, size=n * 300)
        pts[:, 3] = rng.exponential(1e-3, size=n * 300)
        return pts, np.repeat(np.arange(n), 300), energies

    energies = rng.uniform(10, 90, 100)
    synthetic = RadialCorrection.fit(
        showers(2.0, 100, energies),
        showers(4.0, 100, energies),
        depth_relative=depth_relative,
        shower_classes=classes,
        theta_deg=rng.uniform(0.0, 60.0, 100),  # the classes' trend in 1 / cos(theta) - 1
    )
    if classes:
        assert synthetic.shower_classes is not None and synthetic.n_groups == 6 * (
            3 ** len(classes)
        )
    model = load_generator(None).model
    original, model.radial = model.radial, synthetic
    binned, model.binned = model.binned, []  # one map, applied bin by bin (as apply())
    energy_mode, model.radial_energy = model.radial_energy, "bins"
    try:
        pipe = ShowerPipeline(model, max_points=300)
    finally:
        model.radial, model.binned, model.radial_energy = original, binned, energy_mode
    points, shower, _ = showers(4.0, 6, energies[:6])
    points[:5, :2] = 0.0  # points on the axis stay there
    points[5:10, :2] *= 1e-4  # below the first quantile
    points[10:15, :2] *= 1e3  # beyond the last
    points = points.astype(np.float32)
    theta = rng.uniform(0.0, 60.0, 6)
    if classes:  # the six showers fall into more than one class
        found = synthetic.shower_classes.classify(points, shower, energies[:6], theta)
        assert np.unique(found).size > 1
    got = pipe._radial(
        torch.as_tensor(points.reshape(6, 300, 4)),
        torch.as_tensor(points[:, 2].reshape(6, 300)),
        torch.as_tensor(energies[:6], dtype=torch.float32),
        pipe._angle_weights(torch.zeros(6)),  # no angle bins
        torch.as_tensor(points[:, 3].reshape(6, 300)),
        torch.as_tensor(theta, dtype=torch.float32),
    ).numpy()
    expected = points.copy()
    theta32 = theta.astype(np.float32).astype(np.float64)  # as the exported module gets it
    synthetic.apply(expected, shower, energies[:6].astype(np.float32), theta32)
    np.testing.assert_allclose(got.reshape(-1, 4), expected, rtol=1e-5, atol=1e-5)
    pipe.onnx = True  # the ONNX form (comparisons instead of searchsorted): the same map
    got_onnx = pipe._radial(
        torch.as_tensor(points.reshape(6, 300, 4)),
        torch.as_tensor(points[:, 2].reshape(6, 300)),
        torch.as_tensor(energies[:6], dtype=torch.float32),
        pipe._angle_weights(torch.zeros(6)),
        torch.as_tensor(points[:, 3].reshape(6, 300)),
        torch.as_tensor(theta, dtype=torch.float32),
    ).numpy()
    np.testing.assert_allclose(got_onnx.reshape(-1, 4), expected, rtol=1e-5, atol=1e-5)


def test_core_azimuth_in_the_pipeline_matches_numpy() -> None:
    """The exported even spread of the core's azimuths equals
    :func:`~calogen.calibration.equalise_core_azimuth` (sort-based and ONNX forms), and it
    leaves radii, layers, energies and the points outside the core as they were."""
    from calogen.calibration import equalise_core_azimuth
    from calogen.export import ShowerPipeline
    from calogen.models.registry import load_generator

    rng = np.random.default_rng(4)
    n, m = 5, 400
    points = np.zeros((n * m, 4), np.float32)
    points[:, :2] = rng.normal(0.0, 3.0, (n * m, 2))
    points[:, 2] = np.sort(rng.integers(0, N_LAYERS, (n, m)), 1).ravel()
    points[:, 3] = rng.exponential(1e-3, n * m)
    points[::7, 3] = 0.0  # without energy (padding): left alone
    tie = np.arange(0, n * m - 1, 9)
    points[tie + 1, :2] = points[tie, :2] * 0.5  # ties in azimuth (the same direction)
    shower = np.repeat(np.arange(n), m)
    expected = equalise_core_azimuth(points.copy(), shower, 3.0)
    r_before, r_after = (
        np.hypot(points[:, 0], points[:, 1]),
        np.hypot(expected[:, 0], expected[:, 1]),
    )
    np.testing.assert_allclose(r_after, r_before, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(expected[:, 2:], points[:, 2:])
    moved = np.any(expected[:, :2] != points[:, :2], axis=1)
    assert np.all((r_before < 3.0) & (points[:, 3] > 0) | ~moved) and moved.mean() > 0.3
    model = load_generator(None).model
    model.core_azimuth_radius_mm = 3.0
    pipe = ShowerPipeline(model, max_points=m)
    # the export's rows come in another order (by depth): each carries its row in the
    # network's output, which breaks ties in azimuth as the Python rows do
    perm = np.argsort(rng.random((n, m)), axis=1)
    rows = (perm + (np.arange(n) * m)[:, None]).reshape(-1)
    args = (
        torch.as_tensor(points[rows].reshape(n, m, 4)),
        torch.as_tensor(points[rows, 2].reshape(n, m)).long(),
        torch.as_tensor(points[rows, 3].reshape(n, m)),
        torch.as_tensor(perm),
    )
    for onnx in (False, True):
        pipe.onnx = onnx
        got = np.empty_like(expected)
        got[rows] = pipe._equalise_core_azimuth(*args).numpy().reshape(-1, 4)
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_depth_stretch_in_the_pipeline_matches_numpy() -> None:
    """The exported pipeline moves each profile as calibration.DepthStretch.apply does
    (counts exactly, energies to float rounding), at normal incidence and at angles."""
    import copy

    from calogen.calibration import DepthStretch
    from calogen.export import ShowerPipeline
    from calogen.geometry import slab
    from calogen.models.registry import load_generator

    torch.set_num_threads(1)
    model = copy.deepcopy(load_generator(None).model)
    trend = np.array([30.0, 3.0, 0.4, -0.3, 0.001, 0.01])
    stretch = DepthStretch(
        slab().layer_z_mm, np.array([0.0, 20.0, 45.0]), np.array([1.1, 1.3, 1.2]), trend
    )
    model.depth_stretch = stretch
    pipe = ShowerPipeline(model).eval()
    rng = np.random.default_rng(4)
    n = 300
    start = rng.normal(0.0, 2.0, (n, 1))
    t = np.clip(np.arange(30.0)[None, :] - start, 0.0, None)
    e = 1e-3 * t**3 * np.exp(-t / 3.0) * rng.uniform(0.5, 2.0, (n, 1))
    e[0] = 0.0  # a shower without energy
    counts = np.rint(e * 2e3)
    energies = rng.uniform(10, 90, n).astype(np.float32)
    theta = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0, 60, n)).astype(np.float32)
    want_e, want_n = stretch.apply(e, counts.astype(np.int64), energies, theta)
    got_n, got_e = pipe._depth_stretch(
        torch.as_tensor(counts), torch.as_tensor(e), torch.as_tensor(energies),
        torch.as_tensor(theta),
    )  # fmt: skip
    np.testing.assert_allclose(got_e.numpy(), want_e, rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(got_n.numpy().astype(np.int64), want_n)
    assert np.abs(want_e - e).max() > 1e-3 * e.max()  # it did move the profiles
