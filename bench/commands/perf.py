"""``bench perf``: images/s of the harness's trial loop against a bare PyTorch loop, and their ratio."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.atomic import replace_text
from bench.commands._common import int_arg
from bench.commands.run import _positive_int


def _at_least_two(text: str) -> int:
    """A class count: a margin head needs two classes or more."""
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"a head needs at least 2 classes, but got {text!r}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("perf", help="benchmark the trial loop against a bare PyTorch loop", description=__doc__)
    p.add_argument("--workload", action="append", choices=["lenet", "mobilenet"],
                   help="workloads to time (repeatable; default: lenet unless another section is asked for)")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--epochs", type=_positive_int, default=None, help="timed epochs (after one warm-up epoch)")
    p.add_argument("--mnist-root", default=None, metavar="FOLDER",
                   help="the MNIST IDX files of the lenet workload on a GPU (default: ../shared/data/mnist-10k)")
    p.add_argument("--repeats", type=_positive_int, default=1,
                   help="alternate bare/harness this many times, keep the best")
    p.add_argument("--logging", action="store_true", help="also measure MLflow logging's share of a 20-epoch trial")
    p.add_argument("--logging-epochs", type=_positive_int, default=20)
    p.add_argument("--head", action="store_true", help="also compare the plain and class-chunked CosFace head")
    p.add_argument("--head-classes", type=_at_least_two, default=1_000_000)
    p.add_argument("--jpeg", action="store_true",
                   help="also train the mobilenet workload from a folder of JPEG files vs the same faces on the device")
    p.add_argument("--loader-workers", type=int_arg(0), default=None, metavar="N",
                   help="DataLoader workers for --jpeg (default: as a trial: none on the CPU, else "
                        "torch's threads less one, at most 16)")
    p.add_argument("--fused", type=int, default=None, metavar="K",
                   help="also train K copies of the lenet workload fused into one program vs one trial alone")
    p.add_argument("--grid", default=None, help="also time this whole grid (into a throwaway MLflow store)")
    p.add_argument("--workers", type=_positive_int, default=None, help="workers for --grid")
    p.add_argument("--fuse", type=int, default=1, metavar="K", help="--fuse for --grid (trials per fused program)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="overrides for --grid")
    p.add_argument("--seeds", type=parse_seeds, default=None, metavar="N|S,S,...",
                   help="seeds for --grid instead of the grid's: a count (3: seeds 0, 1, 2) or a list (0,5,7)")
    p.add_argument("--against", default=None, metavar="FILE",
                   help="compare --grid's per-seed accuracies with an earlier `bench perf --grid ... --json FILE` "
                        "run: per cell a t test, within seed noise or not")
    p.add_argument("--metric", default="test_acc", choices=["test_acc", "train_acc"], help="metric for --against")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(handler=run)


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> ``[0, 1, 2]``; ``"0,5,7"`` -> ``[0, 5, 7]``."""
    try:
        items = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        items = []
    if "," not in text and len(items) == 1:
        items = list(range(items[0])) if items[0] >= 1 else []
    if not items or len(set(items)) != len(items):
        raise argparse.ArgumentTypeError(f"a count of at least 1 (3: seeds 0, 1, 2) or a list of distinct integers "
                                         f"(0,5,7) is required, but got {text!r}")
    return items


def load_against(path: str | None, metric: str) -> list[dict] | None:
    """The per-trial records of an earlier ``--grid ... --json`` file; exits 2 naming the file and the fix."""
    if path is None:
        return None
    try:
        with open(path) as f:
            records = json.load(f)["grid"]["records"]
    except FileNotFoundError:
        raise SystemExit(f"bench perf: --against {path}: no such file; write it first with "
                         f"`bench perf --grid FILE --json {path}`") from None
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise SystemExit(f"bench perf: --against {path}: not the JSON of a `bench perf --grid FILE --json` run with "
                         f"per-trial records (missing {err}); rerun that command to write it") from None
    if not any(r.get(metric) is not None for r in records):
        raise SystemExit(f"bench perf: --against {path}: no trial has {metric!r}; valid: train_acc, test_acc")
    return records


