"""marginbench: train margin-softmax losses over YAML grids, track every run in MLflow, rebuild tables."""

from __future__ import annotations

__version__ = "0.1.0"
