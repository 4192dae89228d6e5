"""Distributed data parallel training (2 CPU processes, gloo) and sharded generation.

* one DDP step on 2 ranks with half a batch each equals one single-process step on the
  whole batch (gradients averaged before clipping and the optimizer step);
* ``torchrun --nproc-per-node 2 -m calogen train caloclouds2`` runs, keeps the ranks'
  weights identical (checked at every checkpoint by ``run_training``) and writes one model;
* ``calogen generate --shards 2 --shard-index i`` + ``calogen merge`` equals one run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from calogen.cli import main
from calogen.models.caloclouds import TrainingData
from calogen.models.training import (
    distributed_env,
    latest_checkpoint,
    list_checkpoints,
    load_tensors,
    rank_seed,
    read_json,
    run_training,
    save_model,
    save_tensors,
)

REPO = Path(__file__).resolve().parents[1]

#: a tiny CaloClouds II config (trains in well under a second)
TINY_CC2 = {
    "base": "small",
    "widths": [8, 16, 8],
    "time_features": 4,
    "shower_flow": {
        "feature_set": "caloclouds2",
        "blocks": 1,
        "affine_per_block": 1,
        "spline_per_block": 0,
        "hidden": [8, 8],
    },
    "iterations": 2,
    "batch_size": 4,
    "points_per_shower": 32,
    "checkpoint_every": 2,
    "shower_flow_iterations": 2,
    "shower_flow_batch": 16,
    "lr_warmup": 0,
    "max_showers": 40,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- a toy trainer on a fixed batch ---------------------------------------------------------


class FixedBatch:
    """A fixed batch whose shard of rank r is every world-th row from r."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def shard(self, rank: int, world_size: int) -> FixedBatch:
        return FixedBatch(self.x[rank::world_size], self.y[rank::world_size])


def fixed_batch() -> FixedBatch:
    gen = torch.Generator().manual_seed(3)
    return FixedBatch(torch.randn(8, 3, generator=gen), torch.randn(8, 2, generator=gen))


