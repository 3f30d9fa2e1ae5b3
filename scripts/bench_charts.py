"""Benchmark charts of docs/benchmarks.md from the benchmarks' JSON output.

Two steps::

    python scripts/bench_charts.py measure matmul -- --size 2048 --repeats 5
    python scripts/bench_charts.py draw

``measure NAME -- ARGS`` runs ``benchmarks/NAME.py ARGS --out docs/figures/bench/NAME.json`` and
adds to that JSON where and when it ran: the CPU model, core count, the 1/5/15-minute load
averages before and after, the date and the command. ``draw`` turns every JSON there into
``docs/figures/bench_NAME.png``: time ratio (sparse / dense) against density with the benchmark's
goal line, the machine and load in the title. The JSON files are committed next to the charts, so
a chart can be redrawn (and checked) without rerunning the benchmark.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIGURES = ROOT / "docs" / "figures"
DATA = FIGURES / "bench"
DPI = 90


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(name: str, args: list[str]) -> pathlib.Path:
    """Run one benchmark with its JSON written under docs/figures/bench/, stamped with the machine."""
    script = ROOT / "benchmarks" / f"{name}.py"
    if not script.is_file():
        sys.exit(f"`name` must name a script in benchmarks/; got {name!r}.")
    DATA.mkdir(parents=True, exist_ok=True)
    out = DATA / f"{name}.json"
    cmd = [sys.executable, str(script.relative_to(ROOT)), *args, "--out", str(out.relative_to(ROOT))]
    before = os.getloadavg()
    started = datetime.datetime.now(datetime.UTC)
    subprocess.run(cmd, cwd=ROOT, check=True)
    after = os.getloadavg()
    result = json.loads(out.read_text())
    result["measured_on"] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
        "load_before": [round(x, 1) for x in before], "load_after": [round(x, 1) for x in after],
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", *cmd[1:]]),
    }
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return out


def _machine(result: dict) -> str:
    m = result.get("measured_on")
    if not m:
        return "machine and load not recorded"
    return (f"{m['cpu']} ({m['cores']} cores), load {m['load_before'][0]:.0f} -> "
            f"{m['load_after'][0]:.0f} (1-min avg), {m['date']}")


def _axes(title: str, result: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 8})
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.set_title(f"{title}\n{_machine(result)}")
    ax.set_xlabel("block density (kept fraction)")
    ax.set_ylabel("time / dense time")
    ax.axhline(1.0, color="gray", lw=0.8)
    return fig, ax


def _finish(fig, ax, name: str) -> pathlib.Path:
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    path = FIGURES / f"bench_{name}.png"
    fig.savefig(path, dpi=DPI)
    print(f"wrote {path.relative_to(ROOT)}")
    return path


def draw_matmul(result: dict) -> pathlib.Path:
    """``benchmarks/matmul.py``: A @ B and X @ A ratios per density, goal 1.5 d + 0.05."""
    import numpy as np

    sweep = next(s for s in result["sweeps"] if "rows" in s and "bsr_matmul_ratio" in s["rows"][0])
    rows = sorted(sweep["rows"], key=lambda r: r["density"])
    d = np.array([r["density"] for r in rows])
    fig, ax = _axes(f"block-sparse matmul, {sweep['size']}^2 {sweep['dtype']}, "
                    f"{sweep['block']}x{sweep['block']} blocks, {sweep['backend']} backend", result)
    ax.plot(d, [r["bsr_matmul_ratio"] for r in rows], "o-", label="bsr_matmul (A @ B)")
    ax.plot(d, [r["dense_bsr_matmul_ratio"] for r in rows], "s-", label="dense_bsr_matmul (X @ A)")
    ax.plot(d, [r["goal_ratio"] for r in rows], "k--", lw=1,
            label="goal: 1.5 x density + 0.05 (1.2 at density 1)")
    ax.plot(d, d, ":", color="C2", label="ideal: density")
    return _finish(fig, ax, "matmul")


def draw_attention(result: dict) -> pathlib.Path:
    """``benchmarks/attention.py``: block-sparse attention (xla) per sequence length, goal
    1.2 d + 0.02."""
    import numpy as np

    rows = result["cpu"]
    cfg = result.get("config", {})
    fig, ax = _axes(f"block-sparse attention (xla path), {cfg.get('heads')} heads x "
                    f"{cfg.get('dim')}, {cfg.get('block')} blocks, vs fastest dense", result)
    for seq in sorted({r["seq"] for r in rows}):
        rs = sorted((r for r in rows if r["seq"] == seq), key=lambda r: r["density"])
        ax.plot([r["density"] for r in rs], [r["ratio"] for r in rs], "o-", label=f"seq {seq}")
    d = np.linspace(min(r["density"] for r in rows), max(r["density"] for r in rows), 20)
    ax.plot(d, 1.2 * d + 0.02, "k--", lw=1, label="goal: 1.2 x density + 0.02")
    ax.plot(d, d, ":", color="gray", label="ideal: density")
    return _finish(fig, ax, "attention")


DRAW = {"matmul": draw_matmul, "attention": draw_attention}


def draw() -> list[pathlib.Path]:
    """Draw a chart for every JSON under docs/figures/bench/ that has a drawer."""
    out = []
    for path in sorted(DATA.glob("*.json")):
        if path.stem in DRAW:
            out.append(DRAW[path.stem](json.loads(path.read_text())))
        else:
            print(f"no chart for {path.name} (drawers: {sorted(DRAW)})")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="run benchmarks/NAME.py into docs/figures/bench/NAME.json")
    m.add_argument("name", choices=sorted(DRAW))
    sub.add_parser("draw", help="draw every chart from docs/figures/bench/*.json")
    args = parser.parse_args(argv)
    if args.cmd == "measure":
        measure(args.name, extra)
    else:
        draw()


if __name__ == "__main__":
    main()