def check_search_seeds(grid_path: Path, search: list[str], seeds: list[int] | None) -> None:
    """Exits 2, naming the grid file, ``--seeds`` and the fix, when ``--seeds`` gives several seeds to a grid with
    ``search:`` ranges (`bench.perf.search_seeds_problem`): before, its study check failed in a traceback inside
    `bench.perf.time_grid`, after the other sections had trained."""
    from bench.perf import search_seeds_problem

    problem = search_seeds_problem(search, seeds)
    if problem is not None:
        print(f"bench perf: --seeds {','.join(map(str, seeds or []))} with --grid {grid_path}: {problem}",
              file=sys.stderr)
        raise SystemExit(2)


def run(args: argparse.Namespace) -> int:
    from bench.commands.run import check_fuse
    from bench.perf import check_workload_data, logging_overhead, measure, time_grid
    from bench.trial import pick_device

    check_fuse(args.fuse)  # before anything trains
    if (args.against or args.seeds) and not args.grid:
        raise SystemExit("bench perf: --against and --seeds need --grid FILE (the grid to run and compare)")
    against = load_against(args.against, args.metric)
    grid = None
    if args.grid:  # the grid as overridden, checked before anything trains (its data files and study keys too)
        from bench.commands._common import load_grid_and_config_or_exit

        grid, config = load_grid_and_config_or_exit(args)
        check_search_seeds(grid.path, list(config.search), args.seeds)
    if against is not None:  # the same grid's cells
        from reports.results import grid_order

        mine = set(grid_order(grid)["label"])
        theirs = {r["label"] for r in against}
        if not mine & theirs:
            raise SystemExit(f"bench perf: --against {args.against}: its cells ({', '.join(sorted(theirs)[:3])}, ...) "
                             f"are none of {args.grid}'s ({', '.join(sorted(mine)[:3])}, ...); compare runs of one "
                             f"grid")
    if args.fused is not None:
        check_fuse(args.fused, "--fused")
    report: dict = {"workloads": []}
    # the lenet workload by default, unless only other sections were asked for
    names = args.workload or ([] if args.logging or args.head or args.jpeg or args.grid or args.fused is not None
                              else ["lenet"])
    lenet_sections = ["lenet"] if args.logging or args.fused is not None else []
    check_workload_data(names + lenet_sections + (["mobilenet"] if args.jpeg else []), pick_device(args.device),
                        mnist_root=args.mnist_root)

    import signal

    from bench.commands.worker import on_sigterm

    # SIGTERM (`kill PID`, a scheduler's time limit) as Ctrl-C: else the process died on the spot, leaving the
    # --grid store (checkpoints too) and the --jpeg folder in the temp folder and a JSON that did not say it was
    # cut short; `Terminated` stops --grid's worker processes at once
    previous = signal.signal(signal.SIGTERM, on_sigterm)

    def save() -> None:  # after each section, so that a crash or a kill at a time limit keeps what finished
        if args.json:
            replace_text(args.json, json.dumps(report, indent=2, default=str) + "\n")

    try:
        if names:
            print(f"{'workload':<10} {'device':<40} {'batch':>5} {'prec':>5} {'bare img/s':>12} "
                  f"{'harness img/s':>14} {'ratio':>6}")
        for name in names:
            r = measure(name, device=args.device, batch_size=args.batch_size, precision=args.precision,
                        epochs=args.epochs, repeats=args.repeats, mnist_root=args.mnist_root)
            print(f"{r.workload:<10} {r.device[:40]:<40} {r.batch_size:>5} {r.precision:>5} "
                  f"{r.bare_images_per_second:>12,.0f} {r.harness_images_per_second:>14,.0f} {r.ratio:>6.3f}")
            report["workloads"].append({**r.__dict__, "ratio": r.ratio})
            save()
        if args.logging:
            lo = logging_overhead(args.logging_epochs, args.device, mnist_root=args.mnist_root)
            print(f"MLflow logging: {lo['logging_seconds_in_trial']:.3f} s in the trial loop of a "
                  f"{lo['epochs']}-epoch LeNet++ trial of {lo['wall_seconds']:.1f} s "
                  f"({100 * lo['logging_share_in_trial']:.2f}%); with opening and closing the run "
                  f"{100 * lo['logging_share_total']:.2f}%")
            report["logging"] = lo
            save()
        if args.head:
            from bench.perf import head_memory

            h = head_memory(args.head_classes, device=args.device)
            mem = (f", peak beyond weights+grad {h['plain_peak_extra_gib']:.2f} vs "
                   f"{h['chunked_peak_extra_gib']:.2f} GiB (ratio {h['memory_ratio']:.3f})"
                   if "memory_ratio" in h else " (memory: not measured on this device)")
            print(f"CosFace head, {h['num_classes']:,} classes, batch {h['batch_size']}, {h['embedding_dim']}-d: plain "
                  f"{h['plain_ms']:.0f} ms, chunked {h['chunked_ms']:.0f} ms{mem}; loss {h['loss']:.4f}, "
                  f"|loss diff| {h['loss_abs_diff']:.2e} (relative {h['loss_rel_diff']:.1e}), "
                  f"max |grad diff| {max(h['grad_w_max_abs_diff'], h['grad_x_max_abs_diff']):.2e}")
            for name in ("plain", "chunked"):
                print(f"  {name:<7} float32 vs CosFace in float64: |loss err| {h[f'{name}_loss_err_vs_fp64']:.2e}, "
                      f"max |grad W err| {h[f'{name}_grad_w_err_vs_fp64']:.2e}, "
                      f"max |grad x err| {h[f'{name}_grad_x_err_vs_fp64']:.2e}")
            report["head"] = h
            save()
        if args.jpeg:
            from bench.perf import jpeg_feed

            j = jpeg_feed(device=args.device, epochs=args.epochs, repeats=args.repeats,
                          loader_workers=args.loader_workers)
            print(f"JPEG feed, {j['workload']} (batch {j['batch_size']}, {j['precision']}, {j['images']:,} images of "
                  f"{j['jpeg_bytes_per_image'] / 1024:.1f} KiB): on the device "
                  f"{j['resident_images_per_second']:,.0f} img/s, from JPEG files {j['jpeg_images_per_second']:,.0f} "
                  f"img/s, ratio {j['ratio']:.3f}; the loader alone "
                  f"{j['loader_images_per_second']:,.0f} img/s with {j['loader_workers']} workers")
            report["jpeg"] = j
            save()
        if args.fused is not None:
            from bench.perf import fused_throughput

            f = fused_throughput(args.fused, device=args.device, epochs=args.epochs, mnist_root=args.mnist_root)
            print(f"fused trials, {f['workload']} (batch {f['batch_size']}) on {f['device']}: one trial alone "
                  f"{f['alone_images_per_second']:,.0f} img/s, {f['trials']} fused {f['fused_images_per_second']:,.0f} "
                  f"img/s in all, speedup {f['speedup']:.2f}")
            report["fused"] = f
            save()
        if args.grid:
            g = time_grid(grid, device=args.device, workers=args.workers, sets=args.set, fuse=args.fuse,
                          seeds=args.seeds)
            counts = ", ".join(f"{n} {state}" for state, n in sorted(g["counts"].items()) if n)
            fused = f" fusing up to {g['fuse']} trials each" if g["fuse"] > 1 else ""
            print(f"grid {g['grid']}: {g['trials']} trials with {g['workers']} workers{fused} in "
                  f"{g['wall_seconds']:.1f} s wall "
                  f"({counts})")
            print(g["tables"])
            report["grid"] = g
            save()
            if against is not None:
                from bench.seed_noise import compare_runs, format_comparison, unmatched_cells

                cells = compare_runs(against, g["records"], metric=args.metric)
                unmatched = unmatched_cells(against, g["records"])
                print(f"\nthis run against {args.against}, per cell (Student's t test over seeds):\n")
                print(format_comparison(cells, metric=args.metric, names=(Path(args.against).name, "this run"),
                                        unmatched=unmatched))
                report["against"] = {"file": args.against, "metric": args.metric, "only_in_file": unmatched[0],
                                     "only_in_this_run": unmatched[1], "cells": [
                    {"label": c.label, "reference": c.reference, "candidate": c.candidate, "difference": c.difference,
                     "seed_std": c.seed_std, "detectable": c.detectable, "p_value": c.p_value, "alpha": c.alpha,
                     "within_noise": c.within_noise, "finished_alone": list(c.finished_alone)}
                    for c in cells]}
    except BaseException as err:  # Ctrl-C too: the JSON says which section did not finish, and why
        report["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        save()
    return 0
