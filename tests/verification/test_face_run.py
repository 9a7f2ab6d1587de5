"""`bench run` end to end on synthetic faces written to disk as an image folder with an LFW-format pairs.txt:
the run logs the 10-fold verification metrics per epoch, the ROC curve and the embedding pictures to MLflow."""

from __future__ import annotations

import pytest

from bench.cli import main

GRID = """
name: faces-on-disk
base:
  dataset: {{name: imagefolder, root: "{train}", split: none, image_size: [32, 32], in_chans: 3,
             pairs: "{pairs_txt}", pairs_root: "{pairs_root}", pairs_name: lfw}}
  backbone: lenet++
  epochs: 2
  batch_size: 32
  optimizer: {{name: adam, lr: 0.003}}
grid:
  loss:
    - {{label: cosface, loss: {{name: cosface, s: 16.0, m: 0.2}}}}
  embedding_dim: [{dims}]
seeds: [0]
"""


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from registry.datasets.synthetic_faces import write_image_folder

    root = tmp_path_factory.mktemp("faces") / "set"
    return write_image_folder(root, identities=10, images_per_identity=6, image_size=(32, 32), test_identities=6,
                              pairs_per_fold=3)


def _runs(in_tmp):
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{in_tmp / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["faces-on-disk"],
                              filter_string="tags.`marginbench.role` = 'trial'")
    return mlflow.tracking.MlflowClient(), runs


def test_bench_run_logs_verification_roc_and_embedding_pictures(in_tmp, faces):
    (in_tmp / "faces.yaml").write_text(GRID.format(dims="2, 16", **{k: str(v) for k, v in faces.items()}))
    assert main(["run", "--grid", "faces.yaml", "--no-progress", "--plots"]) == 0
    client, runs = _runs(in_tmp)
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    for _, row in runs.iterrows():
        run_id, dim = row["run_id"], int(row["params.embedding_dim"])
        for metric in ("lfw_acc", "lfw_acc_std", "lfw_auc", "lfw_tar_far1e-3", "lfw_tar_far1e-4", "train_acc"):
            history = client.get_metric_history(run_id, metric)
            assert sorted(m.step for m in history) == [0, 1], metric  # one value per epoch
        acc = client.get_metric_history(run_id, "lfw_acc")[-1].value
        assert 0.0 <= acc <= 1.0
        plots = {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "plots")}
        assert "roc_lfw.png" in plots
        if dim == 2:  # a scatter per epoch with the class directions, gathered into a GIF
            assert {"embeddings_epoch000.png", "embeddings_epoch001.png", "embeddings.gif"} <= plots
        else:  # t-SNE once, at the end
            assert "embeddings_tsne.png" in plots
        local = client.download_artifacts(run_id, "plots/roc_lfw.png", str(in_tmp / f"dl{dim}"))
        with open(local, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    # the report: the default table takes the pair accuracy (no closed-set test split here), and the export
    # tiles the 2-D run's last-epoch scatter beside the table
    assert main(["report", "--grid", "faces.yaml", "--export", "--results-dir", "results"]) == 0
    folder = in_tmp / "results" / "faces-on-disk"
    csv = (folder / "faces-on-disk.csv").read_text()
    assert "lfw_acc" in csv.splitlines()[0] and set(runs["run_id"]) <= set(csv.split(",")) | {
        line.split(",")[0] for line in csv.splitlines()}
    with open(folder / "faces-on-disk.embeddings.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
