"""Golden files: every table shape the seed repositories publish, rendered from a fixed runs frame, must match
the markdown under tests/reports/golden/ byte for byte (rebuild with UPDATE_GOLDEN=1 and review the diff)."""

from __future__ import annotations

from reports.markdown import render_results
from reports.results import results_frame
from reports.spec import TableSpec, parse_tables

from .conftest import frame, run_row


def _render(rows, table: dict, order: dict, grid: str = "g") -> str:
    spec = TableSpec.from_dict(table, axes=list(order))
    return render_results(results_frame(frame(rows), spec, grid=grid, order=order))


def test_face_loss_table_shows_diverged_cells(golden):
    # The "Visualization of Face Loss" shape: loss x (train, test accuracy) in percent; ArcFace on 2-D features
    # diverged in every seed ("diverged"), SphereFace in one of three ("(n=2, 1 diverged)"); rows follow the
    # grid's order, not the order the runs were logged in; a rerun of CosFace seed 0 replaces the older run.
    L = lambda name: {"loss": name}  # noqa: E731
    rows = [
        run_row(L("ArcFace"), 0, "diverged", train_acc=0.31), run_row(L("ArcFace"), 1, "diverged"),
        run_row(L("ArcFace"), 2, "diverged"),
        run_row(L("CosFace"), 0, start=0, train_acc=0.5, test_acc=0.5),  # superseded by the rerun below
        run_row(L("CosFace"), 0, train_acc=0.9931, test_acc=0.9912),
        run_row(L("CosFace"), 1, train_acc=0.9925, test_acc=0.9904),
        run_row(L("CosFace"), 2, train_acc=0.9940, test_acc=0.9921),
        run_row(L("Softmax"), 0, train_acc=0.9921, test_acc=0.9863),
        run_row(L("Softmax"), 1, train_acc=0.9934, test_acc=0.9870),
        run_row(L("Softmax"), 2, train_acc=0.9911, test_acc=0.9851),
        run_row(L("SphereFace"), 0, train_acc=0.9947, test_acc=0.9920),
        run_row(L("SphereFace"), 1, "diverged", train_acc=0.2),
        run_row(L("SphereFace"), 2, train_acc=0.9951, test_acc=0.9915),
    ]
    table = {"name": "face-loss", "rows": "loss", "columns": ["train_acc", "test_acc"], "percent": True,
             "digits": 2, "headers": {"loss": "Loss", "train_acc": "Train Acc. (%)", "test_acc": "Test Acc. (%)"}}
    order = {"loss": ["Softmax", "SphereFace", "CosFace", "ArcFace"]}
    golden("face_loss.md", _render(rows, table, order, grid="losses"))


def test_casia_lfw_table_with_best_epoch_and_ci(golden):
    # CASIA-WebFace -> LFW: model x LFW accuracy (best epoch), 95% t interval, one model with a single seed.
    M = lambda name: {"model": name}  # noqa: E731
    rows = [
        run_row(M("SphereFace-20 A-Softmax"), 0, **{"best.lfw_acc": 0.9912, "best.lfw_auc": 0.9987}),
        run_row(M("SphereFace-20 A-Softmax"), 1, **{"best.lfw_acc": 0.9905, "best.lfw_auc": 0.9984}),
        run_row(M("SphereFace-20 A-Softmax"), 2, **{"best.lfw_acc": 0.9921, "best.lfw_auc": 0.9990}),
        run_row(M("SphereFace-20 CosFace"), 0, **{"best.lfw_acc": 0.9930, "best.lfw_auc": 0.9991}),
    ]
    table = {"name": "casia-lfw", "rows": "model", "columns": ["lfw_acc", "lfw_auc"], "metric_source": "best",
             "ci": True, "title": "CASIA-WebFace → LFW, 10-fold verification accuracy (best epoch)",
             "headers": {"model": "Model", "lfw_acc": "LFW acc.", "lfw_auc": "LFW AUC"}}
    golden("casia_lfw.md", _render(rows, table, {"model": ["SphereFace-20 A-Softmax", "SphereFace-20 CosFace"]},
                                   grid="casia-lfw"))


def test_sphereface_mnist_matrix(golden):
    # SphereFace MNIST: softmax variant x feature dimension, test accuracy in each cell, with the t interval.
    values = {("Original softmax", "2-D"): [0.9821, 0.9810], ("Original softmax", "3-D"): [0.9891, 0.9902],
              ("Modified softmax", "2-D"): [0.9843, 0.9856], ("Modified softmax", "3-D"): [0.9905, 0.9899],
              ("A-Softmax (m=4)", "2-D"): [0.9914, 0.9921], ("A-Softmax (m=4)", "3-D"): [0.9932, 0.9936]}
    rows = [run_row({"loss": loss, "dim": dim}, seed, test_acc=v)
            for (loss, dim), vs in values.items() for seed, v in enumerate(vs)]
    table = {"name": "sphereface-mnist", "rows": "loss", "columns": "dim", "metric": "test_acc", "ci": True,
             "percent": True, "digits": 2, "headers": {"loss": "Softmax variant"}}
    order = {"loss": ["Original softmax", "Modified softmax", "A-Softmax (m=4)"], "dim": ["2-D", "3-D"]}
    golden("sphereface_mnist.md", _render(rows, table, order, grid="sphereface-mnist"))


