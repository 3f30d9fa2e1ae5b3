"""Command line: ``sparsejax demo`` (the main job) and ``sparsejax info``."""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
import time

__all__ = ["main"]


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated floats, got {text!r}") from err
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad or not values:
        raise argparse.ArgumentTypeError(
            f"sparsities must be non-empty and each in [0, 1), got {text!r}")
    return values


def _build_parser() -> argparse.ArgumentParser:
    from sparsejax.demo import STAGES

    parser = argparse.ArgumentParser(prog="sparsejax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train a small MLP on scikit-learn's digits and show sparsejax's transforms",
        description=(
            "Train a small MLP (64-256-256-10) on scikit-learn's embedded digits data with optax, "
            "then run each stage: one-shot magnitude pruning at several sparsities and 2:4 N:M "
            "(each fine-tuned with its mask held), and the later capabilities' stages. Prints a "
            "table per stage; --out writes results.json and a PNG plot."),
    )
    demo.add_argument("--sparsities", type=_floats, default=[0.5, 0.7, 0.8, 0.9, 0.95],
                      help="comma-separated unstructured sparsities in [0, 1) "
                           "(default: 0.5,0.7,0.8,0.9,0.95)")
    demo.add_argument("--steps", type=int, default=None,
                      help="training steps of the dense model (default: 1500; 300 with --quick)")
    demo.add_argument("--finetune-steps", type=int, default=None,
                      help="fine-tuning steps after each pruning (default: 300; 60 with --quick)")
    demo.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    demo.add_argument("--stages", default=",".join(STAGES),
                      help=f"comma-separated stages to run (default: {','.join(STAGES)})")
    demo.add_argument("--out", type=pathlib.Path, default=None,
                      help="directory for results.json and demo.png (one panel per stage)")
    demo.add_argument("--quick", action="store_true",
                      help="small settings, under 30 s on 2 CPU cores: fewer training steps, "
                           "every stage shrinks its work but still shows its point")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sub.add_parser("info", help="print versions and the JAX backend")
    return parser


def _demo(args: argparse.Namespace) -> int:
    from sparsejax.demo import STAGES, make_context

    names = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        print(f"error: --stages has unknown stage(s) {unknown}; allowed: {list(STAGES)}",
              file=sys.stderr)
        return 2
    if args.steps is None:
        args.steps = 300 if args.quick else 1500
    if args.finetune_steps is None:
        args.finetune_steps = 60 if args.quick else 300
    for name, value in (("--steps", args.steps), ("--finetune-steps", args.finetune_steps)):
        if value < 1:
            print(f"error: {name} must be >= 1, got {value}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    print(f"sparsejax demo: digits (scikit-learn, embedded), MLP 64-256-256-10, seed {args.seed}")
    ctx = make_context(seed=args.seed, steps=args.steps, finetune_steps=args.finetune_steps,
                       quick=args.quick, progress=not args.no_progress,
                       options={"sparsities": args.sparsities})
    print(f"dense model: test accuracy {ctx.dense_accuracy:.4f} after {args.steps} steps\n")
    results = {"seed": args.seed, "steps": args.steps, "dense_accuracy": ctx.dense_accuracy,
               "stages": {}}
    for name in names:
        module = importlib.import_module(STAGES[name])
        t_stage, cpu_stage = time.perf_counter(), time.process_time()
        results["stages"][name] = module.run(ctx)
        print(f"[{name}: {time.perf_counter() - t_stage:.1f} s, "
              f"CPU {time.process_time() - cpu_stage:.1f} s]\n")
    results["wall_s"] = time.perf_counter() - t0
    print(f"done in {results['wall_s']:.1f} s")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
        _plot(results, args.out / "demo.png")
        print(f"wrote {args.out / 'results.json'} and {args.out / 'demo.png'}")
    return 0


def _plot(results: dict, path: pathlib.Path) -> None:
    """One panel per stage whose module defines ``plot(ax, stage_result, results)``.

    Accuracy axes span at least 0.2 so that small differences are not exaggerated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sparsejax.demo import STAGES

    panels = []
    for name, result in results["stages"].items():
        module = importlib.import_module(STAGES[name])
        if hasattr(module, "plot"):
            panels.append((module.plot, result))
    if not panels:
        return
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax, (plot, result) in zip(axes.flat, panels):
        plot(ax, result, results)
        if ax.get_ylabel() == "test accuracy":
            low, _ = ax.get_ylim()
            ax.set_ylim(max(0.0, min(low, 0.8)), 1.0)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"sparsejax demo on digits (dense MLP test accuracy {results['dense_accuracy']:.4f})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _info() -> int:
    import jax

    import sparsejax

    print(f"sparsejax {sparsejax.__version__}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sparsejax`` command."""
    args = _build_parser().parse_args(argv)
    if args.command == "demo":
        return _demo(args)
    return _info()


if __name__ == "__main__":
    sys.exit(main())
