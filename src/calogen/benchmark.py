"""Timing of shower generation: ms per shower, throughput, memory and network FLOP rate.

The FLOP rate of the networks is counted with :class:`torch.utils.flop_counter.FlopCounterMode`
(matmuls and convolutions, the work that dominates) during one extra, untimed run of the
same showers, and compared with the machine's own peak measured in the same process: the
best rate of dense matmuls of the network's compute dtype on the same number of threads,
over square (256–1024) and tall-skinny shapes (the large square ones run from memory on
CPUs with small caches and understate the peak by up to 2x).

Besides wall-clock time the process CPU time per shower is reported: on a machine shared
with other jobs it shows how much of the wall time the generator actually ran.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

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
    cpu_ms_per_shower: float
    showers_per_s: float
    points_per_s: float
    mean_points_per_shower: float
    peak_rss_mb: float
    network_gflop_per_shower: float
    network_gflops: float
    matmul_peak_gflops: float
    machine: str
    precision: str = "float32"
    #: wall time inside the point network's forward calls per shower (ms; 0 if unknown)
    network_ms_per_shower: float = 0.0

    @property
    def flop_fraction(self) -> float:
        """Network FLOPs per second of generation as a fraction of the measured matmul peak."""
        return self.network_gflops / self.matmul_peak_gflops if self.matmul_peak_gflops else 0.0

    @property
    def network_only_gflops(self) -> float:
        """FLOP rate of the network while it runs (its FLOPs over its own time), GFLOP/s."""
        if self.network_ms_per_shower <= 0:
            return 0.0
        return self.network_gflop_per_shower / (self.network_ms_per_shower * 1e-3)

    def to_dict(self) -> dict[str, float | int | str]:
        out = asdict(self)
        out["flop_fraction"] = self.flop_fraction
        out["network_only_gflops"] = self.network_only_gflops
        return out

    def lines(self) -> list[str]:
        return [
            f"generator:        {self.generator} on {self.device}, {self.threads} thread(s), "
            f"batch {self.batch}, {self.precision}",
            f"showers:          {self.num_showers} x {self.repeats} repeats, E uniform 10-90 GeV",
            f"time per shower:  {self.ms_per_shower_median:.3f} ms median "
            f"(min {self.ms_per_shower_min:.3f}, max {self.ms_per_shower_max:.3f}); "
            f"CPU time {self.cpu_ms_per_shower:.3f} ms",
            f"throughput:       {self.showers_per_s:.1f} showers/s, "
            f"{self.points_per_s / 1e6:.2f} M points/s ({self.mean_points_per_shower:.0f} points/shower)",
            f"peak memory:      {self.peak_rss_mb:.0f} MB (resident set)",
            *(  # generators without a network (GFlash) have no FLOP rate to report
                [
                    f"network:          {self.network_gflop_per_shower * 1e3:.2f} MFLOP/shower, "
                    f"{self.network_gflops:.2f} GFLOP/s = {100 * self.flop_fraction:.1f} % of "
                    f"the measured matmul peak {self.matmul_peak_gflops:.1f} GFLOP/s"
                ]
                if self.network_gflop_per_shower > 0
                else []
            ),
            *(
                [
                    f"network only:     {self.network_ms_per_shower:.3f} ms/shower inside the "
                    f"network, {self.network_only_gflops:.2f} GFLOP/s = "
                    f"{100 * self.network_only_gflops / self.matmul_peak_gflops:.1f} % of the peak"
                ]
                if self.network_ms_per_shower > 0 and self.matmul_peak_gflops
                else []
            ),
            f"machine:          {self.machine}",
        ]


#: (m, k, n) of the matmuls whose best rate is the peak: square, and tall-skinny like the
#: point-wise networks' layers (many points times small weight matrices)
PEAK_SHAPES = (
    (256, 256, 256),
    (512, 512, 512),
    (1024, 1024, 1024),
    (4096, 128, 128),
    (2048, 64, 128),
)


def matmul_peak_gflops(
    device: str = "cpu",
    size: int | None = None,
    seconds: float = 0.5,
    dtype: torch.dtype = torch.float32,
) -> float:
    """Dense matmul rate of this machine on the current torch threads, GFLOP/s.

    The best of :data:`PEAK_SHAPES` (or of one ``size``² square matmul), each timed for
    ``seconds / len(shapes)``, best repeat.
    """
    shapes = PEAK_SHAPES if size is None else ((size, size, size),)
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        torch.mm(a, b)  # warm-up
        _sync(device)
        flop = 2 * m * k * n
        end = time.perf_counter() + seconds / len(shapes)
        while time.perf_counter() < end:
            start = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            _sync(device)
            best = max(best, 4 * flop / (time.perf_counter() - start) / 1e9)
    return best


def _cpu_name() -> str:
    """The CPU model (Linux ``/proc/cpuinfo``; else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
    precision: str = "float32",
    directions: NDArray[np.floating] | None = None,
) -> BenchResult:
    """Time ``generator.sample`` for ``num`` showers with E uniform in 10-90 GeV.

    Showers are generated in batches of ``batch``; each repeat times all ``num`` showers
    and the median/min/max over repeats are reported per shower. ``precision``
    (``"float32"`` or ``"bfloat16"``) is the compute dtype of the network's hidden layers
    (generators that support it; see :func:`set_precision`). ``directions [num, 3]``: the
    incident directions (``None``: normal incidence).
    """
    torch.set_num_threads(threads)
    dtype = set_precision(generator, precision)
    energies = np.random.default_rng(seed).uniform(10.0, 90.0, num)

    def dirs(first: int, last: int) -> NDArray[np.floating] | None:
        return None if directions is None else directions[first:last]

    generator.sample(energies[: min(batch, num)], dirs(0, min(batch, num)), seed=seed)  # warm-up
    net_seconds, hooks = _time_network(generator, device)
    times, cpu_times, points = [], [], 0
    for rep in range(repeats):
        _sync(device)
        cpu_start = time.process_time()
        start = time.perf_counter()
        n_points = _sample_all(generator, energies, directions, batch, seed + rep)
        _sync(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        points = n_points
    for hook in hooks:
        hook.remove()
    flop_per_shower = 0.0
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        sample_n = min(num, max(batch, 10))
        with FlopCounterMode(display=False) as counter:
            for first in range(0, sample_n, batch):
                last = min(first + batch, sample_n)
                generator.sample(energies[first:last], dirs(first, last), seed=seed)
        flop_per_shower = counter.get_total_flops() / sample_n
    median = statistics.median(times)
    # the peak is only needed to put network FLOPs in proportion
    peak = matmul_peak_gflops(device, dtype=dtype) if flop_per_shower > 0 else 0.0
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
        cpu_ms_per_shower=1e3 * statistics.median(cpu_times) / num,
        showers_per_s=num / median,
        points_per_s=points / median,
        mean_points_per_shower=points / num,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        network_gflop_per_shower=flop_per_shower / 1e9,
        network_gflops=flop_per_shower * num / median / 1e9,
        matmul_peak_gflops=peak,
        machine=f"{platform.machine()} {_cpu_name()} "
        f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)",
        precision=precision,
        network_ms_per_shower=1e3 * net_seconds[0] / (repeats * num),
    )


