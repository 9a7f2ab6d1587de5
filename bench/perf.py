"""`bench perf`: the harness's trial loop against a bare PyTorch loop on identical model, data, batch and
precision, on whatever device is present.

The bare loop is written here on purpose, without any harness code: it is the ceiling the harness is
measured against. Both sides run a warm-up epoch first and are timed with the device synchronized around
the clock (nanoGPT ``bench.py`` style). This is a benchmark; tests only check that it runs on a tiny case.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bench.grid import Grid
from bench.spec import TrialSpec
from bench.trial import TrialOptions, autocast_dtype, build_models, load_dataset, pick_device, run_trial

__all__ = ["PerfResult", "WORKLOADS", "workload_spec", "check_workload_data", "bare_images_per_second",
           "harness_images_per_second", "measure", "logging_overhead", "time_grid", "head_memory",
           "float64_head_reference", "max_abs_diff", "cpu_head_peak_gib", "jpeg_feed", "fused_throughput",
           "write_jpeg_folder", "loader_images_per_second"]


@dataclass
class PerfResult:
    workload: str
    device: str
    batch_size: int
    precision: str
    bare_images_per_second: float
    harness_images_per_second: float

    @property
    def ratio(self) -> float:
        return self.harness_images_per_second / self.bare_images_per_second


#: Face workloads time training only: no closed-set test split, no held-out identities to render.
_TRAIN_ONLY = {"test_fraction": 0.0, "test_identities": 0, "pairs_per_fold": 0}

#: Named workloads: a spec per device type (the GPU figures of the issue; small enough for a CPU otherwise).
WORKLOADS: dict[str, dict[str, dict[str, Any]]] = {
    "lenet": {
        "cpu": dict(dataset="digits", backbone="lenet++", loss="cosface", loss_params={"s": 10.0, "m": 0.1},
                    embedding_dim=2, batch_size=128, epochs=3),
        "cuda": dict(dataset="mnist", dataset_params={"root": "../shared/data/mnist-10k", "repeat": 6},
                     backbone="lenet++", loss="cosface", loss_params={"s": 10.0, "m": 0.1}, embedding_dim=2,
                     batch_size=512, epochs=3),
    },
    "mobilenet": {
        "cpu": dict(dataset="synthetic-faces", dataset_params={"identities": 16, "images_per_identity": 16,
                                                               "image_size": 112, "in_chans": 3, **_TRAIN_ONLY},
                    backbone="timm/mobilenetv3_large_100", loss="cosface", embedding_dim=512, batch_size=32,
                    epochs=2),
        "cuda": dict(dataset="synthetic-faces", dataset_params={"identities": 1000, "images_per_identity": 20,
                                                                "image_size": 112, "in_chans": 3, **_TRAIN_ONLY},
                     backbone="timm/mobilenetv3_large_100", loss="cosface", embedding_dim=512, batch_size=1024,
                     epochs=3, precision="bf16", channels_last=True),
    },
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_images_per_second(spec: TrialSpec, device: torch.device, *, warmup_epochs: int = 1) -> float:
    """A plain loop: data on the device, shuffled index per epoch, forward, margin loss in fp32, backward (loss
    scaled in fp16), optimizer step, loss and accuracy summed on the device; timed over ``spec.epochs`` epochs
    (training only, no evaluation, as the harness's ``images_per_second``)."""
    bundle = load_dataset(spec)
    torch.manual_seed(spec.seed)
    backbone, head, _ = build_models(spec, bundle)
    backbone.to(device)
    head.to(device)
    if spec.channels_last:
        backbone.to(memory_format=torch.channels_last)
    images = bundle.train.images.to(device)
    if spec.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = bundle.train.labels.to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    lr = float(spec.optimizer_params["lr"])
    opt = torch.optim.Adam(params, lr=lr) if spec.optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    # fp16 trains with loss scaling (its gradients underflow without it), as the harness's loop does
    scaler = torch.amp.GradScaler(device.type, enabled=spec.precision == "fp16")
    dtype = autocast_dtype(spec.precision)
    model = torch.compile(backbone) if spec.compile else backbone
    n, bs = len(labels), spec.batch_size
    seen = 0
    elapsed = 0.0
    for epoch in range(warmup_epochs + spec.epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        order = torch.randperm(n, device=device)
        _sync(device)
        t0 = time.perf_counter()
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            x, y = images[idx], labels[idx]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                emb = model(x)
            emb = emb.float()
            loss = head(emb, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if spec.grad_clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, float(spec.grad_clip))
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach() * len(y)
            with torch.no_grad():
                correct += (head.logits(emb.detach()).argmax(1) == y).sum()
        _sync(device)
        if epoch >= warmup_epochs:
            elapsed += time.perf_counter() - t0
            seen += n
    _ = (loss_sum.item(), correct.item())
    return seen / elapsed


def harness_images_per_second(spec: TrialSpec, device: torch.device, *, warmup_epochs: int = 1,
                              options: TrialOptions | None = None) -> float:
    """`bench.trial.run_trial` on the same spec; the warm-up is a separate 1-epoch trial (same compile cache)."""
    options = options or TrialOptions(device=str(device), progress=False)
    if warmup_epochs:
        run_trial(spec.replace(epochs=warmup_epochs), options)
    return run_trial(spec, options).images_per_second


def workload_spec(workload: str, device: torch.device, *, mnist_root: str | None = None,
                  **overrides: Any) -> TrialSpec:
    """The named workload's trial for this device type (`WORKLOADS`), with the overrides that are not None;
    ``mnist_root`` replaces the MNIST folder of a workload that reads MNIST (lenet on a GPU)."""
    config = dict(WORKLOADS[workload]["cuda" if device.type == "cuda" else "cpu"])
    if mnist_root is not None and config["dataset"] == "mnist":
        config["dataset_params"] = {**config["dataset_params"], "root": mnist_root}
    config.update({key: value for key, value in overrides.items() if value is not None})
    return TrialSpec(**config)


def check_workload_data(workloads: Sequence[str], device: torch.device, *, mnist_root: str | None = None) -> None:
    """Checks that each workload's dataset files are there for this device type, before anything trains.

    Raises:
        SystemExit: naming the workload, the folder it reads and ``--mnist-root``, the option that moves it.
    """
    from registry import DATASETS, RegistryError

    for workload in dict.fromkeys(workloads):
        spec = workload_spec(workload, device, mnist_root=mnist_root)
        try:
            DATASETS.check(spec.dataset, spec.dataset_params)
        except RegistryError as err:
            raise SystemExit(f"bench perf: the {workload} workload on {device.type} reads {spec.dataset} from "
                             f"{spec.dataset_params.get('root')}: {err}. Point --mnist-root at the folder of the "
                             f"MNIST IDX files (train-images-idx3-ubyte[.gz], ...)") from None


def measure(workload: str, *, device: str | None = None, batch_size: int | None = None,
            precision: str | None = None, epochs: int | None = None, repeats: int = 1,
            mnist_root: str | None = None) -> PerfResult:
    """Bare vs harness images/s for a named workload; ``repeats`` alternates the two and keeps the best of each."""
    dev = pick_device(device)
    spec = workload_spec(workload, dev, mnist_root=mnist_root, batch_size=batch_size, precision=precision,
                         epochs=epochs)
    bare = harness = 0.0
    for _ in range(repeats):
        bare = max(bare, bare_images_per_second(spec, dev))
        harness = max(harness, harness_images_per_second(spec, dev))
    return PerfResult(workload, _device_label(dev), spec.batch_size, spec.precision, bare, harness)


def fused_throughput(trials: int, *, workload: str = "lenet", device: str | None = None,
                     epochs: int | None = None, mnist_root: str | None = None) -> dict[str, Any]:
    """Aggregate training images/s of ``trials`` copies of a workload's trial fused into one program
    (`bench.fused`), against the same trial run alone (`bench.trial.run_trial`); each after a 1-epoch warm-up.

    Returns:
        ``trials``, ``workload``, ``device``, ``batch_size``, ``alone_images_per_second``,
        ``fused_images_per_second`` (all trials' images over the group's training time) and ``speedup``
        (their ratio: above 1, fusing beats running the trials one after another).
    """
    from bench.fused import run_fused_trials

    dev = pick_device(device)
    spec = workload_spec(workload, dev, mnist_root=mnist_root, epochs=epochs)
    options = TrialOptions(device=str(dev), progress=False)
    alone = harness_images_per_second(spec, dev, options=options)
    run_fused_trials([spec.replace(epochs=1)] * trials, [options] * trials)
    results = run_fused_trials([spec] * trials, [options] * trials)
    fused = trials * results[0].images_per_second  # each trial's images over the shared training time
    return {"trials": trials, "workload": workload, "device": _device_label(dev), "batch_size": spec.batch_size,
            "alone_images_per_second": alone, "fused_images_per_second": fused, "speedup": fused / alone}


def jpeg_feed(workload: str = "mobilenet", *, device: str | None = None, epochs: int | None = None,
              repeats: int = 1, loader_workers: int | None = None, quality: int = 95) -> dict[str, Any]:
    """The harness trained from a folder of JPEG files against the same faces resident on the device.

    The workload's synthetic faces (`WORKLOADS`, a ``synthetic-faces`` one) are rendered once, written as
    ``root/<identity>/<n>.jpg`` at their size, and the same spec is trained twice by `run_trial`: from the
    rendered tensors (``synthetic-faces``, on the device) and from the folder (``imagefolder``, decoded as a
    trial decodes it, `bench.data.default_loader_workers` unless ``loader_workers``; random flips). Also
    timed: the loader alone (decode, collate, copy, no training).

    Returns:
        ``resident_images_per_second``, ``jpeg_images_per_second``, their ``ratio``,
        ``loader_images_per_second``, ``images``, ``loader_workers``, ``jpeg_bytes_per_image``, ``device``.
    """
    from bench.data import default_loader_workers

    dev = pick_device(device)
    resident = workload_spec(workload, dev, epochs=epochs)  # `measure`'s dataset parameters: rendered once
    if resident.dataset != "synthetic-faces":
        raise ValueError(f"jpeg_feed needs a synthetic-faces workload, but {workload!r} trains on {resident.dataset}")
    workers = loader_workers if loader_workers is not None else default_loader_workers(dev)
    with tempfile.TemporaryDirectory(prefix="marginbench-jpeg-") as tmp:
        train = load_dataset(resident).train
        size = write_jpeg_folder(Path(tmp), train.images, train.labels, quality=quality)
        folder = resident.replace(dataset="imagefolder", dataset_params={"root": tmp, "split": "none"})
        options = TrialOptions(device=str(dev), progress=False, num_workers=workers)
        best = {"resident": 0.0, "jpeg": 0.0, "loader": 0.0}
        for _ in range(repeats):
            best["resident"] = max(best["resident"], harness_images_per_second(resident, dev))
            best["jpeg"] = max(best["jpeg"], harness_images_per_second(folder, dev, options=options))
            best["loader"] = max(best["loader"], loader_images_per_second(folder, dev, workers))
    return {"workload": workload, "device": _device_label(dev), "batch_size": resident.batch_size,
            "precision": resident.precision, "images": len(train.labels), "loader_workers": workers,
            "jpeg_bytes_per_image": size / len(train.labels), "resident_images_per_second": best["resident"],
            "jpeg_images_per_second": best["jpeg"], "ratio": best["jpeg"] / best["resident"],
            "loader_images_per_second": best["loader"]}


def write_jpeg_folder(root: Path, images: torch.Tensor, labels: torch.Tensor, *, quality: int = 95) -> int:
    """Writes ``(N, C, H, W)`` images in ``[-1, 1]`` as ``root/<label:05d>/<n:06d>.jpg`` (threads: PIL's
    encoder releases the GIL); returns the bytes written."""
    from concurrent.futures import ThreadPoolExecutor

    from registry.datasets._images import encode_image

    for label in labels.unique().tolist():
        (root / f"{label:05d}").mkdir(parents=True, exist_ok=True)

    def write(i: int) -> int:
        blob = encode_image(images[i], "jpg", quality=quality)
        (root / f"{int(labels[i]):05d}" / f"{i:06d}.jpg").write_bytes(blob)
        return len(blob)

    with ThreadPoolExecutor(max(2, torch.get_num_threads())) as pool:
        return sum(pool.map(write, range(len(labels))))


def loader_images_per_second(spec: TrialSpec, device: torch.device, num_workers: int) -> float:
    """Images/s of `bench.data.Batches` alone on ``spec``'s training split: decoding, collation, the copy to
    ``device`` and scaling there, no training; over ``spec.epochs`` epochs after one warm-up epoch."""
    from bench.data import Batches

    bundle = load_dataset(spec)
    batches = Batches(bundle.train, spec.batch_size, device, shuffle=True, generator=torch.Generator().manual_seed(0),
                      num_workers=num_workers, channels_last=spec.channels_last)
    seen = 0
    for epoch in range(1 + spec.epochs):
        if epoch == 1:
            _sync(device)
            t0 = time.perf_counter()
        for images, _ in batches:
            seen += len(images) if epoch else 0
    _sync(device)
    return seen / (time.perf_counter() - t0)


def logging_overhead(epochs: int = 20, device: str | None = None, *, mnist_root: str | None = None
                     ) -> dict[str, float]:
    """Share of a LeNet++ trial's wall time spent in MLflow logging calls (a throwaway sqlite store)."""
    from bench.runner import execute_trial
    from bench.tracking import StudyTracker

    dev = pick_device(device)
    spec = workload_spec("lenet", dev, mnist_root=mnist_root, epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        tracker = StudyTracker("perf-logging", f"sqlite:///{Path(tmp) / 'mlflow.db'}")
        # open and close one run first so that store start-up is not charged to the measured trial
        execute_trial(spec.replace(epochs=1), tracker, TrialOptions(device=str(dev), progress=False))
        t0 = time.perf_counter()
        run = tracker.start_trial(spec, device=str(dev))
        setup = time.perf_counter() - t0
        result = run_trial(spec, TrialOptions(device=str(dev), progress=False, on_epoch=run.log_epoch))
        in_loop = run.log_seconds  # before finish, whose flush and tags add to log_seconds and are timed as close
        t1 = time.perf_counter()
        run.finish(result.status)
        close = time.perf_counter() - t1
        wall = time.perf_counter() - t0
    return {"epochs": epochs, "wall_seconds": wall, "logging_seconds_in_trial": in_loop,
            "run_open_close_seconds": setup + close, "logging_share_in_trial": in_loop / wall,
            "logging_share_total": (in_loop + setup + close) / wall}


def search_seeds_problem(search: Sequence[str], seeds: Sequence[int] | None) -> str | None:
    """Why ``seeds`` (``bench perf --seeds``) cannot replace the seeds of a grid whose ``search:`` keys are
    ``search``, or None when they can: its trials sample hyperparameters with one seed (`bench.study`), so several
    seeds fail its study check, and there would be no per-seed accuracies of one configuration to compare."""
    if seeds is None or not search or len(seeds) < 2:
        return None
    return (f"the grid has search: ranges ({', '.join(search)}), whose trials sample hyperparameters with one seed, "
            f"so {len(seeds)} seeds give no seed noise to measure; drop --seeds (or give one seed, --seeds "
            f"{seeds[0]},), or time a grid without search: over seeds")


def time_grid(grid: Grid | str | Path, *, device: str | None = None, workers: int | None = None,
              sets: Sequence[str] = (), fuse: int = 1, seeds: Sequence[int] | None = None) -> dict[str, Any]:
    """Wall time of a whole grid, trained into a throwaway MLflow store and Optuna journal.

    Runs in the current directory, so that the grid's relative paths (``dataset.root``) mean what they mean
    to ``bench run``. ``grid`` is a path, or a `Grid` already loaded with ``sets`` applied (as the CLI checks
    it before anything trains); ``sets`` are ``--set KEY=VALUE`` overrides, passed on to worker processes too; ``fuse``
    is ``bench run --fuse``; ``seeds`` replace the grid's ``seeds`` (to measure seed noise).

    Returns:
        ``grid``, ``trials``, ``seeds``, ``wall_seconds``, ``counts`` (trials per final state: all ``finished``
        when every cell trained), ``tables``: the grid's tables as markdown (its accuracies), and ``records``:
        each trial's ``label``, ``seed``, ``status``, ``train_acc`` and ``test_acc`` (`bench.seed_noise`).
    """
    import yaml

    from bench.commands._common import parse_sets, typed_sets
    from bench.grid import load_grid
    from bench.seed_noise import trial_records
    from bench.study import StudyConfig, plan_slots
    from bench.workers import run_study
    from reports.markdown import default_table

    if not isinstance(grid, Grid):
        grid = load_grid(grid, overrides=parse_sets(list(sets)), typed=typed_sets(list(sets)))
    problem = search_seeds_problem(list(StudyConfig.from_grid(grid).search), seeds)
    if problem is not None:  # else run_study fails on a temporary copy of the grid, named in its error
        raise ValueError(f"{grid.path}: seeds {list(seeds or [])}: {problem}")
    with tempfile.TemporaryDirectory(prefix="marginbench-grid-") as tmp:
        if seeds is not None and list(seeds) != grid.seeds:
            # worker processes read the grid from its file, so the new seeds go into a copy of it
            copy = Path(tmp) / grid.path.name
            copy.write_text(yaml.safe_dump({**grid.raw, "seeds": list(seeds)}, sort_keys=False))
            grid = load_grid(copy, overrides=parse_sets(list(sets)), typed=typed_sets(list(sets)))
        tracking_uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        t0 = time.perf_counter()
        report = run_study(grid, storage=str(Path(tmp) / "optuna.journal"), tracking_uri=tracking_uri,
                           workers=workers, device=device, plots=False, progress=False, sets=sets, fuse=fuse,
                           echo=lambda line: None)
        wall = time.perf_counter() - t0
        tables = default_table(grid, tracking_uri)
        records = trial_records(grid, tracking_uri)
    slots = plan_slots(grid, StudyConfig.from_grid(grid))  # a search grid runs n_trials per cell, not its seeds
    return {"grid": grid.name, "trials": len(slots), "seeds": grid.seeds,
            "workers": workers or grid.raw.get("workers", 1), "fuse": fuse, "wall_seconds": wall,
            "counts": dict(report.counts), "tables": tables, "records": records}


def _device_label(device: torch.device) -> str:
    from bench.tracking import device_name

    return device_name(device)


def to_json(obj: Any) -> str:
    return json.dumps(asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj, indent=2)


def head_memory(num_classes: int = 1_000_000, batch_size: int = 512, embedding_dim: int = 512,
                chunk_classes: int = 65536, device: str | None = None) -> dict[str, float]:
    """Peak memory and time of the registered CosFace head's forward+backward with ``chunk_classes=0`` (plain
    ``(B, C)`` logits) and with ``chunk_classes`` (class-chunked), on the same weights, beyond the weights and
    their gradient (which both need). Memory: CUDA's peak allocator statistics; on the CPU the peak resident
    size of a fresh process per variant (`cpu_head_peak_gib`, Linux)."""
    import math

    from registry import LOSSES

    dev = pick_device(device)
    torch.manual_seed(0)
    heads = {name: LOSSES.create("cosface", embedding_dim=embedding_dim, num_classes=num_classes, s=64.0, m=0.35,
                                 chunk_classes=chunk).to(dev)
             for name, chunk in (("plain", 0), ("chunked", chunk_classes))}
    weight = heads["plain"].weight
    heads["chunked"].weight = weight  # the same parameter: both heads see identical weights

    out: dict[str, float] = {"num_classes": num_classes, "batch_size": batch_size, "embedding_dim": embedding_dim}
    emb = torch.randn(batch_size, embedding_dim, device=dev, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch_size,), device=dev)
    results = {}
    for name, head in heads.items():
        weight.grad = None
        emb.grad = None
        loss = head(emb, labels)  # warm-up, and allocates weight.grad
        loss.backward()
        grads = (emb.grad.clone(), weight.grad.clone())
        weight.grad = emb.grad = None  # as after zero_grad(set_to_none=True), which the trial loop calls
        _sync(dev)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev) + weight.numel() * weight.element_size()  # + the new grad
        t0 = time.perf_counter()
        loss = head(emb, labels)
        loss.backward()
        _sync(dev)
        out[f"{name}_ms"] = 1000 * (time.perf_counter() - t0)
        if dev.type == "cuda":
            out[f"{name}_peak_extra_gib"] = (torch.cuda.max_memory_allocated(dev) - base) / 2**30
        results[name] = (loss.item(), grads)
        del grads
    out["loss"] = results["plain"][0]
    out["loss_abs_diff"] = abs(results["plain"][0] - results["chunked"][0])
    out["loss_rel_diff"] = out["loss_abs_diff"] / abs(results["plain"][0])
    out["grad_w_max_abs_diff"] = max_abs_diff(results["plain"][1][1], results["chunked"][1][1])
    out["grad_x_max_abs_diff"] = float((results["plain"][1][0] - results["chunked"][1][0]).abs().max())
    out["grad_w_max_rel_diff"] = out["grad_w_max_abs_diff"] / float(results["plain"][1][1].abs().max())
    out["grad_x_max_rel_diff"] = out["grad_x_max_abs_diff"] / float(results["plain"][1][0].abs().max())
    # Which of the two float32 results is off: both against CosFace's formula in float64
    weight.grad = emb.grad = None
    ref_loss, (ref_gx, ref_gw) = float64_head_reference(weight, emb, labels, s=64.0, m=0.35)
    for name, (loss_value, (gx, gw)) in results.items():
        out[f"{name}_loss_err_vs_fp64"] = abs(loss_value - ref_loss)
        out[f"{name}_grad_w_err_vs_fp64"] = max_abs_diff(gw, ref_gw)
        out[f"{name}_grad_x_err_vs_fp64"] = max_abs_diff(gx, ref_gx)
    del ref_gw, ref_gx
    if dev.type == "cuda":
        out["memory_ratio"] = out["chunked_peak_extra_gib"] / out["plain_peak_extra_gib"]
    out["finite"] = float(math.isfinite(results["chunked"][0]))
    if dev.type == "cpu":
        del heads, weight, emb, results
        for name, chunk in (("plain", 0), ("chunked", chunk_classes)):
            out[f"{name}_peak_extra_gib"] = cpu_head_peak_gib(num_classes, batch_size, embedding_dim, chunk)
        out["memory_ratio"] = out["chunked_peak_extra_gib"] / out["plain_peak_extra_gib"]
    return out


def float64_head_reference(weight: torch.Tensor, emb: torch.Tensor, labels: torch.Tensor, *, s: float, m: float,
                           rows: int = 64) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
    """CosFace's loss and ``(grad emb, grad weight)`` in float64 from the formula, without either head's code.

    ``L = mean_i CE(s * cos theta_ij - s * m [j = y_i])`` with ``cos theta_ij = <x_i/|x_i|, w_j/|w_j|>``; its
    gradient in the normalized weights is ``sum_i s (p_ij - [j = y_i]) / B * x_i/|x_i|``, taken back through
    the normalization by ``(g - w_hat <g, w_hat>) / |w|``. The batch goes ``rows`` embeddings at a time into
    one float64 gradient buffer, so that at a million classes the peak is the normalized weights and that
    buffer (8 GiB at 1M x 512), not the ``(B, C)`` logits and their copies.
    """
    w = weight.detach()
    norm = torch.linalg.vector_norm(w, dim=1, dtype=torch.float64).clamp_min(1e-12)
    w_hat = w.double().div_(norm[:, None])
    x = emb.detach().double()
    x_norm = torch.linalg.vector_norm(x, dim=1).clamp_min(1e-12)
    x_hat = x / x_norm[:, None]
    grad_w_hat = torch.zeros_like(w_hat)
    grad_x_hat = torch.empty_like(x_hat)
    batch, total = len(labels), 0.0
    for start in range(0, batch, rows):
        sl = slice(start, start + rows)
        y = labels[sl]
        idx = torch.arange(len(y), device=y.device)
        logits = (x_hat[sl] @ w_hat.T).mul_(s)
        logits[idx, y] -= s * m
        lse = torch.logsumexp(logits, dim=1)
        total += float((lse - logits[idx, y]).sum()) / batch
        g = logits.sub_(lse[:, None]).exp_()  # softmax, in place
        g[idx, y] -= 1.0
        g.mul_(s / batch)  # d L / d cos
        grad_w_hat.addmm_(g.T, x_hat[sl])
        grad_x_hat[sl] = g @ w_hat
        del logits, g
    # back through w_hat = w / |w| and x_hat = x / |x|, in place (chunks of rows keep the temporaries small)
    block = 65536
    for start in range(0, len(w_hat), block):
        gw, wh = grad_w_hat[start:start + block], w_hat[start:start + block]
        gw.sub_(wh * (gw * wh).sum(1, keepdim=True)).div_(norm[start:start + block, None])
    grad_x = (grad_x_hat - x_hat * (grad_x_hat * x_hat).sum(1, keepdim=True)) / x_norm[:, None]
    return total, (grad_x, grad_w_hat)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor, *, rows: int = 65536) -> float:
    """``max |a - b|`` in float64, a block of rows at a time (no full-size temporaries at a million classes)."""
    return max(float((a[i:i + rows].double() - b[i:i + rows].double()).abs().max()) for i in range(0, len(a), rows))


