"""Same seed, same machine -> byte-identical output files; shards -> independent streams.

``calogen simulate`` and ``calogen generate`` run as separate processes (as on a batch farm),
so nothing shared inside one interpreter can make two runs agree by accident. HDF5 can embed
creation/modification times in object headers; calogen's files must carry none.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from calogen.cli import main
from calogen.data.io import read_showers, write_showers
from calogen.data.packed import pack


def calogen(*argv: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "calogen", *(str(a) for a in argv)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def object_times(path: Path) -> list[tuple[str, int, int]]:
    """``(name, ctime, mtime)`` of the root group and every object in an HDF5 file."""
    times = []
    with h5py.File(path, "r") as f:
        info = h5py.h5o.get_info(f.id)
        times.append(("/", info.ctime, info.mtime))

        def visit(name: str, obj: h5py.HLObject) -> None:
            info = h5py.h5o.get_info(obj.id)
            times.append((name, info.ctime, info.mtime))

        f.visititems(visit)
    return times


def assert_no_timestamps(path: Path) -> None:
    stamped = [entry for entry in object_times(path) if entry[1] or entry[2]]
    assert not stamped, f"{path} holds HDF5 timestamps: {stamped}"


SAMPLING = ["--energy", "10", "90", "--num", "6", "--chunk-size", "2", "--quiet", "--threads", "1"]


@pytest.mark.parametrize(
    "command",
    [["simulate", "gflash", "--direction", "0.6", "0", "0.8"], ["generate"]],
    ids=["simulate", "generate"],
)
def test_same_seed_gives_byte_identical_files(command: list[str], tmp_path: Path) -> None:
    first, second, other = tmp_path / "a.h5", tmp_path / "b.h5", tmp_path / "c.h5"
    calogen(*command, *SAMPLING, "--seed", "7", "-o", first)
    calogen(*command, *SAMPLING, "--seed", "7", "-o", second)
    assert first.read_bytes() == second.read_bytes()
    assert_no_timestamps(first)
    # and the seed matters
    assert main([*command, *SAMPLING, "--seed", "8", "-o", str(other)]) == 0
    a, c = read_showers(first), read_showers(other)
    assert not np.array_equal(a.energies, c.energies)


def test_the_timestamp_check_detects_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "stamped.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.arange(3), track_times=True)
    with pytest.raises(AssertionError, match="timestamps"):
        assert_no_timestamps(path)


def test_merge_and_cluster_are_byte_identical(tmp_path: Path, fixtures: Path) -> None:
    showers = read_showers(fixtures / "g4_photons_subset.h5", 0, 6)
    parts = [write_showers(tmp_path / f"p{i}.h5", showers[2 * i : 2 * i + 2]) for i in range(3)]
    outputs = []
    for name in ("m1.h5", "m2.h5"):
        assert main(["merge", *map(str, parts), "-o", str(tmp_path / name), "--quiet"]) == 0
        outputs.append((tmp_path / name).read_bytes())
    assert outputs[0] == outputs[1]
    steps = fixtures / "g4_steps_subset.h5"
    for name in ("c1.h5", "c2.h5"):
        assert main(["cluster", str(steps), "-o", str(tmp_path / name)]) == 0
    assert (tmp_path / "c1.h5").read_bytes() == (tmp_path / "c2.h5").read_bytes()
    for name in ("m1.h5", "c1.h5"):
        assert_no_timestamps(tmp_path / name)


def test_shards_are_independent_streams(tmp_path: Path) -> None:
    """Shards of one seed draw from different streams (no shower repeats across shards or
    chunks), and each shard is itself reproducible."""
    common = ["simulate", "gflash", "--energy", "50", "--num", "12", "--chunk-size", "2"]
    common += ["--seed", "3", "--quiet"]
    whole = tmp_path / "whole.h5"
    assert main([*common, "-o", str(whole)]) == 0
    showers = read_showers(whole)
    packed = pack(showers)
    # all energies equal, so only the random stream tells showers apart
    signatures = {
        (int(n), float(packed.points[packed.shower == i, 3].sum()))
        for i, n in enumerate(showers._num_points)
    }
    assert len(signatures) == len(showers)

    model_common = ["generate", "--energy", "50", "--num", "6", "--chunk-size", "2", "--seed", "4"]
    model_common += ["--quiet", "--threads", "1"]
    shards = []
    for index in range(3):
        out = tmp_path / f"shard{index}.h5"
        assert (
            main([*model_common, "--shards", "3", "--shard-index", str(index), "-o", str(out)]) == 0
        )
        shards.append(read_showers(out))
    flat = [s.points[i, : s._num_points[i]] for s in shards for i in range(len(s))]
    for i in range(len(flat)):
        for j in range(i + 1, len(flat)):
            assert flat[i].shape != flat[j].shape or not np.array_equal(flat[i], flat[j])
    # a shard made again is the same file
    again = tmp_path / "again.h5"
    assert main([*model_common, "--shards", "3", "--shard-index", "1", "-o", str(again)]) == 0
    assert again.read_bytes() == (tmp_path / "shard1.h5").read_bytes()