def test_per_class_table_transposed_with_mean_row(golden):
    # Per-class columns for several models, classes as rows in natural order (class_2 before class_10), the
    # models as columns, a Mean row (mIOU-style); bold marks the best model per class.
    models = {"LeNet++": 0.90, "ResNet-mini": 0.95}
    rows = []
    for model, base in models.items():
        for seed in (0, 1):
            per_class = {f"test_acc.class_{c}": round(base + 0.004 * c - 0.01 * seed, 4) for c in range(11)}
            rows.append(run_row({"model": model}, seed, **per_class))
    table = {"name": "per-class", "rows": "model", "columns": {"pattern": "test_acc.class_*"}, "transpose": True,
             "mean_row": True, "digits": 3, "headers": {"metric": "Class"}}
    golden("per_class.md", _render(rows, table, {"model": list(models)}, grid="per-class"))


def test_loss_by_backbone_matrix_with_pruned_failed_and_missing(golden):
    # Light-backbone comparison: loss x backbone; one cell all pruned, one all failed, one with a pruned seed
    # beside finished ones, one never run ("-"); the summary line counts what is not in the means.
    B = lambda loss, bb: {"loss": loss, "backbone": bb}  # noqa: E731
    rows = [
        run_row(B("softmax", "mobilenetv3_large"), 0, test_acc=0.8811),
        run_row(B("softmax", "mobilenetv3_large"), 1, test_acc=0.8790),
        run_row(B("softmax", "mobilenetv3_small"), 0, "pruned", test_acc=0.41),
        run_row(B("softmax", "mobilenetv3_small"), 1, "pruned", test_acc=0.39),
        run_row(B("softmax", "efficientnet_b0"), 0, test_acc=0.9012),
        run_row(B("softmax", "efficientnet_b0"), 1, test_acc=0.9034),
        run_row(B("cosface", "mobilenetv3_large"), 0, test_acc=0.9120),
        run_row(B("cosface", "mobilenetv3_large"), 1, test_acc=0.9102),
        run_row(B("cosface", "mobilenetv3_large"), 2, "pruned", test_acc=0.50),
        run_row(B("cosface", "mobilenetv3_small"), 0, "failed"),
        run_row(B("cosface", "efficientnet_b0"), 0, test_acc=0.9215),
        run_row(B("cosface", "efficientnet_b0"), 1, test_acc=0.9198),
        run_row(B("arcface", "mobilenetv3_large"), 0, test_acc=0.9133),
        run_row(B("arcface", "mobilenetv3_large"), 1, test_acc=0.9110),
        run_row(B("arcface", "mobilenetv3_small"), 0, test_acc=0.8702),
        run_row(B("arcface", "mobilenetv3_small"), 1, test_acc=0.8688),
    ]
    report = {"tables": [{"name": "backbones", "rows": "loss", "columns": "backbone", "metric": "test_acc"}]}
    spec = parse_tables(report, axes=["loss", "backbone"])[0]
    order = {"loss": ["softmax", "cosface", "arcface"],
             "backbone": ["mobilenetv3_large", "mobilenetv3_small", "efficientnet_b0"]}
    golden("backbones.md", render_results(results_frame(frame(rows), spec, grid="backbones", order=order)))


def test_default_table_single_seed_and_no_bold_for_one_row(golden):
    # The default shape (train/test accuracy), one row with one seed: no std, nothing to compare, no bold;
    # a pipe in a label is escaped.
    rows = [run_row({"loss": "a|b"}, 0, train_acc=0.5, test_acc=0.25)]
    golden("single.md", _render(rows, {"name": "single", "rows": "loss"}, {"loss": ["a|b"]}))


def test_search_grid_table_keeps_each_cells_best_run(golden):
    # A grid with search: ranges samples hyperparameters in each cell (one seed): select: best shows the cell's
    # best run by test accuracy, and every column comes from that same run.
    L = lambda name: {"loss": name}  # noqa: E731
    rows = [run_row(L("cosface"), 0, test_acc=0.91, train_acc=0.99, run_id="c1"),
            run_row(L("cosface"), 0, test_acc=0.95, train_acc=0.97, run_id="c2"),
            run_row(L("cosface"), 0, "pruned", test_acc=0.40, run_id="c3"),
            run_row(L("cosface"), 0, test_acc=0.93, train_acc=0.98, run_id="c4"),
            run_row(L("arcface"), 0, test_acc=0.94, train_acc=0.96, run_id="a1"),
            run_row(L("arcface"), 0, "diverged", run_id="a2")]
    for i, row in enumerate(rows):
        row["trial_key"] = f"sampled-{i}"  # sampled trials differ in their params
    table = {"name": "search", "rows": "loss", "columns": ["test_acc", "train_acc"], "select": "best"}
    golden("search_best.md", _render(rows, table, {"loss": ["cosface", "arcface"]}, grid="search"))