def cpu_head_peak_gib(num_classes: int, batch_size: int, embedding_dim: int, chunk_classes: int) -> float:
    """Peak resident memory (GiB) of one CosFace forward+backward on the CPU beyond the weights, their gradient
    and the batch, measured in a fresh process (its peak resident size, ``VmHWM``, before and after the step)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_head_peak_in_child, (num_classes, batch_size, embedding_dim, chunk_classes))


def _head_peak_in_child(num_classes: int, batch_size: int, embedding_dim: int, chunk_classes: int) -> float:
    from registry import LOSSES

    torch.manual_seed(0)
    head = LOSSES.create("cosface", embedding_dim=embedding_dim, num_classes=num_classes, s=64.0, m=0.35,
                         chunk_classes=chunk_classes)
    emb = torch.randn(batch_size, embedding_dim, requires_grad=True)
    labels = torch.randint(0, num_classes, (batch_size,))
    before = _proc_status_kib("VmHWM")
    head(emb, labels).backward()  # weight.grad is None before, as after zero_grad(set_to_none=True)
    grad_gib = head.weight.grad.numel() * head.weight.grad.element_size() / 2**30
    return (_proc_status_kib("VmHWM") - before) / 2**20 - grad_gib


def _proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` size in KiB: ``VmHWM`` is this process's peak resident size (unlike ``ru_maxrss``
    it does not carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} (Linux only)")
