"""The Optuna side of a sweep: a grid's study config, its storage, the trials it enqueues, and stale trials.

A grid is one Optuna study (named after the grid). `prepare_study` puts every unit of work in the study's
queue as a WAITING trial, once, before any worker starts:

- a plain grid: one trial per cell and seed, carrying the full flat `TrialSpec` and the cell's labels in
  its user attributes (``marginbench.params``, ``marginbench.labels``, ``marginbench.key``), so a worker
  rebuilds the spec from the Optuna trial alone;
- a grid with ``search:``: ``n_trials`` placeholder trials per cell (``search_scope: cell``, the default)
  or overall (``search_scope: grid``, where the cell is itself a categorical parameter ``cell``). A worker
  that pops a placeholder asks the sampler for the searched keys, inside the cell: the sampler and the
  pruner of a cell-scoped search see only the trials of the same cell (`CellStudy`).

Every queued trial has a *slot* (``marginbench.slot``): the trial key for a grid trial, ``search/<cell>/<j>``
for a placeholder. A slot is enqueued again only when none of its trials is waiting, running, complete,
pruned or diverged, so rerunning ``bench run`` continues the study and duplicates nothing; a trial that
failed with an exception is retried by the next ``bench run``.

Storage (``--storage``): the embedded default is an Optuna journal file, ``optuna.journal`` beside
``mlflow.db``, which several worker processes on one machine share safely (appends under a file lock, a
pop decided by the order of the log; SQLite's pop is not safe under concurrent processes). A URL with a
scheme (``postgresql://user@host/db``) is an Optuna RDB storage for many machines.

A trial left RUNNING by a process that died is failed and put back in the queue (same parameters and
attributes, so the same trial key and checkpoint): at once when the dead process ran on this machine
(each running trial records its host, boot id, process id and start time), and through Optuna's
heartbeat (every `HEARTBEAT_INTERVAL` s, stale after `HEARTBEAT_GRACE` s) for RDB storages, whatever
machine it ran on. A journal file has no heartbeat: it is for the workers of one machine.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from bench.grid import Grid, GridError, check_grid, input_size_problem
from bench.spec import SpecError, TrialSpec
from registry._suggest import did_you_mean

__all__ = ["run_study", "StudyConfig", "SearchParam", "Slot", "plan_slots", "resolve_storage", "open_storage",
           "prepare_study", "load_study", "reap_stale_trials", "study_summary", "CellStudy", "worker_identity",
           "trial_spec", "slot_trials", "DEFAULT_STORAGE_NAME", "HEARTBEAT_INTERVAL", "HEARTBEAT_GRACE",
           "StudyNotReady", "pop_next_trial_id", "requeue_trial", "load_grid_and_config"]

log = logging.getLogger(__name__)

DEFAULT_STORAGE_NAME = "optuna.journal"
HEARTBEAT_INTERVAL = 15
HEARTBEAT_GRACE = 120
#: A running trial that names no owner this long after its start was popped by a process that died at once.
OWNERLESS_GRACE = 30

ATTR = "marginbench."
KIND_ATTR = ATTR + "kind"          # "grid" or "search"
SLOT_ATTR = ATTR + "slot"          # the unit of work this trial performs
PARAMS_ATTR = ATTR + "params"      # flat spec of the grid trial, or the cell's fixed params
LABELS_ATTR = ATTR + "labels"      # the cell's labels per axis
CELL_ATTR = ATTR + "cell"          # the cell's label (all axes joined) for search trials
KEY_ATTR = ATTR + "key"            # `TrialSpec.key()` of what actually ran
SPEC_ATTR = ATTR + "spec"          # full flat spec after sampling (search trials)
DIVERGED_ATTR = ATTR + "diverged"  # "epoch=E step=S"
REASON_ATTR = ATTR + "fail_reason"
ERROR_ATTR = ATTR + "error"
DUPLICATE_ATTR = ATTR + "duplicate_of"
RUN_ATTR = ATTR + "mlflow_run_id"
OWNER_ATTR = ATTR + "owner"        # system attr: {"host": ..., "pid": ..., "start": ...}

STUDY_CONFIG_ATTR = ATTR + "config"
STUDY_CELLS_ATTR = ATTR + "cells"
STUDY_PREPARED_ATTR = ATTR + "prepared"
STUDY_MLFLOW_ATTR = ATTR + "mlflow"

SEARCH_TYPES = ("uniform", "loguniform", "int", "categorical")
_TYPE_ALIASES = {"float": "uniform", "log_uniform": "loguniform", "log-uniform": "loguniform", "integer": "int",
                 "choice": "categorical"}
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler", "cmaes": "CmaEsSampler",
            "gp": "GPSampler"}
PRUNERS = {"median": "MedianPruner", "percentile": "PercentilePruner", "successive_halving": "SuccessiveHalvingPruner",
           "hyperband": "HyperbandPruner", "none": "NopPruner"}
_PRUNER_ALIASES = {"sha": "successive_halving", "asha": "successive_halving", "successivehalving": "successive_halving",
                   "nop": "none"}
#: The sampler and pruner arguments that Optuna documents as counts, steps or percentiles: name -> (lowest
#: value, highest or None, integer only, "auto" allowed). Optuna takes several of them negative or fractional
#: without a word (``TPESampler(n_startup_trials=-3)``, ``MedianPruner(n_warmup_steps=2.5)``) and fails a trial
#: at the pruner's first decision on a fractional ``reduction_factor``, so the grid's values are checked here.
_SEED = (0, 2**32 - 1, True, False)  # numpy's seed range
_STEPS = {"n_startup_trials": (0, None, True, False), "n_warmup_steps": (0, None, True, False),
          "interval_steps": (1, None, True, False), "n_min_trials": (1, None, True, False)}
_HALVING = {"reduction_factor": (2, None, True, False), "bootstrap_count": (0, None, True, False)}
NUMERIC_KWARGS: dict[str, dict[str, dict[str, tuple[float, float | None, bool, bool]]]] = {
    "sampler": {
        "tpe": {"seed": _SEED, "n_startup_trials": (0, None, True, False), "n_ei_candidates": (1, None, True, False)},
        "random": {"seed": _SEED},
        "qmc": {"seed": _SEED},
        "gp": {"seed": _SEED, "n_startup_trials": (0, None, True, False)},
        "cmaes": {"seed": _SEED, "n_startup_trials": (0, None, True, False), "popsize": (1, None, True, False)},
    },
    "pruner": {
        "median": _STEPS,
        "percentile": {"percentile": (0, 100, False, False), **_STEPS},
        "successive_halving": {"min_resource": (1, None, True, True), "min_early_stopping_rate": (0, None, True, False),
                               **_HALVING},
        "hyperband": {"min_resource": (1, None, True, False), "max_resource": (1, None, True, True), **_HALVING},
        "none": {},
    },
}
SCOPES = ("cell", "grid")
DIRECTIONS = ("maximize", "minimize")


class StudyNotReady(RuntimeError):
    """A worker found no prepared study (``bench run`` has not enqueued the grid yet)."""


# ------------------------------------------------------------------------------------------------ config
@dataclass(frozen=True)
class SearchParam:
    """One ``search:`` range over a flat spec key.

    Attributes:
        key: the flat key (``loss.m``, ``optimizer.lr``, ``epochs``).
        type: ``uniform``, ``loguniform``, ``int`` or ``categorical``.
        low, high: bounds (inclusive) for numeric types.
        step: grid step for ``int`` (default 1) and optionally ``uniform``; it divides ``high - low``.
        log: sample ``int`` on a log scale.
        choices: values of a ``categorical``.
    """

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The sampler's value for this key on an `optuna.Trial`."""
        if self.type == "categorical":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.type == "loguniform",
                                   step=self.step)

    def examples(self) -> list[Any]:
        """Values to validate the key with (the bounds, or every choice)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "int":
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.type == "categorical":
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high)
            if self.step is not None:
                out["step"] = self.step
            if self.log:
                out["log"] = True
        return out


@dataclass(frozen=True)
class StudyConfig:
    """What a grid asks of Optuna (the keys ``search``, ``sampler``, ``pruner``, ``n_trials``,
    ``search_scope``, ``objective``, ``workers``), validated.

    Attributes:
        search: ranges by flat key; empty for a plain grid.
        n_trials: sampled trials per cell (scope ``cell``) or overall (scope ``grid``).
        scope: ``cell`` or ``grid``.
        sampler: ``{"type": "tpe", **kwargs}`` (TPE when the grid names none).
        pruner: ``{"type": "median", **kwargs}`` or None; applies to sampled trials only (a benchmark's
            grid cells are never cut short).
        metric, direction: the per-epoch metric reported to Optuna and the study's direction (``test_acc``
            stands for the verification accuracy, ``lfw_acc``, in trials that have pairs but no test split).
        workers: default for ``--workers``.
    """

    search: dict[str, SearchParam] = field(default_factory=dict)
    n_trials: int = 0
    scope: str = "cell"
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    pruner: dict[str, Any] | None = None
    metric: str = "test_acc"
    direction: str = "maximize"
    workers: int | None = None

    @classmethod
    def from_grid(cls, grid: Grid) -> StudyConfig:
        """Validates the grid's study keys against its cells, before any training.

        Raises:
            GridError: naming the file, the key and the fix.
        """
        return cls.from_raw(grid.raw, grid=grid)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any], *, grid: Grid | None = None, path: str | Path = "<study>") -> StudyConfig:
        """Validates the study keys of ``raw`` (a grid's parsed file, or the config a study stores), and with
        ``grid`` checks them against its cells.

        Raises:
            GridError: listing every problem (`GridError.listing`), each naming its key and the fix.
        """
        path = grid.path if grid is not None else path
        problems: list[tuple[str, str]] = []

        def attempt(check: Any, *args: Any, **kwargs: Any) -> tuple[Any, bool]:
            """``(check(*args, **kwargs), True)``, or ``(None, False)`` with its GridError's problems kept."""
            try:
                return check(*args, **kwargs), True
            except GridError as err:
                problems.extend(err.problems)
                return None, False

        search = _parse_search(path, raw.get("search"), problems)
        searching = bool(search) or bool(raw.get("search"))  # a search: with bad ranges still asks for n_trials
        n_trials = raw.get("n_trials")
        if searching:
            if n_trials is None:
                problems.append(("n_trials", "a grid with search: needs n_trials (sampled trials per cell, or "
                                             "overall with search_scope: grid), e.g. n_trials: 20"))
            elif not _is_int(n_trials) or n_trials < 1:
                problems.append(("n_trials", f"must be a positive integer, but got {n_trials!r}"))
                n_trials = None
        elif n_trials is not None:
            problems.append(("n_trials", "n_trials counts sampled trials, but the grid has no search: ranges; "
                                         "remove it or add search:"))
        scope = raw.get("search_scope", "cell")
        if scope not in SCOPES:
            problems.append(("search_scope", f"must be one of {', '.join(SCOPES)}, but got {scope!r}"))
            scope = "cell"
        elif "search_scope" in raw and not searching:
            problems.append(("search_scope", "search_scope needs search: ranges"))
        # a sampler or pruner with a problem is not built by _problems_against (its error would show twice)
        sampler, sampler_ok = attempt(_parse_choice, path, "sampler", raw.get("sampler"), SAMPLERS, {}, default="tpe")
        sampler_ok = sampler_ok and attempt(_check_numeric_kwargs, path, "sampler", sampler)[1]
        if "sampler" in raw and not searching:
            problems.append(("sampler", "a sampler draws search: ranges, but the grid has none; grid cells are "
                                        "enqueued as they are"))
        pruner = None
        pruner_ok = True
        if raw.get("pruner") is not None:
            pruner, pruner_ok = attempt(_parse_choice, path, "pruner", raw.get("pruner"), PRUNERS, _PRUNER_ALIASES,
                                        default=None)
            if not searching:
                problems.append(("pruner", "a pruner stops sampled trials early, but the grid has no search: ranges "
                                           "(grid cells always run to the end)"))
            pruner_ok = pruner_ok and attempt(_check_numeric_kwargs, path, "pruner", pruner)[1]
        metric, direction = "test_acc", "maximize"
        objective = raw.get("objective", {}) or {}
        if isinstance(objective, str):
            objective = {"metric": objective}
        if not isinstance(objective, Mapping):
            problems.append(("objective", f"must be a mapping like {{metric: test_acc, direction: maximize}}, "
                                          f"but got {objective!r}"))
        else:
            unknown = set(objective) - {"metric", "direction"}
            if unknown:
                problems.append(("objective", f"takes metric and direction, not {', '.join(sorted(unknown))}"))
            metric = objective.get("metric", "test_acc")
            if not isinstance(metric, str) or not metric:
                problems.append(("objective.metric", f"must be a metric name like test_acc or lfw_acc, but got "
                                                     f"{metric!r}"))
                metric = "test_acc"
            direction = objective.get("direction", "maximize")
            if direction not in DIRECTIONS:
                problems.append(("objective.direction", f"must be maximize or minimize, but got {direction!r}"))
                direction = "maximize"
        workers = raw.get("workers")
        if workers is not None and (not _is_int(workers) or workers < 1):
            problems.append(("workers", f"must be a positive integer, but got {workers!r}"))
            workers = None
        config = cls(search=search, n_trials=int(n_trials or 0), scope=scope, sampler=sampler or {"type": "tpe"},
                     pruner=pruner, metric=metric, direction=direction, workers=workers)
        if grid is not None:
            problems += config._problems_against(grid, sampler=sampler_ok, pruner=pruner_ok)
        if problems:
            raise GridError.listing(path, list(dict.fromkeys(problems)))
        return config

    def _problems_against(self, grid: Grid, *, sampler: bool = True, pruner: bool = True) -> list[tuple[str, str]]:
        """``(key, message)`` for each way the config does not fit ``grid``'s cells; the sampler and the pruner
        are built (to check their arguments) when ``sampler`` and ``pruner`` say so."""
        problems: list[tuple[str, str]] = []
        if self.search and len(grid.seeds) > 1:
            problems.append(("seeds", f"a search: grid samples hyperparameters with one seed, but got seeds "
                                      f"{grid.seeds}; keep one seed and rerun the best configuration over seeds in a "
                                      f"plain grid"))
        labels = [c.spec.label for c in grid.cells]
        if self.search and self.scope == "grid" and len(set(labels)) != len(labels):
            problems.append(("grid", "search_scope: grid needs distinct cell labels"))
        if self.search:  # the sampler replaces searched keys in every cell: cells that differ only there are one
            seen: dict[str, Any] = {}
            for cell in grid.cells:
                params = cell.spec.to_params()
                rest = json.dumps({k: v for k, v in params.items() if k not in self.search}, sort_keys=True,
                                  default=str)
                if rest in seen:
                    other = seen[rest]
                    keys = [k for k in self.search if other.spec.to_params().get(k) != params.get(k)]
                    problems.append((f"search.{keys[0]}" if keys else "grid",
                                     f"cells {other.spec.label!r} and {cell.spec.label!r} differ only in "
                                     f"{', '.join(keys) or 'their labels'}, which the search draws anew in every "
                                     f"cell, so the axis would compare nothing; keep the key in the grid axis or in "
                                     f"search:, not both"))
                    break  # one pair says it; the others of the axis would repeat it
                seen[rest] = cell
        for key, param in self.search.items():
            problem = _search_key_problem(grid, key, param)
            if problem is not None:
                problems.append((f"search.{key}", problem))
        for name, conf, build in (("sampler", self.sampler, sampler), ("pruner", self.pruner, pruner)):
            if conf is not None and build:
                try:
                    (self.make_sampler if name == "sampler" else self.make_pruner)()
                except (TypeError, ValueError, ImportError) as err:
                    problems.append((name, str(err)))
        return problems

    # objects ------------------------------------------------------------------------------------------
    def make_sampler(self, *, worker_index: int = 0, drawn: int = 0) -> Any:
        """The sampler; a grid-given ``seed`` is offset by the worker index so parallel workers differ, and mixed
        with ``drawn`` (the study's trials already taken from the queue) so that a process started on a study
        that has run (a rerun, a worker that joins later) continues instead of repeating the first draws."""
        import optuna

        kwargs = {k: v for k, v in self.sampler.items() if k != "type"}
        if kwargs.get("seed") is not None:
            kwargs["seed"] = (int(kwargs["seed"]) + worker_index) % 2**32  # numpy's range, as validated
            if drawn:
                blob = f"{kwargs['seed']}/{drawn}".encode()
                kwargs["seed"] = int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")
        cls = getattr(optuna.samplers, SAMPLERS[self.sampler["type"]])
        _check_kwargs(cls, kwargs, f"sampler {self.sampler['type']}")
        if self.sampler["type"] == "cmaes":
            import importlib.util

            if importlib.util.find_spec("cmaes") is None:
                raise ImportError("sampler cmaes needs the cmaes package: pip install cmaes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return cls(**kwargs)

    def make_pruner(self) -> Any:
        import optuna

        if self.pruner is None:
            return optuna.pruners.NopPruner()
        kwargs = {k: v for k, v in self.pruner.items() if k != "type"}
        cls = getattr(optuna.pruners, PRUNERS[self.pruner["type"]])
        _check_kwargs(cls, kwargs, f"pruner {self.pruner['type']}")
        if self.pruner["type"] == "hyperband":
            _check_hyperband(kwargs)
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        """JSON form, stored in the study so every worker runs the same search."""
        out: dict[str, Any] = {"objective": {"metric": self.metric, "direction": self.direction}}
        if self.search:
            out.update(search={k: p.as_dict() for k, p in self.search.items()}, n_trials=self.n_trials,
                       search_scope=self.scope, sampler=dict(self.sampler),
                       pruner=dict(self.pruner) if self.pruner else None)
        return out


def load_grid_and_config(source: str | Path, *, env: Mapping[str, str] | None = None,
                         overrides: Mapping[str, Any] | None = None,
                         typed: Mapping[str, str] | None = None) -> tuple[Grid, StudyConfig]:
    """`bench.grid.load_grid` and `StudyConfig.from_grid` in one round: the problems of both in one `GridError`, so
    that the user fixes them all at once instead of meeting the study keys' list only after fixing the grid's
    (arguments as `load_grid`'s).

    Where the grid has problems, its study keys are checked against the cells without a problem of their own (none
    when the file's layout stopped the grid's check: the keys alone then), so a cell's problem is not listed again
    under a search key.

    Raises:
        FileNotFoundError: no such grid.
        GridError: every problem of the grid and of its study keys, each naming its key and the fix.
    """
    check = check_grid(source, env=env, overrides=overrides, typed=typed)
    problems = list(check.problems)
    config = None
    try:
        config = StudyConfig.from_raw(check.raw, grid=check.grid, path=check.path)
    except GridError as err:
        problems += [p for p in err.problems if p not in problems]
    if problems:
        raise GridError.listing(check.path, problems)
    assert check.grid is not None and config is not None  # no problem: both were built
    return check.grid, config


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_numeric_kwargs(path: Any, key: str, conf: Mapping[str, Any]) -> None:
    """The counts, steps and percentiles of a sampler or pruner (`NUMERIC_KWARGS`) are in Optuna's range.

    Raises:
        GridError: naming ``sampler.<arg>`` or ``pruner.<arg>``, the range and the value.
    """
    for arg, (low, high, integer, auto) in NUMERIC_KWARGS[key].get(conf["type"], {}).items():
        if arg not in conf or (auto and conf[arg] == "auto"):
            continue
        value = conf[arg]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if number and (not integer or isinstance(value, int)) and value >= low and (high is None or value <= high):
            continue
        kind = "an integer" if integer else "a number"
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise GridError(path, f"{key}.{arg}", f"{key} {conf['type']}'s {arg} must be {kind} {bound}"
                                              f"{' or auto' if auto else ''}, but got {value!r}")


def _check_hyperband(kwargs: Mapping[str, Any]) -> None:
    """Checks a hyperband pruner's arguments now: Optuna's `HyperbandPruner` builds its brackets at its first
    decision, an epoch into a trial, where a bad ``min_resource`` or ``reduction_factor`` fails the trial
    (division by zero) and ``max_resource < min_resource`` leaves it with no bracket (it never prunes).

    Raises:
        ValueError: the rule and the value.
    """
    import optuna

    low, high = kwargs.get("min_resource", 1), kwargs.get("max_resource", "auto")
    if not _is_int(low) or low < 1:
        raise ValueError(f"hyperband's min_resource must be an integer >= 1 (epochs), but got {low!r}")
    if _is_int(high) and high < low:
        raise ValueError(f"hyperband's max_resource must be >= min_resource={low}, but got {high!r}")
    optuna.pruners.SuccessiveHalvingPruner(min_resource=low, reduction_factor=kwargs.get("reduction_factor", 3),
                                           bootstrap_count=kwargs.get("bootstrap_count", 0))  # its brackets


def _check_kwargs(cls: Any, kwargs: Mapping[str, Any], what: str) -> None:
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n in params if n != "self"]
    unknown = [k for k in kwargs if k not in valid]
    if unknown:
        raise TypeError(f"{what} takes {', '.join(valid)}, not {', '.join(unknown)}")


def _search_key_problem(grid: Grid, key: str, param: SearchParam) -> str | None:
    """What is wrong with searching ``key`` over ``param``'s values (`SearchParam.examples`) in ``grid``'s cells:
    a value the spec refuses, a searched component (``loss: [cosface, arcface]``, keeping the cell's params) its
    registry refuses, or an image size the backbone cannot take; None when nothing is. The first such value only."""
    from registry import BACKBONES, DATASETS, LOSSES, RegistryError

    registries = {"dataset": DATASETS, "backbone": BACKBONES, "loss": LOSSES}
    for cell in grid.cells:
        for value in param.examples():
            try:
                spec = cell.spec.with_flat({key: value})
            except (SpecError, TypeError, ValueError) as err:
                return f"{err} (cell {cell.spec.label}, value {value!r})"
            component = key.split(".", 1)[0]
            if component in registries:
                try:
                    registries[component].check(getattr(spec, component), dict(getattr(spec, f"{component}_params")))
                except RegistryError as err:
                    return f"{_on_one_line(err)} (cell {cell.spec.label}, value {value!r})"
                problem = input_size_problem(spec)  # a searched image_size or input_size the backbone fails
                if problem is not None:
                    return f"{problem[1]} (cell {cell.spec.label}, value {value!r})"
    return None


def _on_one_line(err: Any) -> str:
    """A `RegistryError` as one line of the grid's listing: its problems joined by ``;`` when it has several."""
    if len(err.problems) < 2:
        return str(err)
    return "; ".join(message.rstrip(".") for _, message in err.problems)


def _parse_choice(path: Any, key: str, value: Any, table: Mapping[str, str], aliases: Mapping[str, str],
                  *, default: str | None) -> dict[str, Any]:
    if value is None:
        return {"type": default} if default else {}
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping) or "type" not in value:
        raise GridError(path, key, f"must be a name ({', '.join(table)}) or a mapping with type, e.g. "
                                   f"{key}: {{type: {next(iter(table))}, ...}}; got {value!r}")
    name = str(value["type"]).lower()
    name = aliases.get(name, name)
    if name not in table:
        raise GridError(path, f"{key}.type", f"unknown {key} {value['type']!r}.{did_you_mean(name, table)} Available: "
                                             f"{', '.join(table)}")
    return {**{k: v for k, v in value.items() if k != "type"}, "type": name}


