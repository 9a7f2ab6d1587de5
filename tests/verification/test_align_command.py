"""``bench align`` end to end, in process, on a generated folder with a landmark file."""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image

from bench.align import ARCFACE_112x112, transform_points
from bench.cli import main
from bench.commands import align as align_command


def write_folder(root):
    """Two flat grey 'photos' and a landmark file listing only the first."""
    m = np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 5.0]])  # template -> photo: twice the size, shifted
    points = transform_points(m, ARCFACE_112x112)
    for name in ("a/1.jpg", "b/2.png"):
        (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((250, 250, 3), 100, np.uint8)).save(root / "src" / name)
    (root / "lm.txt").write_text("a/1.jpg\t" + "\t".join(f"{v:.3f}" for v in points.ravel()) + "\n")


def test_register_adds_the_align_parser_with_its_options():
    parser = argparse.ArgumentParser()
    align_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["align", "--src", "s", "--dst", "d", "--template", "arcface", "--landmarks", "l.txt",
                              "--mtcnn-weights", "w"])
    got = (args.src, args.dst, args.template, args.landmarks, args.mtcnn_weights)
    assert got == ("s", "d", "arcface", "l.txt", "w")
    assert args.handler is align_command.run


def test_align_with_a_landmark_file_and_no_detector(tmp_path, capsys):
    write_folder(tmp_path)
    code = main(["align", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--template", "arcface",
                 "--landmarks", str(tmp_path / "lm.txt"), "--no-detect", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "aligned 1 (1 from landmarks, 0 detected)" in out and "skipped b/2.png: no landmarks" in out
    with Image.open(tmp_path / "dst" / "a" / "1.jpg") as im:
        assert im.size == (112, 112)
    assert not (tmp_path / "dst" / "b").exists()


def test_missing_weights_without_landmarks_is_a_clear_error(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path)
    monkeypatch.setenv("MARGINBENCH_MTCNN_WEIGHTS", str(tmp_path / "no-weights"))
    code = main(["align", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "no-weights" in err and "pip install --no-deps facenet-pytorch" in err
    assert not (tmp_path / "dst").exists()


def test_bad_landmark_file_names_the_line(tmp_path, capsys):
    write_folder(tmp_path)
    (tmp_path / "bad.txt").write_text("a/1.jpg 1 2 3\n")
    code = main(["align", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--landmarks",
                 str(tmp_path / "bad.txt"), "--no-detect", "--no-progress"])
    assert code == 2 and "bad.txt:1:" in capsys.readouterr().err


def test_cuda_device_without_a_gpu_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import torch

    write_folder(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["align", "--src", str(tmp_path / "src"), "--dst", str(tmp_path / "dst"), "--device", "cuda",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "torch sees no CUDA GPU" in err and "leave --device out" in err
    assert not (tmp_path / "dst").exists()
