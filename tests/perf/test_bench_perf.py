"""`bench perf` runs on a tiny case (a benchmark, not a timed test: no speed is asserted here)."""

from __future__ import annotations

import json

from bench.cli import main


def test_bench_perf_prints_both_throughputs_and_their_ratio(in_tmp, capsys):
    out_json = in_tmp / "perf.json"
    assert main(["perf", "--workload", "lenet", "--epochs", "1", "--batch-size", "512", "--logging",
                 "--logging-epochs", "2", "--head", "--head-classes", "3000", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "bare img/s" in out and "harness img/s" in out and "MLflow logging" in out and "CosFace head" in out
    report = json.loads(out_json.read_text())
    lenet = report["workloads"][0]
    assert lenet["bare_images_per_second"] > 0 and lenet["harness_images_per_second"] > 0
    assert abs(lenet["ratio"] - lenet["harness_images_per_second"] / lenet["bare_images_per_second"]) < 1e-9
    assert 0 <= report["logging"]["logging_share_in_trial"] < 1
    assert report["head"]["loss_rel_diff"] < 1e-5 and report["head"]["finite"] == 1.0
    for name in ("plain", "chunked"):  # float32 against the plain head in float64
        assert report["head"][f"{name}_loss_err_vs_fp64"] < 1e-4
        assert report["head"][f"{name}_grad_w_err_vs_fp64"] < 1e-5
        assert report["head"][f"{name}_grad_x_err_vs_fp64"] < 1e-5


def test_bench_perf_jpeg_trains_from_jpeg_files_and_from_the_device(in_tmp, capsys):
    out_json = in_tmp / "perf.json"
    assert main(["perf", "--workload", "lenet", "--epochs", "1", "--jpeg", "--loader-workers", "1",
                 "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    assert "JPEG feed" in out and "from JPEG files" in out
    jpeg = json.loads(out_json.read_text())["jpeg"]
    assert jpeg["images"] == 64 and jpeg["loader_workers"] == 1 and jpeg["jpeg_bytes_per_image"] > 0
    assert jpeg["resident_images_per_second"] > 0 and jpeg["jpeg_images_per_second"] > 0
    assert abs(jpeg["ratio"] - jpeg["jpeg_images_per_second"] / jpeg["resident_images_per_second"]) < 1e-9