def _parse_search(path: Any, raw: Any, problems: list[tuple[str, str]]) -> dict[str, SearchParam]:
    """The ``search:`` ranges that are valid; a ``(key, message)`` for each one that is not goes to ``problems``."""
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(("search", "must map flat keys to ranges, e.g. search: {loss.m: {type: uniform, low: 0.1, "
                                   "high: 0.5}}"))
        return {}
    out: dict[str, SearchParam] = {}
    for key, entry in raw.items():
        try:
            out[key] = _parse_range(path, key, entry)
        except GridError as err:
            problems.extend(err.problems)
    return out


def _parse_range(path: Any, key: str, entry: Any) -> SearchParam:
    """One ``search:`` entry, ``key: {type: uniform, low: 0.1, high: 0.5}`` (a list: the choices of a categorical).

    Raises:
        GridError: naming ``search.<key>`` (or one of its fields) and the fix.
    """
    where = f"search.{key}"
    if key == "cell":
        raise GridError(path, where, "'cell' is reserved (the cell parameter of search_scope: grid)")
    if isinstance(entry, list):
        entry = {"type": "categorical", "choices": entry}
    if not isinstance(entry, Mapping) or "type" not in entry:
        raise GridError(path, where, f"needs a type ({', '.join(SEARCH_TYPES)}), e.g. {{type: uniform, low: 0.1, "
                                     f"high: 0.5}}; got {entry!r}")
    kind = str(entry["type"]).lower()
    kind = _TYPE_ALIASES.get(kind, kind)
    if kind not in SEARCH_TYPES:
        raise GridError(path, f"{where}.type", f"unknown type {entry['type']!r}.{did_you_mean(kind, SEARCH_TYPES)} "
                                               f"Available: {', '.join(SEARCH_TYPES)}")
    allowed = {"categorical": {"type", "choices"}, "int": {"type", "low", "high", "step", "log"},
               "uniform": {"type", "low", "high", "step"}, "loguniform": {"type", "low", "high"}}[kind]
    unknown = set(entry) - allowed
    if unknown:
        raise GridError(path, where, f"a {kind} range takes {', '.join(sorted(allowed))}, not "
                                     f"{', '.join(sorted(unknown))}")
    if kind == "categorical":
        choices = entry.get("choices")
        if not isinstance(choices, list) or not choices:
            raise GridError(path, f"{where}.choices", f"a non-empty list is required, but got {choices!r}")
        if not all(c is None or isinstance(c, (str, int, float, bool)) for c in choices):
            raise GridError(path, f"{where}.choices",
                            f"choices must be scalars (Optuna stores them), got {choices!r}")
        return SearchParam(key, kind, choices=tuple(choices))
    low, high = entry.get("low"), entry.get("high")
    numeric = (lambda v: _is_int(v)) if kind == "int" else (lambda v: isinstance(v, (int, float))
                                                             and not isinstance(v, bool))
    for name, v in (("low", low), ("high", high)):
        if not numeric(v) or (isinstance(v, float) and not math.isfinite(v)):
            want = "an integer" if kind == "int" else "a number"
            raise GridError(path, f"{where}.{name}", f"{want} is required, but got {v!r}")
    if not low < high:
        raise GridError(path, where, f"low must be < high, but got low={low!r}, high={high!r}")
    log_scale = kind == "loguniform" or bool(entry.get("log", False))
    if log_scale and low <= 0:
        raise GridError(path, f"{where}.low", f"a log scale needs low > 0, but got low={low!r}")
    step = entry.get("step")
    if step is not None and (not numeric(step) or step <= 0):
        raise GridError(path, f"{where}.step", f"must be {'an integer ' if kind == 'int' else ''}> 0, but got "
                                               f"{step!r}")
    if step is not None:
        # Optuna would lower high to the last step below it, with a warning lost in the log
        span, d_step = Decimal(str(high)) - Decimal(str(low)), Decimal(str(step))
        if span % d_step:
            span, last = (f"{d.normalize():f}" for d in (span, Decimal(str(low)) + (span // d_step) * d_step))
            raise GridError(path, f"{where}.step", f"step {step!r} does not divide high - low = {span}: the values "
                                                   f"would stop at {last}, not high={high!r}; set high: {last} "
                                                   f"or a step that divides {span}")
    if kind == "int" and log_scale and step not in (None, 1):
        raise GridError(path, f"{where}.step", "a log-scale int range takes no step")
    return SearchParam(key, kind, low=low, high=high, step=step, log=kind == "int" and log_scale)


# ------------------------------------------------------------------------------------------------- slots
@dataclass(frozen=True)
class Slot:
    """One unit of work in the queue.

    Attributes:
        slot: its identity (the trial key of a grid trial; ``search/<cell key>/<j>`` for a sampled one).
        kind: ``grid`` or ``search``.
        params: the flat spec of a grid trial, the cell's params of a cell-scoped search; empty for a
            grid-scoped search (the sampler picks the cell).
        labels: the cell's labels.
        cell: the cell's label (search trials).
    """

    slot: str
    kind: str
    params: dict[str, Any]
    labels: dict[str, str]
    cell: str | None = None

    def user_attrs(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {SLOT_ATTR: self.slot, KIND_ATTR: self.kind, PARAMS_ATTR: _jsonable(self.params),
                                 LABELS_ATTR: dict(self.labels)}
        if self.kind == "grid":
            attrs[KEY_ATTR] = self.slot
        if self.cell is not None:
            attrs[CELL_ATTR] = self.cell
        return attrs


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(dict(params), default=str))


def plan_slots(grid: Grid, config: StudyConfig) -> list[Slot]:
    """Every unit of work of the grid, in order (cells outer, seeds or samples inner)."""
    if not config.search:
        return [Slot(spec.key(), "grid", spec.to_params(), dict(spec.labels)) for spec in grid.trials()]
    seed = grid.seeds[0]
    if config.scope == "grid":
        return [Slot(f"search/*/{j}", "search", {}, {}) for j in range(config.n_trials)]
    slots = []
    for cell in grid.cells:
        spec = cell.spec.replace(seed=seed)
        slots += [Slot(f"search/{spec.key()}/{j}", "search", spec.to_params(), dict(cell.labels), spec.label)
                  for j in range(config.n_trials)]
    return slots


def grid_cells(grid: Grid) -> dict[str, dict[str, Any]]:
    """The cells of a grid-scoped search, by label: ``{label: {"params": flat, "labels": {...}}}``."""
    seed = grid.seeds[0]
    return {c.spec.label: {"params": _jsonable(c.spec.replace(seed=seed).to_params()), "labels": dict(c.labels)}
            for c in grid.cells}


def trial_spec(trial: Any, config: StudyConfig, cells: Mapping[str, Any] | None = None) -> TrialSpec:
    """The spec an Optuna trial runs: its stored params and labels, plus the sampler's values for search keys.

    Args:
        trial: an `optuna.Trial` (sampling) or `optuna.trial.FrozenTrial` (reading a finished one).
        config: the study's config (search ranges).
        cells: the study's cells (for ``search_scope: grid``).
    """
    attrs = trial.user_attrs
    if SPEC_ATTR in attrs:
        return TrialSpec.from_params(attrs[SPEC_ATTR], attrs.get(LABELS_ATTR) or {})
    params = dict(attrs.get(PARAMS_ATTR) or {})
    labels = dict(attrs.get(LABELS_ATTR) or {})
    if attrs.get(KIND_ATTR) != "search":
        return TrialSpec.from_params(params, labels)
    if config.scope == "grid":
        if not cells:
            raise StudyNotReady("the study has no cells recorded; rerun `bench run` to prepare it")
        label = trial.suggest_categorical("cell", list(cells))
        params, labels = dict(cells[label]["params"]), dict(cells[label]["labels"])
    sampled = {key: p.suggest(trial) for key, p in config.search.items()}
    return TrialSpec.from_params(params, labels).with_flat(sampled)


# ----------------------------------------------------------------------------------------------- storage
def resolve_storage(url: str | None = None, *, tracking_uri: str | None = None, cwd: Path | None = None) -> str:
    """The storage to use: ``url``, else ``$MARGINBENCH_STORAGE``, else ``optuna.journal`` beside ``mlflow.db``.

    A value with a scheme (``postgresql://``, ``sqlite:///``) is an RDB URL (a relative SQLite path is made
    absolute); anything else is the path of a journal file, made absolute.
    """
    cwd = cwd or Path.cwd()
    url = url or os.environ.get("MARGINBENCH_STORAGE")
    if not url:
        from bench.tracking import resolve_tracking_uri

        tracking = resolve_tracking_uri(tracking_uri, cwd=cwd)
        folder = Path(tracking[len("sqlite:///"):]).parent if tracking.startswith("sqlite:///") else cwd
        return str((folder / DEFAULT_STORAGE_NAME).resolve())
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str((cwd / url[len("sqlite:///"):]).resolve())
    if "://" in url:
        return url
    if _LOOKS_LIKE_URL.match(url):  # postgresql:/host/db would silently be a journal file in ./postgresql:/
        raise SystemExit(f"bench: --storage (or $MARGINBENCH_STORAGE) {hide_password(url)!r} looks like a database "
                         f"URL without '://'; write it as postgresql://USER@HOST[:PORT]/DB (a value without a "
                         f"scheme is the path of a journal file)")
    return str((cwd / url).resolve())


_LOOKS_LIKE_URL = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]+:/|(?:postgres(?:ql)?|mysql|mariadb|sqlite|oracle|mssql)"
                             r"(?:\+\w+)?:)", re.IGNORECASE)


def hide_password(url: str) -> str:
    """``url`` with its password (``user:secret@host``) shown as ``***``, for messages."""
    return re.sub(r"^([^:/]+://[^:/@]+):[^@/]*@", r"\1:***@", url)


def is_rdb(url: str) -> bool:
    return "://" in url


def with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 means psycopg 3 by it, while the
    ``postgres`` extra installs psycopg2."""
    import importlib.util

    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme) and importlib.util.find_spec("psycopg") is None \
                and importlib.util.find_spec("psycopg2") is not None:
            return "postgresql+psycopg2://" + url[len(scheme):]
    return url


#: Seconds a PostgreSQL storage may take to answer a new connection (libpq's ``connect_timeout``, per address the
#: host name resolves to), unless ``$MARGINBENCH_STORAGE_CONNECT_TIMEOUT`` or the URL's ``?connect_timeout=`` says.
#: Without it, a server behind a firewall that drops packets kept `bench run` waiting for minutes, saying nothing.
DEFAULT_CONNECT_TIMEOUT = 20
CONNECT_TIMEOUT_ENV = "MARGINBENCH_STORAGE_CONNECT_TIMEOUT"


def storage_connect_timeout() -> int:
    """``$MARGINBENCH_STORAGE_CONNECT_TIMEOUT`` in seconds (an integer >= 2), else `DEFAULT_CONNECT_TIMEOUT`.

    Raises:
        SystemExit: a value that is not an integer >= 2 (libpq waits at least 2 s whatever it is told).
    """
    text = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_CONNECT_TIMEOUT
    try:
        seconds = int(text)
    except ValueError:
        seconds = 0
    if seconds < 2:
        raise SystemExit(f"bench: ${CONNECT_TIMEOUT_ENV} must be a whole number of seconds >= 2 (how long a "
                         f"PostgreSQL storage may take to answer; libpq waits at least 2), but got {text!r}; set it "
                         f"to e.g. 60, or unset it for the default {DEFAULT_CONNECT_TIMEOUT}")
    return seconds


def _connect_args(url: str) -> dict[str, Any]:
    """The driver's connection arguments for the database ``url``: ``connect_timeout`` for PostgreSQL, unless the
    URL sets its own; none for other databases."""
    if not url.split("://", 1)[0].lower().startswith("postgres") or re.search(r"[?&]connect_timeout=", url):
        return {}
    return {"connect_timeout": storage_connect_timeout()}


#: SQLSTATEs of two processes creating Optuna's tables in a new database at once: a unique violation (of
#: ``pg_type``'s index, or of a row both insert), a table or type that the other one created meanwhile.
_CREATE_RACE_CODES = ("23505", "42P07", "42710")


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], kwargs: dict[str, Any], *, attempts: int = 6) -> Any:
    """`optuna.storages.RDBStorage`, tried again when another process was creating its tables at the same moment.

    On a new database every process that opens the storage creates Optuna's tables (``create_all``, the version
    row, alembic's stamp); two at once (workers started together, or ``bench run`` and a worker waiting for
    it) collide in PostgreSQL's catalog, and one died with a UniqueViolation. Its next try finds the tables.
    """
    import random

    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna since 2.x
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=dict(engine_kwargs), **kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            code = getattr(getattr(err, "orig", None), "pgcode", None) or getattr(
                getattr(err, "orig", None), "sqlstate", None)
            if attempt == attempts - 1 or not (isinstance(err, sqlalchemy.exc.IntegrityError)
                                               or code in _CREATE_RACE_CODES):
                raise
            log.info("storage %s: tables being created by another process (%s); trying again", hide_password(url),
                     code)
            time.sleep(0.2 + random.random())
    raise AssertionError("unreachable")


def open_storage(url: str, *, heartbeat: bool = True) -> Any:
    """An Optuna storage for a `resolve_storage` value.

    RDB storages get a heartbeat (a trial whose process stops beating for `HEARTBEAT_GRACE` s is failed and
    re-queued by the next worker that looks); SQLite waits up to 60 s for a lock; PostgreSQL gives up a connection
    that gets no answer after `storage_connect_timeout` s.
    """
    if is_rdb(url):
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}
        else:
            engine_kwargs["pool_pre_ping"] = True
            engine_kwargs["connect_args"] = _connect_args(url)
        kwargs: dict[str, Any] = {}
        if heartbeat:
            kwargs = dict(heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=HEARTBEAT_GRACE,
                          heartbeat_stale_trial_callback=requeue_trial)
        try:
            return _rdb_storage(with_driver(url), engine_kwargs, kwargs)
        except Exception as err:  # noqa: BLE001 - the ones a user can fix become one line; the rest pass on
            _exit_unopened(url, err)
            raise
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url))


def _exit_unopened(url: str, err: Exception) -> None:
    """Raises `SystemExit` with the fix when ``err`` (opening the database ``url``) is a wrong scheme, a missing
    driver, or a database that does not answer or refuses; returns for any other error."""
    import sqlalchemy.exc

    shown = hide_password(url)
    scheme = url.split("://", 1)[0]
    if isinstance(err, sqlalchemy.exc.NoSuchModuleError):
        raise SystemExit(f"bench: --storage (or $MARGINBENCH_STORAGE) {shown}: unknown database scheme {scheme!r}; "
                         f"write postgresql://USER@HOST[:PORT]/DB, sqlite:///FILE, or the path of a journal "
                         f"file") from err
    if isinstance(err, ImportError):  # Optuna's "Failed to import DB access module" is an ImportError too
        raise SystemExit(f"bench: storage {scheme} needs a driver: {str(err).rstrip('.')}. For PostgreSQL: "
                         f"pip install 'marginbench[postgres]' (psycopg2-binary)") from err
    if isinstance(err, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ArgumentError)):
        reason = " ".join(str(getattr(err, "orig", None) or err).split()).rstrip(".?")
        if "timeout expired" in reason and _connect_args(url):
            reason += (f" (no answer within {_connect_args(url)['connect_timeout']} s; "
                       f"${CONNECT_TIMEOUT_ENV} sets the wait)")
        raise SystemExit(f"bench: cannot open the Optuna storage --storage (or $MARGINBENCH_STORAGE) {shown}: "
                         f"{reason}. Check the host, port, user and database name; a new database is made with "
                         f"`createdb -h HOST -U USER DB` (docs/shared-mode.md)") from err


def read_storage(url: str) -> Any:
    """The Optuna storage of a `resolve_storage` value opened to read, or None when it holds no study yet: no
    journal or SQLite file, or a database without Optuna's tables. Creates nothing: no file, no folder, no table,
    no version row (``bench run --validate-only`` reads the study's owner through it).

    Raises:
        SystemExit: as `open_storage`, for a database that cannot be opened.
    """
    if not is_rdb(url):
        if not Path(url).is_file():
            return None
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url))  # reads the log; a backend writes only when appending
    if url.startswith("sqlite:"):
        file = url.split("://", 1)[1].split("?", 1)[0].removeprefix("/")
        if not file or file == ":memory:" or not Path(file).is_file():  # connecting would create the file
            return None
    import optuna
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(with_driver(url), connect_args=_connect_args(url))
        try:
            with engine.connect() as conn:
                # RDBStorage writes its version row and alembic's stamp when they are missing, and its tables
                # unless told not to: open it only where all of them are there
                ready = all(sqlalchemy.inspect(conn).has_table(t) for t in ("studies", "version_info",
                                                                             "alembic_version"))
                ready = ready and all(conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {t}")).scalar()
                                      for t in ("version_info", "alembic_version"))
        finally:
            engine.dispose()
    except Exception as err:  # noqa: BLE001
        _exit_unopened(url, err)
        raise
    if not ready:
        return None
    return optuna.storages.RDBStorage(with_driver(url), skip_table_creation=True, skip_compatibility_check=True)


# ------------------------------------------------------------------------------------------- who runs it
def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_identity() -> dict[str, Any]:
    """``{"host": hostname/boot id, "pid": ..., "start": ...}``: recorded on each trial a process runs."""
    return {"host": f"{socket.gethostname()}/{_boot_id()}", "pid": os.getpid(), "start": _process_start(os.getpid())}


def _owner_is_dead(owner: Mapping[str, Any] | None) -> bool:
    """True when ``owner`` ran on this machine and that process is gone (or its pid was reused)."""
    if not owner or owner.get("host") != worker_identity()["host"]:
        return False
    pid = int(owner.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = owner.get("start")
    return bool(start) and _process_start(pid) not in ("", start)


def _ownerless_too_long(trial: Any) -> bool:
    """A trial popped by a process that died before it could record itself (milliseconds after the pop),
    once `OWNERLESS_GRACE` seconds have passed."""
    import datetime as dt

    if OWNER_ATTR in trial.system_attrs or trial.datetime_start is None:
        return False
    start = trial.datetime_start
    now = dt.datetime.now(start.tzinfo) if start.tzinfo is not None else dt.datetime.now()
    return (now - start).total_seconds() > OWNERLESS_GRACE


# ------------------------------------------------------------------------------------------------- study
class _CellStorage:
    """A study's storage whose ``get_all_trials`` lists only one cell's trials; everything else is the storage's.

    The filter sits in the storage because Optuna's Hyperband pruner builds its bracket studies from a study's
    storage, bypassing the study's own trial listing.
    """

    def __init__(self, storage: Any, cell: str) -> None:
        self._inner, self._cell = storage, cell

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def get_all_trials(self, study_id: int, deepcopy: bool = True, states: Any = None) -> list:
        trials = self._inner.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if t.user_attrs.get(CELL_ATTR) == self._cell]


class CellStudy:
    """A view of a study that shows only the trials of one cell (what a cell-scoped sampler and pruner see).

    Built as a subclass of `optuna.study.Study` on first use, the way Optuna's own Hyperband pruner scopes
    a study to a bracket, over a `_CellStorage`.
    """

    _cls: Any = None

    def __new__(cls, study: Any, cell: str) -> Any:  # type: ignore[misc]
        if CellStudy._cls is None:
            import optuna

            class _CellStudy(optuna.study.Study):
                def __init__(self, study: Any, cell: str) -> None:
                    super().__init__(study_name=study.study_name, storage=_CellStorage(study._storage, cell),
                                     sampler=study.sampler, pruner=study.pruner)
                    self._cell = cell

            CellStudy._cls = _CellStudy
        return CellStudy._cls(study, cell)


def load_study(name: str, storage: Any, config: StudyConfig | None = None, *, worker_index: int = 0) -> Any:
    """Loads a prepared study with the sampler and pruner of its stored config.

    Raises:
        StudyNotReady: no such study, or ``bench run`` has not finished enqueuing it.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError as err:
        raise StudyNotReady(f"no study {name!r} in the storage yet") from err
    attrs = study.user_attrs
    if STUDY_PREPARED_ATTR not in attrs:
        raise StudyNotReady(f"study {name!r} is being prepared")
    config = StudyConfig.from_raw(attrs[STUDY_CONFIG_ATTR]) if config is None else config
    from optuna.trial import TrialState

    drawn = len(study.get_trials(deepcopy=False)) - len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    sampler = config.make_sampler(worker_index=worker_index, drawn=drawn)
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=config.make_pruner())


