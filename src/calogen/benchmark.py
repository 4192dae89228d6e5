"""Timing of shower generation: ms per shower, throughput, memory and network FLOP rate.

The FLOP rate of the networks is counted with :class:`torch.utils.flop_counter.FlopCounterMode`
(matmuls and convolutions, the work that dominates) during one extra, untimed run of the
same showers, and compared with the machine's own peak measured in the same process: a dense
float32 matmul on the same number of threads.
"""

from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from calogen.generator import Generator


@dataclass
class BenchResult:
    """Result of :func:`benchmark` (times in ms, rates per second, memory in MB)."""

    generator: str
    device: str
    threads: int
    batch: int
    num_showers: int
    repeats: int
    ms_per_shower_median: float
    ms_per_shower_min: float
    ms_per_shower_max: float
    showers_per_s: float
    points_per_s: float
    mean_points_per_shower: float
    peak_rss_mb: float
    network_gflop_per_shower: float
    network_gflops: float
    matmul_peak_gflops: float
    machine: str

    @property
    def flop_fraction(self) -> float:
        """Achieved network FLOP rate as a fraction of the measured matmul peak."""
        return self.network_gflops / self.matmul_peak_gflops if self.matmul_peak_gflops else 0.0

    def to_dict(self) -> dict[str, float | int | str]:
        out = asdict(self)
        out["flop_fraction"] = self.flop_fraction
        return out

    def lines(self) -> list[str]:
        return [
            f"generator:        {self.generator} on {self.device}, {self.threads} thread(s), "
            f"batch {self.batch}",
            f"showers:          {self.num_showers} x {self.repeats} repeats, E uniform 10-90 GeV",
            f"time per shower:  {self.ms_per_shower_median:.3f} ms median "
            f"(min {self.ms_per_shower_min:.3f}, max {self.ms_per_shower_max:.3f})",
            f"throughput:       {self.showers_per_s:.1f} showers/s, "
            f"{self.points_per_s / 1e6:.2f} M points/s ({self.mean_points_per_shower:.0f} points/shower)",
            f"peak memory:      {self.peak_rss_mb:.0f} MB (resident set)",
            f"network:          {self.network_gflop_per_shower * 1e3:.2f} MFLOP/shower, "
            f"{self.network_gflops:.2f} GFLOP/s = {100 * self.flop_fraction:.1f} % of the "
            f"measured matmul peak {self.matmul_peak_gflops:.1f} GFLOP/s",
            f"machine:          {self.machine}",
        ]


def matmul_peak_gflops(device: str = "cpu", size: int = 1024, seconds: float = 0.5) -> float:
    """Dense float32 matmul rate of this machine on the current torch threads, GFLOP/s."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    _sync(device)
    elapsed = time.perf_counter() - start
    return 2 * size**3 * count / elapsed / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def benchmark(
    generator: Generator,
    *,
    num: int = 100,
    batch: int = 1,
    repeats: int = 3,
    threads: int = 1,
    device: str = "cpu",
    seed: int = 0,
    count_flops: bool = True,
) -> BenchResult:
    """Time ``generator.sample`` for ``num`` showers with E uniform in 10-90 GeV.

    Showers are generated in batches of ``batch``; each repeat times all ``num`` showers
    and the median/min/max over repeats are reported per shower.
    """
    torch.set_num_threads(threads)
    energies = np.random.default_rng(seed).uniform(10.0, 90.0, num)
    generator.sample(energies[: min(batch, num)], seed=seed)  # warm-up
    times, points = [], 0
    for rep in range(repeats):
        _sync(device)
        start = time.perf_counter()
        n_points = 0
        for first in range(0, num, batch):
            showers = generator.sample(energies[first : first + batch], seed=seed + rep + first)
            n_points += int(showers._num_points.sum())
        _sync(device)
        times.append(time.perf_counter() - start)
        points = n_points
    flop_per_shower = 0.0
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        sample_n = min(num, max(batch, 10))
        with FlopCounterMode(display=False) as counter:
            for first in range(0, sample_n, batch):
                generator.sample(energies[first : min(first + batch, sample_n)], seed=seed)
        flop_per_shower = counter.get_total_flops() / sample_n
    median = statistics.median(times)
    peak = matmul_peak_gflops(device)
    return BenchResult(
        generator=generator.name,
        device=device,
        threads=threads,
        batch=batch,
        num_showers=num,
        repeats=repeats,
        ms_per_shower_median=1e3 * median / num,
        ms_per_shower_min=1e3 * min(times) / num,
        ms_per_shower_max=1e3 * max(times) / num,
        showers_per_s=num / median,
        points_per_s=points / median,
        mean_points_per_shower=points / num,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        network_gflop_per_shower=flop_per_shower / 1e9,
        network_gflops=flop_per_shower * num / median / 1e9,
        matmul_peak_gflops=peak,
        machine=f"{platform.machine()} {platform.processor() or ''} "
        f"({torch.get_num_threads()} torch threads)".strip(),
    )
