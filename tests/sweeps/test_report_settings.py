"""A smoke run with other settings (``--set epochs=1``) and the full run of the same grid share a study; each
one's table counts its own runs, never the two as two seeds of one cell."""

from __future__ import annotations

import re

from bench.cli import main

GRID = """\
name: smoke
base: {dataset: tiny-blobs, backbone: lenet++, embedding_dim: 4, epochs: 2, batch_size: 16, eval_batch_size: 64}
grid:
  loss:
    - {label: softmax, loss: softmax}
    - {label: cosface, loss: {name: cosface, s: 10.0, m: 0.1}}
seeds: [0]
"""


def test_report_tables_the_runs_of_the_settings_asked_for(in_tmp, tiny_dataset, write_grid, capsys):
    grid = str(write_grid(GRID))
    assert main(["run", "--grid", grid, "--set", "epochs=1", "--no-progress"]) == 0
    assert main(["run", "--grid", grid, "--no-progress"]) == 0
    capsys.readouterr()
    for sets, epochs, other in (([], "2 epochs", "epochs=1"), (["--set", "epochs=1"], "1 epoch", "epochs=2")):
        assert main(["report", "--grid", grid, *sets]) == 0
        out = capsys.readouterr().out
        assert re.findall(r"\(n=(\d+)\)", out) == ["1"] * 4, out  # one seed: n=1, not a smoke run averaged in
        assert f"tiny-blobs, {epochs} ·" in out
        assert f"*2 runs of study smoke with other settings ({other}) are left out of this table" in out