class ToyTrainer:
    """SGD on a mean-squared error with active gradient clipping (a :class:`Trainer`).

    ``noisy``: each step uses 2 random rows of the data (numpy RNG from (seed, iteration))
    plus input noise from the global torch RNG, and SGD with momentum.
    """

    MAX_NORM = 0.05  # well below the gradient norm: clipping acts

    def __init__(self, data: FixedBatch, seed: int = 11, noisy: bool = False) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=0.5, momentum=0.9 if noisy else 0)
        self.data = data
        self.seed = seed
        self.noisy = noisy
        self.seen: list[tuple[int, int]] = []  # (seed, rows) that step() saw
        self.noise: list[float] = []  # first noise value of each noisy step

    def modules(self) -> dict[str, nn.Module]:
        return {"net": self.net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"sgd": self.opt}

    def generators(self) -> dict:
        return {}

    def checkpoint_json(self) -> dict:
        return {"seed": self.seed, "rows": int(self.data.x.shape[0])}

    def export(self, out: Path) -> None:
        save_model(out, model_type="toy", modules={"net": self.net}, config={})

    def step(self, iteration: int) -> dict[str, float]:
        self.seen.append((self.seed, int(self.data.x.shape[0])))
        x, y = self.data.x, self.data.y
        if self.noisy:
            rows = np.random.default_rng([self.seed, iteration]).choice(len(x), 2, replace=False)
            noise = torch.randn(2, 3)
            self.noise.append(float(noise[0, 0]))
            x, y = x[rows] + 0.1 * noise, y[rows]
        loss = nn.functional.mse_loss(self.net(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.net.parameters(), self.MAX_NORM)
        self.opt.step()
        return {"loss": float(loss.detach())}


def _ddp_worker(rank: int, world: int, port: int, port2: int, root: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(world),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    root_path = Path(root)
    # one step (run_training joins the process group itself and leaves it at the end)
    trainer = ToyTrainer(fixed_batch())
    result = run_training(
        trainer, root_path / "run", iterations=1, checkpoint_every=1, progress=False
    )
    save_tensors(root_path / f"rank{rank}.safetensors", dict(trainer.net.state_dict()))
    (root_path / f"rank{rank}.json").write_text(
        json.dumps({"seen": trainer.seen, "seed_after": trainer.seed, "result": result})
    )
    # a randomised run, uninterrupted and stopped + resumed, in a process group of our own
    import torch.distributed as dist

    os.environ["MASTER_PORT"] = str(port2)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for name, stops in (("full", [None]), ("part", [2, None])):
        for i, stop in enumerate(stops):
            trainer = ToyTrainer(fixed_batch(), noisy=True)
            run_training(
                trainer,
                root_path / name,
                iterations=5,
                checkpoint_every=2,
                resume=i > 0,
                progress=False,
                stop_after=stop,
            )
        save_tensors(root_path / f"{name}{rank}.safetensors", dict(trainer.net.state_dict()))
        (root_path / f"{name}{rank}.json").write_text(json.dumps(trainer.noise))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Results of :func:`_ddp_worker` on 2 spawned gloo ranks."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("ddp")
    saved = {k: os.environ.pop(k) for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK") if k in os.environ}
    try:
        assert distributed_env() is None
        ports = (free_port(), free_port())
        mp.spawn(_ddp_worker, args=(2, *ports, str(root)), nprocs=2, join=True)
    finally:
        os.environ.update(saved)
    return root


def test_ddp_step_equals_single_process_on_union_batch(ddp_runs: Path, tmp_path: Path) -> None:
    root = ddp_runs

    single = ToyTrainer(fixed_batch())
    run_training(single, tmp_path / "single", iterations=1, checkpoint_every=1, progress=False)
    expected = single.net.state_dict()
    ranks = [load_tensors(root / f"rank{r}.safetensors") for r in range(2)]
    for key, value in expected.items():
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0)
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-6, atol=1e-7)

    # the test has teeth: averaging the ranks' separately clipped steps gives another result
    separate = []
    for r in range(2):
        t = ToyTrainer(fixed_batch().shard(r, 2))
        t.step(0)
        separate.append(t.net.state_dict())
    mean_of_separate = {k: (separate[0][k] + separate[1][k]) / 2 for k in expected}
    assert any(not torch.allclose(mean_of_separate[k], expected[k], atol=1e-5) for k in expected)

    # each rank saw its half of the batch with its own seed; the trainer keeps the run's seed
    for r in range(2):
        info = json.loads((root / f"rank{r}.json").read_text())
        assert info["seen"] == [[rank_seed(11, r), 4]]
        assert info["seed_after"] == 11
    assert rank_seed(11, 0) != rank_seed(11, 1)
    # rank 0 alone wrote one checkpoint and the model, describing the whole run
    run = root / "run"
    assert len(list_checkpoints(run / "checkpoints")) == 1
    meta = read_json(latest_checkpoint(run / "checkpoints"))
    assert meta["extra"]["seed"] == 11 and meta["extra"]["rows"] == 8
    saved = load_tensors(run / "model.safetensors")
    torch.testing.assert_close(saved["net.0.weight"], ranks[0]["0.weight"], rtol=0, atol=0)


def test_ddp_resume_equals_uninterrupted(ddp_runs: Path) -> None:
    """Stopped after 2 of 5 iterations and resumed = uninterrupted, on both ranks."""
    full = [load_tensors(ddp_runs / f"full{r}.safetensors") for r in range(2)]
    part = [load_tensors(ddp_runs / f"part{r}.safetensors") for r in range(2)]
    for key in full[0]:
        for r in range(2):
            torch.testing.assert_close(part[r][key], full[0][key], rtol=0, atol=0)
            torch.testing.assert_close(full[r][key], full[0][key], rtol=0, atol=0)
    assert read_json(latest_checkpoint(ddp_runs / "part" / "checkpoints"))["iteration"] == 5
    # the global torch RNG is per rank (seeded from (seed, rank, iteration)) ...
    noise = [json.loads((ddp_runs / f"full{r}.json").read_text()) for r in range(2)]
    assert len(noise[0]) == 5 and all(a != b for a, b in zip(*noise, strict=True))
    # ... and the resumed iterations drew the same noise as the uninterrupted ones
    resumed = [json.loads((ddp_runs / f"part{r}.json").read_text()) for r in range(2)]
    assert [n[2:] for n in noise] == resumed


def test_training_data_shard_partitions_showers() -> None:
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 6, size=7)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    points = rng.normal(size=(int(counts.sum()), 4)).astype(np.float32)
    data = TrainingData(points, offsets, rng.uniform(10, 90, 7), {"n_points": counts.copy()})
    shards = [data.shard(r, 3) for r in range(3)]
    assert [s.n_showers for s in shards] == [3, 2, 2]
    for r, s in enumerate(shards):
        for j, i in enumerate(range(r, 7, 3)):
            np.testing.assert_array_equal(
                s.points[s.offsets[j] : s.offsets[j + 1]], points[offsets[i] : offsets[i + 1]]
            )
            assert s.energies[j] == data.energies[i]
            assert s.features["n_points"][j] == counts[i]


