"""Is one run of a grid equal to another "within seed noise"? Per cell, a two-sample t test of a metric's values
over seeds.

The question comes from fused trials (`bench run --fuse K`): a fused program sums in another order than a
trial alone, as another GPU kernel would, so its accuracies are not bit-equal to a sequential run's; the claim
to check is that the difference is no larger than what changing the seed does. Per cell the test is Student's
two-sample t test with a pooled variance (the two runs train the same cell, so one seed-to-seed variance is
assumed for both). It needs three values in all: with one value on one side it is the prediction-interval
test of that value against the other side's seeds, ``t = (x - mean) / (s * sqrt(1 + 1/n))`` with ``n - 1``
degrees of freedom.

Many cells make some p-values small by chance (0.05 x cells expected below 0.05), so `compare_runs` judges a
cell with a Bonferroni level, ``alpha / cells``, and reports the plain count too.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CellComparison", "pooled_t_test", "compare_runs", "unmatched_cells", "trial_records", "format_comparison"]


def pooled_t_test(reference: Sequence[float], candidate: Sequence[float]) -> tuple[float, int] | None:
    """Two-sided p-value and degrees of freedom of Student's pooled-variance t test of equal means.

    Returns:
        ``(p, df)``; None when there are fewer than three values in all or a side is empty. Values that are all
        equal within each side give p = 1 for equal means and 0 otherwise.
    """
    from scipy.stats import t as student_t

    pooled = _pooled_std(reference, candidate)
    if pooled is None:
        return None
    sd, df = pooled
    difference = _mean(candidate) - _mean(reference)
    if sd == 0.0:
        return (1.0 if difference == 0.0 else 0.0), df
    se = sd * math.sqrt(1 / len(reference) + 1 / len(candidate))
    return float(2 * student_t.sf(abs(difference) / se, df)), df


def _mean(values: Sequence[float]) -> float:
    """The correctly rounded mean (`statistics.mean` sums in rationals): seeds of one constant accuracy have that
    accuracy as their mean whatever their count, where ``fsum / n`` could be an ulp off and, against a spread of
    zero, make a t statistic of rounding noise."""
    return float(statistics.mean(values)) if values else float("nan")


def _pooled_std(a: Sequence[float], b: Sequence[float]) -> tuple[float, int] | None:
    """The pooled standard deviation (each side about its own mean) and its degrees of freedom, ``na + nb - 2``;
    None when a side is empty or no degree of freedom is left."""
    df = len(a) + len(b) - 2
    if not a or not b or df < 1:
        return None
    ma, mb = _mean(a), _mean(b)
    return math.sqrt((math.fsum((x - ma) ** 2 for x in a) + math.fsum((x - mb) ** 2 for x in b)) / df), df


@dataclass(frozen=True)
class CellComparison:
    """One cell's metric in two runs of a grid: the finished trials' values, seed order."""

    label: str
    reference: tuple[float, ...]
    candidate: tuple[float, ...]
    p_value: float | None
    alpha: float
    not_finished: tuple[int, int] = (0, 0)  # (reference, candidate) trials that diverged or failed
    finished_alone: tuple[int, ...] = ()  # seeds both runs trained that finished with a value in one run only

    @property
    def difference(self) -> float:
        """Candidate mean minus reference mean (the metric's units: accuracy as a fraction)."""
        return _mean(self.candidate) - _mean(self.reference)

    @property
    def seed_std(self) -> float:
        """The pooled seed-to-seed standard deviation (ddof 1 within each side); NaN below three values."""
        pooled = _pooled_std(self.reference, self.candidate)
        return float("nan") if pooled is None else pooled[0]

    @property
    def detectable(self) -> float:
        """The smallest |difference| of means the test flags at ``alpha``: ``t(1 - alpha/2, df) * seed_std *
        sqrt(1/na + 1/nb)``; NaN when untestable. Few seeds or a wide spread make it large: read it beside a pass.
        """
        from scipy.stats import t as student_t

        na, nb = len(self.reference), len(self.candidate)
        sd = self.seed_std
        if math.isnan(sd):
            return float("nan")
        return float(student_t.ppf(1 - self.alpha / 2, na + nb - 2)) * sd * math.sqrt(1 / na + 1 / nb)

    @property
    def within_noise(self) -> bool | None:
        """True when the means do not differ at level ``alpha``; False too when a seed both runs trained finished in
        one only (`finished_alone`); None when untestable (too few seeds)."""
        if self.finished_alone:
            return False  # one run diverged where the other trained: not noise in the accuracy
        return None if self.p_value is None else self.p_value >= self.alpha


def trial_records(grid: Any, tracking_uri: str, metrics: Sequence[str] = ("train_acc", "test_acc")) -> list[dict]:
    """One record per trial run of ``grid`` in the store: ``label`` (the run's ``label`` tag, `TrialSpec.label`),
    ``seed``, ``status`` and each metric (None where not logged); the grid's cell order, then seed. The latest
    run of a trial run twice; runs of other settings left out, as in the grid's tables (`reports.matching`)."""
    from reports.matching import split_runs
    from reports.results import grid_order
    from reports.runs import latest_runs, load_runs

    runs = latest_runs(split_runs(grid, load_runs(grid.name, tracking_uri)).kept)  # the grid's runs, as its tables
    out = []
    for _, row in runs.iterrows():
        rec = {"label": str(row["label"]), "seed": int(row["seed"]), "status": str(row["status"])}
        for m in metrics:
            v = row.get(m)
            rec[m] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
        out.append(rec)
    order = {label: i for i, label in enumerate(grid_order(grid)["label"])}
    return sorted(out, key=lambda r: (order.get(r["label"], len(order)), r["label"], r["seed"]))


def _value(rec: Mapping[str, Any], metric: str) -> float | None:
    """A finished trial's finite ``metric``; None for a trial that diverged or failed, or has no number (a NaN in
    a JSON written elsewhere counts as none, not as a number of the mean)."""
    value = rec.get(metric)
    if rec["status"] != "finished" or value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _by_cell(records: Sequence[Mapping[str, Any]], metric: str) -> dict[str, dict[Any, float | None]]:
    """Per cell label, each seed's value (`_value`), in record order; a record without a seed is a trial of its
    own, compared with no other run's."""
    cells: dict[str, dict[Any, float | None]] = {}
    for i, rec in enumerate(records):
        seed = rec.get("seed")
        cells.setdefault(rec["label"], {})[("no seed", i) if seed is None else seed] = _value(rec, metric)
    return cells


def _finished_alone(a: Mapping[Any, float | None], b: Mapping[Any, float | None]) -> tuple[int, ...]:
    """The seeds of both runs with a value in one only: compared seed by seed, as a seed one run did not train
    (``--seeds 2`` against ``--seeds 3``) says nothing about divergence."""
    return tuple(seed for seed in a if seed in b and (a[seed] is None) != (b[seed] is None))


def compare_runs(reference: Sequence[Mapping[str, Any]], candidate: Sequence[Mapping[str, Any]], *,
                 metric: str = "test_acc", alpha: float = 0.05) -> list[CellComparison]:
    """Per cell present in both, the t test of ``metric`` (records as `trial_records` gives), judged at the
    Bonferroni level ``alpha / cells``; cells in reference order.

    Raises:
        ValueError: the two runs share no cell (different grids).
    """
    ref, cand = _by_cell(reference, metric), _by_cell(candidate, metric)
    labels = [label for label in ref if label in cand]
    if not labels:
        raise ValueError(f"the two runs share no cell: {sorted(ref)[:3]} vs {sorted(cand)[:3]}")
    level = alpha / len(labels)
    out = []
    for label in labels:
        a = [v for v in ref[label].values() if v is not None]
        b = [v for v in cand[label].values() if v is not None]
        bad = (len(ref[label]) - len(a), len(cand[label]) - len(b))
        test = pooled_t_test(a, b)
        out.append(CellComparison(label, tuple(a), tuple(b), None if test is None else test[0], level, bad,
                                  _finished_alone(ref[label], cand[label])))
    return out


def unmatched_cells(reference: Sequence[Mapping[str, Any]],
                    candidate: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """The cell labels of ``reference`` only and of ``candidate`` only (a grid changed between the runs), in
    record order: `compare_runs` leaves them out."""
    ref, cand = dict.fromkeys(r["label"] for r in reference), dict.fromkeys(r["label"] for r in candidate)
    return [label for label in ref if label not in cand], [label for label in cand if label not in ref]


def format_comparison(cells: Sequence[CellComparison], *, metric: str = "test_acc",
                      names: tuple[str, str] = ("reference", "candidate"),
                      unmatched: tuple[Sequence[str], Sequence[str]] = ((), ())) -> str:
    """A markdown table, one row per cell, and a verdict line; ``unmatched`` (`unmatched_cells`) are named in it as
    not compared."""
    ra, rb = names
    lines = [f"| cell | {ra} {metric} (n) | {rb} {metric} (n) | difference | seed std | flags beyond | p "
             f"| within seed noise |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def side(values: tuple[float, ...], bad: int) -> str:
        extra = f", {bad} not finished" if bad else ""
        return f"{_mean(values):.4f} ({len(values)}{extra})" if values else f"- (0{extra})"

    for c in cells:
        p = "-" if c.p_value is None else f"{c.p_value:.3f}"
        verdict = {True: "yes", False: "**no**", None: "untestable"}[c.within_noise]
        spread = "-" if math.isnan(c.seed_std) else f"{c.seed_std:.4f}"
        flags = "-" if math.isnan(c.detectable) else f"±{c.detectable:.4f}"
        lines.append(f"| {c.label} | {side(c.reference, c.not_finished[0])} | {side(c.candidate, c.not_finished[1])} "
                     f"| {c.difference:+.4f} | {spread} | {flags} | {p} | {verdict} |")
    tested = [c for c in cells if c.p_value is not None]
    below = sum(c.p_value < 0.05 for c in tested)  # type: ignore[operator]
    failing = [c.label for c in cells if c.within_noise is False]
    untestable = [c.label for c in cells if c.within_noise is None]
    alpha = cells[0].alpha if cells else 0.05
    verdict = (f"{len(cells) - len(failing) - len(untestable)} of {len(cells)} cells within seed noise "
               f"(p >= {alpha:.4g}, {alpha * len(cells):.4g} over {len(cells)} cells)")
    if failing:
        verdict += f"; differ: {', '.join(failing)}"
    if untestable:
        verdict += f"; untestable, too few seeds: {', '.join(untestable)} (give one side --seeds 2 or more)"
    alone = [f"{label} (in {name} only)" for labels, name in zip(unmatched, names, strict=True) for label in labels]
    if alone:
        verdict += f"; not compared: {', '.join(alone)}"
    verdict += f". {below} of {len(tested)} below p 0.05 ({0.05 * len(tested):.2f} expected by chance)."
    return "\n".join(lines) + "\n\n" + verdict
