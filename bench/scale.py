"""How cost grows: each path run at doubling sizes, its time per operation printed and plotted.

    .venv/bin/python bench/scale.py [--paths rebuild,accrual,export,placement] [--steps 4]
                                    [--out bench/results]

Each path is its own benchmark in bench/, run as a subprocess at each size (so every point starts
from an empty temp dir), and read back from the lines it prints:
- rebuild: events in the stream (2 per aggregate), 25k -> 200k; per event, beside the raw callback
  pull + COPY of the same run;
- accrual: open usage sessions, 12.5k -> 100k; per session per cycle, beside a raw COPY of as many
  posting rows;
- export: postings, 125k -> 1M; per row, beside a raw COPY TO of the same rows;
- placement: simulated hosts x 8 GPUs filled through POST /instances, 62 -> 500 hosts; per
  placement, beside a sequential fsync'd JetStream publish of the same run.
A flat line is the goal: time per operation that does not grow with the amount of data. One PNG per
path goes to --out (matplotlib, Agg), and a table to stdout."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Point:
    size: int
    product_us: float
    baseline_us: float


@dataclass(frozen=True)
class PathSpec:
    name: str
    unit: str
    sizes: Callable[[int], list[int]]
    args: Callable[[int], list[str]]
    parse: Callable[[str, int], Point]


def doubling(largest: int) -> Callable[[int], list[int]]:
    """`steps` sizes, each twice the one before, ending at `largest`."""
    return lambda steps: [largest >> (steps - 1 - i) for i in range(steps)]


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no match for {pattern!r} in the benchmark's output:\n{text[-2000:]}")
    return float(match.group(1).replace(",", ""))


def _rebuild(text: str, size: int) -> Point:
    events = size * 2
    product = _number(r"product rebuild\(\)\s+[\d.]+\s+([\d,]+)", text)
    baseline = _number(r"raw callback pull \+ COPY \(info\)\s+[\d.]+\s+([\d,]+)", text)
    return Point(events, 1e6 / product, 1e6 / baseline)


def _accrual(text: str, size: int) -> Point:
    cycle = _number(r"\[accrual\] product cycle: ([\d.]+)s", text)
    raw = _number(r"\[accrual\] raw COPY of [\d,]+ postings: ([\d.]+)s", text)
    return Point(size, cycle * 1e6 / size, raw * 1e6 / size)


def _export(text: str, size: int) -> Point:
    product = _number(r"export rows/s \(CSV\): ([\d,]+)", text)
    ratio = _number(r"ratio export/raw COPY rows/s \(CSV\): ([\d.]+)x", text)
    return Point(size, 1e6 / product, 1e6 / (product / ratio))


def _placement(text: str, size: int) -> Point:
    rate = _number(r"placements/s:\s+([\d.]+)", text)
    publish = _number(r"sequential await js.publish:\s+([\d.]+)", text)
    return Point(size * 8, 1e6 / rate, 1e6 / publish)


PATHS = {
    p.name: p
    for p in (
        PathSpec(
            "rebuild",
            "µs per event",
            doubling(100_000),
            lambda n: ["rebuild.py", "--aggregates", str(n)],
            _rebuild,
        ),
        PathSpec(
            "accrual",
            "µs per open session per cycle",
            doubling(100_000),
            lambda n: ["accrual.py", "--sessions", str(n), "--users", str(max(n // 10, 1))],
            _accrual,
        ),
        PathSpec(
            "export",
            "µs per posting",
            doubling(1_000_000),
            lambda n: ["export.py", "--postings", str(n)],
            _export,
        ),
        PathSpec(
            "placement",
            "µs per placement",
            doubling(500),
            lambda n: ["placement.py", "--hosts", str(n)],
            _placement,
        ),
    )
}


def measure(spec: PathSpec, steps: int) -> list[Point]:
    points = []
    for size in spec.sizes(steps):
        print(f"[scale] {spec.name} at {size:,} ...", flush=True)
        done = subprocess.run(
            [sys.executable, str(BENCH / spec.args(size)[0]), *spec.args(size)[1:]],
            capture_output=True,
            text=True,
            check=False,
            timeout=1800,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{spec.name} at {size} failed:\n{done.stdout[-3000:]}{done.stderr}")
        point = spec.parse(done.stdout, size)
        print(
            f"[scale] {spec.name} {point.size:>10,}: product {point.product_us:9.2f} {spec.unit},"
            f" baseline {point.baseline_us:9.2f}",
            flush=True,
        )
        points.append(point)
    return points


def plot(spec: PathSpec, points: list[Point], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    sizes = [p.size for p in points]
    ax.plot(sizes, [p.product_us for p in points], marker="o", label="GPUWorker")
    ax.plot(sizes, [p.baseline_us for p in points], marker="s", linestyle="--", label="baseline")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("size (log2)")
    ax.set_ylabel(spec.unit)
    ax.set_ylim(bottom=0)
    ax.set_title(f"{spec.name}: time per operation as the work doubles")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = out / f"scale-{spec.name}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def growth(points: list[Point]) -> float:
    """Time per operation at the largest size over the smallest: 1.0 is flat."""
    return points[-1].product_us / points[0].product_us if points[0].product_us else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.paths.split(","):
        spec = PATHS[name]
        results[name] = measure(spec, args.steps)
        print(f"[scale] wrote {plot(spec, results[name], args.out)}", flush=True)
    print()
    print("=" * 100)
    print("BENCH scale: time per operation as the work doubles (largest / smallest: 1.0 is flat)")
    for name, points in results.items():
        cells = "  ".join(f"{p.size:,}: {p.product_us:.2f}" for p in points)
        base = growth([Point(p.size, p.baseline_us, 0) for p in points])
        print(f"  {name:<10} {PATHS[name].unit:<30} {cells}")
        print(f"  {'':<10} growth x{growth(points):.2f} (baseline x{base:.2f})")
    print("=" * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