# -- end to end: torchrun + calogen train ----------------------------------------------------


@pytest.mark.slow
def test_torchrun_train_two_ranks(tmp_path, fixtures) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({**TINY_CC2, "iterations": 4}))
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "calogen",
        "train",
        "caloclouds2",
        "--config",
        str(cfg),
        "--data",
        str(fixtures / "g4_photons_subset.h5"),
        "--out",
        str(out),
        "--seed",
        "5",
        "--threads",
        "1",
        "--no-progress",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # one summary (rank 0 only); the ranks' weights agreed at both checkpoints
    assert proc.stdout.count('"model": "caloclouds2"') == 1
    summary = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert summary["iterations"] == 4
    info = json.loads((out / "model.json").read_text())
    assert info["calogen_model"] == "caloclouds2"
    assert info["training"]["n_showers"] == TINY_CC2["max_showers"]  # the whole data set
    assert json.loads((out / "train_log.json").read_text())["iteration"] == 4
    assert latest_checkpoint(out / "checkpoints").name == "ckpt-00000004.json"


# -- sharded generation ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, fixtures) -> Path:  # type: ignore[no-untyped-def]
    from calogen.models import caloclouds2 as cc2

    out = tmp_path_factory.mktemp("tiny_cc2") / "model"
    cc2.train(
        config=dict(TINY_CC2), data=fixtures / "g4_photons_subset.h5", out=out, progress=False
    )
    return out


def test_merged_generation_shards_equal_single_run(tiny_model: Path, tmp_path: Path) -> None:
    from calogen.data.io import read_showers

    common = ["--model", str(tiny_model), "--energy", "20", "80", "--num", "5", "--seed", "9"]
    common += ["--chunk-size", "2", "--quiet"]
    parts = []
    for i in range(2):
        part = tmp_path / f"part{i}.h5"
        assert (
            main(["generate", *common, "--shards", "2", "--shard-index", str(i), "-o", str(part)])
            == 0
        )
        parts.append(str(part))
    merged = tmp_path / "merged.h5"
    assert main(["merge", *parts, "-o", str(merged), "--quiet"]) == 0
    whole = tmp_path / "whole.h5"
    assert main(["generate", *common, "-o", str(whole)]) == 0
    a, b = read_showers(merged), read_showers(whole)
    assert len(a.energies) == 5
    np.testing.assert_array_equal(a.energies, b.energies)
    np.testing.assert_array_equal(a.points, b.points)
    # the shards really split the work (3 chunks of at most 2 showers: 2 + 3 showers)
    assert [len(read_showers(p).energies) for p in parts] == [2, 3]