def stored_config(study: Any) -> StudyConfig:
    return StudyConfig.from_raw(study.user_attrs[STUDY_CONFIG_ATTR])


def slot_trials(study: Any) -> dict[str, list[Any]]:
    """The study's trials grouped by slot, in trial-number order."""
    out: dict[str, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        slot = t.user_attrs.get(SLOT_ATTR)
        if slot is not None:
            out.setdefault(slot, []).append(t)
    return out


def settles(trial: Any) -> bool:
    """Whether this trial settles its slot: waiting, running, complete, pruned, or failed for a reason that a
    retry would repeat (diverged)."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and DIVERGED_ATTR in trial.user_attrs


def requeue_trial(study: Any, trial: Any, *, why: str = "was left running by a process that died") -> None:
    """Puts a failed-as-stale trial back in the queue: same parameters (so the same trial key and checkpoint)
    and attributes, with ``retry_history`` (what `optuna.storages.RetryHeartbeatStaleTrialCallback` does);
    ``why`` goes into the log line."""
    import optuna

    if trial.user_attrs.get(SLOT_ATTR) is None:
        return
    system_attrs = {k: v for k, v in trial.system_attrs.items() if k != OWNER_ATTR}
    system_attrs["failed_trial"] = system_attrs.get("failed_trial", trial.number)
    system_attrs["retry_history"] = list(system_attrs.get("retry_history", [])) + [trial.number]
    user_attrs = {k: v for k, v in trial.user_attrs.items() if k not in (RUN_ATTR, REASON_ATTR, ERROR_ATTR)}
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.WAITING, params=trial.params,
                                              distributions=trial.distributions, user_attrs=user_attrs,
                                              system_attrs=system_attrs))
    log.warning("trial %d (%s) %s; queued again", trial.number, trial.user_attrs.get(SLOT_ATTR), why)


def pop_next_trial_id(study: Any) -> int | None:
    """Sets the next waiting trial RUNNING and returns its id (None when none waits): trials queued again by
    `requeue_trial` first (their checkpoint is waiting to be resumed; Optuna's own pop would take them
    last), then the rest, each in queue order. Several workers may pop at once: the storage accepts one
    WAITING to RUNNING change per trial, and a worker that loses the race tries the next."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    for trial in sorted(waiting, key=lambda t: ("retry_history" not in t.system_attrs, t.number)):
        try:
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def reap_stale_trials(study: Any) -> list[int]:
    """Fails running trials whose process is gone and queues them again; returns their numbers.

    On this machine a dead process is seen at once (host, pid and process start time are recorded on each
    trial); elsewhere, Optuna's heartbeat notices (RDB storages only). When several processes look at the
    same time, only the one whose FAIL the storage accepts re-queues the trial.
    """
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.storages._heartbeat import is_heartbeat_enabled
    from optuna.trial import TrialState

    reaped = []
    if is_heartbeat_enabled(study._storage):
        before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        after = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        reaped += sorted(before - after)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not (_owner_is_dead(t.system_attrs.get(OWNER_ATTR)) or _ownerless_too_long(t)):
            continue
        trial_id = t._trial_id
        try:
            study._storage.set_trial_system_attr(trial_id, ATTR + "stale", True)
            if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process failed it first and re-queues it
        requeue_trial(study, study._storage.get_trial(trial_id))
        reaped.append(t.number)
    return reaped


def _grid_hash(grid: Grid, config: StudyConfig, slots: Sequence[Slot]) -> str:
    blob = json.dumps([config.as_dict(), [s.slot for s in slots]], sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def prepare_study(grid: Grid, config: StudyConfig, storage: Any, *, mlflow: Mapping[str, str] | None = None,
                  owner: Mapping[str, str | None] | None = None) -> Any:
    """Creates or loads the grid's study and enqueues every slot that nothing settles yet; run by ``bench run``
    (workers only consume). ``owner`` is the grid file's record from `bench.study_owner.check_owner`, stored on
    the study before anything is enqueued (None: the study's record is left as it is).

    Trials left running by a dead process on this machine are re-queued first; waiting trials whose slot the
    grid no longer has (a changed grid or ``--set``) are failed with the reason, so the queue is the grid.

    Raises:
        GridError: the study exists with the other direction.
    """
    import optuna
    from optuna.exceptions import DuplicatedStudyError
    from optuna.trial import TrialState

    try:
        study = optuna.create_study(study_name=grid.name, storage=storage, direction=config.direction)
    except DuplicatedStudyError:
        study = optuna.load_study(study_name=grid.name, storage=storage)
    existing = study.direction.name.lower()
    if existing != config.direction:
        raise GridError(grid.path, "objective.direction",
                        f"the study {grid.name!r} in this storage was made to {existing}, but the grid says "
                        f"{config.direction}; rename the grid (name:) or use another --storage")
    if owner is not None:
        from bench.study_owner import record_owner

        record_owner(study, dict(owner))
    study.set_user_attr(STUDY_CONFIG_ATTR, config.as_dict())
    if config.search and config.scope == "grid":
        cells = grid_cells(grid)
        old = study.user_attrs.get(STUDY_CELLS_ATTR)
        if old is not None and list(old) != list(cells):
            raise GridError(grid.path, "grid", f"the study's cells were {list(old)}, now {list(cells)}; a grid-scoped "
                                               f"search keeps its cells (rename the grid to start a new study)")
        study.set_user_attr(STUDY_CELLS_ATTR, cells)
    reap_stale_trials(study)
    slots = plan_slots(grid, config)
    wanted = {s.slot for s in slots}
    by_slot = slot_trials(study)
    enqueued = 0
    for slot in slots:
        if any(settles(t) for t in by_slot.get(slot.slot, [])):
            continue
        study.enqueue_trial({}, user_attrs=slot.user_attrs())
        enqueued += 1
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.user_attrs.get(SLOT_ATTR) not in wanted:
            try:
                study._storage.set_trial_user_attr(t._trial_id, REASON_ATTR, "no longer in the grid")
                study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except Exception:  # popped by a worker meanwhile: let it run
                pass
    if mlflow:
        study.set_user_attr(STUDY_MLFLOW_ATTR, dict(mlflow))
    study.set_user_attr(STUDY_PREPARED_ATTR, {"grid": str(grid.path), "hash": _grid_hash(grid, config, slots),
                                              "time": time.time(), "slots": len(slots), "enqueued": enqueued})
    return study


def study_summary(study: Any, slots: Sequence[Slot] | None = None) -> dict[str, int]:
    """How each slot stands: ``{"finished": n, "pruned": n, "diverged": n, "failed": n, "waiting": n,
    "running": n}``, counting each slot once (its settling trial, else its last)."""
    from optuna.trial import TrialState

    by_slot = slot_trials(study)
    wanted = [s.slot for s in slots] if slots is not None else list(by_slot)
    counts = {k: 0 for k in ("finished", "pruned", "diverged", "failed", "waiting", "running")}
    for slot in wanted:
        trials = by_slot.get(slot, [])
        settling = [t for t in trials if settles(t)]
        t = (settling or trials or [None])[-1]
        if t is None:
            counts["waiting"] += 1
            continue
        name = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.WAITING: "waiting",
                TrialState.RUNNING: "running"}.get(t.state)
        if name is None:
            name = "diverged" if DIVERGED_ATTR in t.user_attrs else "failed"
        counts[name] += 1
    return counts


def run_study(grid: Grid, **kwargs: Any) -> Any:
    """Prepares and runs the grid's study; see `bench.workers.run_study` (re-exported here)."""
    from bench.workers import run_study as _run_study

    return _run_study(grid, **kwargs)