def _sample_all(
    generator: Generator,
    energies: NDArray[np.floating],
    directions: NDArray[np.floating] | None,
    batch: int,
    seed: int,
) -> int:
    """Generate showers for all ``energies`` (GeV) in batches of ``batch`` (batch starting
    at ``first`` with seed ``seed + first``); returns the number of points made."""
    n_points = 0
    for first in range(0, len(energies), batch):
        last = first + batch
        showers = generator.sample(
            energies[first:last],
            None if directions is None else directions[first:last],
            seed=seed + first,
        )
        n_points += int(showers._num_points.sum())
    return n_points


@dataclass
class CompareResult:
    """Result of :func:`compare`: ms per shower of two generators, timed in alternation."""

    labels: tuple[str, str]
    batch: int
    num_showers: int
    threads: int
    #: ms per shower of each round, per generator (``[2][rounds]``)
    ms_per_shower: tuple[list[float], list[float]]
    #: CPU ms per shower of each round (this process), per generator
    cpu_ms_per_shower: tuple[list[float], list[float]]
    mean_points_per_shower: tuple[float, float]
    #: whether each generator was handed the incident directions (else normal incidence)
    inclined: tuple[bool, bool]
    machine: str

    @property
    def ratios(self) -> list[float]:
        """First over second generator's time, round by round."""
        a, b = self.ms_per_shower
        return [x / y for x, y in zip(a, b, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["ratios"] = self.ratios
        out["ratio_median"] = statistics.median(self.ratios)
        return out

    def lines(self) -> list[str]:
        out = [
            f"compared:         {self.num_showers} showers per round, batch {self.batch}, "
            f"{self.threads} thread(s), {len(self.ratios)} rounds in alternation (A B, B A, "
            "...; each round the same energies, directions and seeds for both)"
        ]
        for tag, label, times, cpu, points, inclined in zip(
            "AB",
            self.labels,
            self.ms_per_shower,
            self.cpu_ms_per_shower,
            self.mean_points_per_shower,
            self.inclined,
            strict=True,
        ):
            where = "" if inclined else ", normal incidence"
            out.append(
                f"{tag}: {statistics.median(times):.3f} ms/shower median (min {min(times):.3f}, "
                f"max {max(times):.3f}; CPU {statistics.median(cpu):.3f} ms), "
                f"{points:.0f} points/shower{where}: {label}"
            )
        ratios = self.ratios
        if len(ratios) <= 8:
            spread = f"rounds: {', '.join(f'{r:.3f}' for r in ratios)}"
        else:
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            spread = f"quartiles {q1:.3f}-{q3:.3f} over {len(ratios)} rounds"
        out.append(f"A / B:            {statistics.median(ratios):.3f} median ({spread})")
        out.append(f"machine:          {self.machine}")
        return out


def compare(
    generators: tuple[Generator, Generator],
    *,
    labels: tuple[str, str] | None = None,
    num: int = 100,
    batch: int = 1,
    rounds: int = 5,
    threads: int = 1,
    seed: int = 0,
    directions: tuple[NDArray[np.floating] | None, NDArray[np.floating] | None] = (None, None),
) -> CompareResult:
    """Time two generators in alternation in one process: the ratio of their times.

    On a shared machine the pace moves by tens of percent within minutes; a ratio of two
    generators timed round by round (``num`` showers each, E uniform in 10-90 GeV, the same
    energies and seeds for both; the order alternates, A then B, B then A) cancels most of
    it. ``directions[k] [num, 3]``: incident directions of generator ``k`` (``None``: normal
    incidence). One untimed warm-up round first.
    """
    torch.set_num_threads(threads)
    energies = np.random.default_rng(seed).uniform(10.0, 90.0, num)
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    points = [0, 0]

    def run(k: int) -> tuple[float, float, int]:
        cpu_start, start = time.thread_time(), time.perf_counter()
        n_points = _sample_all(generators[k], energies, directions[k], batch, seed)
        return time.perf_counter() - start, time.thread_time() - cpu_start, n_points

    for k in (0, 1):  # warm-up
        run(k)
    for r in range(rounds):
        for k in (0, 1) if r % 2 == 0 else (1, 0):
            w, c, n_points = run(k)
            wall[k].append(1e3 * w / num)
            cpu[k].append(1e3 * c / num)
            points[k] = n_points
    names = labels or (generators[0].name, generators[1].name)
    return CompareResult(
        labels=(str(names[0]), str(names[1])),
        batch=batch,
        num_showers=num,
        threads=threads,
        ms_per_shower=wall,
        cpu_ms_per_shower=cpu,
        mean_points_per_shower=(points[0] / num, points[1] / num),
        inclined=(directions[0] is not None, directions[1] is not None),
        machine=f"{platform.machine()} {_cpu_name()} "
        f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)",
    )


def _time_network(generator: Any, device: str) -> tuple[list[float], list[Any]]:
    """Hooks that add the wall time of every forward call of the generator's point network
    (``generator.model.net``, where there is one) to the returned one-element list."""
    total = [0.0]
    net = getattr(getattr(generator, "model", None), "net", None)
    if not isinstance(net, torch.nn.Module):
        return total, []
    start = [0.0]

    def before(module: Any, args: Any) -> None:
        _sync(device)
        start[0] = time.perf_counter()

    def after(module: Any, args: Any, output: Any) -> None:
        _sync(device)
        total[0] += time.perf_counter() - start[0]

    return total, [net.register_forward_pre_hook(before), net.register_forward_hook(after)]


PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def set_precision(generator: Generator, precision: str) -> torch.dtype:
    """Set the compute dtype of a CaloClouds II generator's network; returns the dtype.

    ``float32`` works for every generator; ``bfloat16`` needs a network with a
    ``compute_dtype`` attribute (CaloClouds II), else :class:`~calogen.errors.UsageError`.
    """
    from calogen.errors import UsageError

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    dtype = PRECISIONS[precision]
    net = getattr(getattr(generator, "model", None), "net", None)
    if net is None or not hasattr(net, "compute_dtype"):
        if precision != "float32":
            raise UsageError(f"model '{generator.name}' supports only float32")
        return dtype
    net.compute_dtype = None if dtype == torch.float32 else dtype
    return dtype
