"""Grid files: load, substitute environment variables, validate everything, expand into trials.

A grid is YAML::

    name: quickstart
    base: {dataset: digits, backbone: lenet++, loss: softmax, epochs: 30, ...}   # one trial
    grid:                                  # axes, crossed
      loss:                                # axis name: the row label in reports
        - {label: softmax, loss: softmax}  # a mapping is deep-merged into base
        - {label: cosface, loss: {name: cosface, s: 10, m: 0.1}}
      embedding_dim: [2, 3]                # scalars set the key named by the axis
    seeds: [0, 1]
    report: {tables: [...]}

Validation happens in full before any training: unknown keys, unknown registry names and parameters, bad
values, missing paths, metric names in ``objective`` and ``report:`` that the trials would not log
(`bench.metric_names`), cells that are one trial under several labels (identical axis entries, or a ``--set`` of
what an axis varies). Every error names the file, the key (``grid.loss[1].loss``) and the fix; the problems
of the layout (top-level keys, name, base, seeds, axes, report) and of the cells are collected, so one `GridError`
lists them all (`check_grid` returns them, so that `bench.study.load_grid_and_config` lists the study keys'
problems in the same error).
``${VAR}`` and ``${VAR:-default}`` in strings are replaced from the environment.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from bench import yamlio
from bench.spec import COMPONENTS, SpecError, TrialSpec, split_component
from registry import BACKBONES, DATASETS, LOSSES, RegistryError
from registry._suggest import did_you_mean

__all__ = ["Grid", "Cell", "GridCheck", "GridError", "load_grid", "check_grid", "find_grid_file", "TOP_LEVEL_KEYS",
           "input_size_problem"]

#: Top-level keys of a grid file and what they hold.
TOP_LEVEL_KEYS = {
    "name": "the study's name (MLflow experiment and Optuna study)",
    "description": "one line shown in reports",
    "base": "the trial every cell starts from",
    "grid": "axes whose value lists are crossed",
    "seeds": "list of seeds run for every cell",
    "search": "Optuna search ranges over flat keys (loss.m: {type: uniform, low: 0.1, high: 0.5})",
    "sampler": "Optuna sampler for search ranges (tpe, random, qmc, gp, cmaes)",
    "pruner": "Optuna pruner on a per-epoch metric",
    "n_trials": "number of sampled trials per cell (search) or overall",
    "search_scope": "'cell' (search inside each cell) or 'grid' (across cells)",
    "objective": "metric the study optimizes, with direction",
    "report": "tables built by `bench report`",
    "plots": "write embedding pictures per epoch (true/false)",
    "workers": "default for --workers",
}
_REGISTRIES = {"dataset": DATASETS, "backbone": BACKBONES, "loss": LOSSES}
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class GridError(ValueError):
    """An invalid grid file: the message names the file, the key and the fix.

    Attributes:
        path: the grid file.
        key: the grid key of the (first) problem, e.g. ``grid.loss[1].loss``; "" for the file as a whole.
        problems: every ``(key, message)`` found, in grid order; one entry unless built by `GridError.listing`.
    """

    #: Problems a listing shows before "... and N more".
    MAX_LISTED = 20

    def __init__(self, path: Path | str, key: str, message: str) -> None:
        self.path, self.key = str(path), key
        self.problems: list[tuple[str, str]] = [(key, message)]
        super().__init__(f"{path}: {key}: {message}" if key else f"{path}: {message}")

    @classmethod
    def listing(cls, path: Path | str, problems: list[tuple[str, str]]) -> GridError:
        """One error for all of ``problems`` (``(key, message)``, non-empty), one per line; a single problem reads
        as ``GridError(path, key, message)``."""
        err = cls(path, *problems[0])
        err.problems = list(problems)
        if len(problems) > 1:
            shown = [f"  {key}: {message}" if key else f"  {message}" for key, message in problems[:cls.MAX_LISTED]]
            more = [f"  ... and {len(problems) - cls.MAX_LISTED} more"] if len(problems) > cls.MAX_LISTED else []
            err.args = (f"{path}: {len(problems)} problems:\n" + "\n".join(shown + more),)
        return err

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles as cls(*args), which __init__'s (path, key, message) refuses: an error raised in a
        # ProcessPool or multiprocessing worker broke the pool instead of reaching the parent. Rebuilt without
        # __init__, from its message and attributes (path, key, problems), it round-trips as it was.
        return (_rebuilt_grid_error, (type(self), self.args), dict(self.__dict__))


def _rebuilt_grid_error(cls: type[GridError], args: tuple[Any, ...]) -> GridError:
    """A `GridError` (or subclass) with ``args`` and no attributes yet (pickle sets them from its state)."""
    err = cls.__new__(cls)
    err.args = args
    return err


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its labels per axis and the trial spec (seed not yet set)."""

    labels: dict[str, str]
    spec: TrialSpec


@dataclass(frozen=True)
class Grid:
    """A validated grid.

    Attributes:
        name: study name.
        path: the file it came from.
        cells: the crossed axes, in file order (first axis slowest).
        seeds: seeds per cell.
        axes: axis names in file order.
        raw: the parsed file with environment variables substituted (search, sampler, pruner, report...).
    """

    name: str
    path: Path
    cells: list[Cell]
    seeds: list[int]
    axes: list[str]
    description: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    def trials(self) -> list[TrialSpec]:
        """Every cell x seed as a spec, cells outer, seeds inner."""
        return [cell.spec.replace(seed=seed) for cell in self.cells for seed in self.seeds]

    @property
    def report(self) -> dict[str, Any]:
        return dict(self.raw.get("report") or {})

    @property
    def plots(self) -> bool:
        return bool(self.raw.get("plots", False))


def find_grid_file(name: str | Path, *, cwd: Path | None = None) -> Path:
    """Resolves a grid argument: a path, else a bare name looked up in ``./sweeps`` and the installed sweeps.

    Raises:
        FileNotFoundError: listing the places looked in and the grids available.
    """
    cwd = cwd or Path.cwd()
    path = Path(name)
    candidates = [cwd / path] if not path.is_absolute() else [path]
    if len(path.parts) == 1:
        stems = ([path.name] if path.suffix in (".yaml", ".yml")
                 else [path.name + ".yaml", path.name + ".yml", path.name])
        for folder in (cwd / "sweeps", Path(__file__).resolve().parent.parent / "sweeps"):
            candidates += [folder / s for s in stems]
    for c in candidates:
        if c.is_file():
            return c
    available = sorted({p.name for f in (cwd / "sweeps", Path(__file__).resolve().parent.parent / "sweeps")
                        if f.is_dir() for p in f.glob("*.yaml")})
    looked = list(dict.fromkeys(str(c.resolve()) for c in candidates))  # ./sweeps is the installed one in the checkout
    hint = did_you_mean(path.stem, [Path(a).stem for a in available])
    raise FileNotFoundError(f"grid {str(name)!r} not found (looked in: {', '.join(looked)}).{hint} "
                            f"Available in sweeps/: {', '.join(available) or 'none'}")


def _substitute(value: Any, key: str, env: Mapping[str, str], unset: list[tuple[str, str]]) -> Any:
    """``value`` with ``${VAR}`` and ``${VAR:-default}`` replaced from ``env``; a ``(key, message)`` for each reference
    to an unset variable without a default is added to ``unset`` (the reference is left as written)."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in env and env[var] != "":
                return env[var]
            if default is not None:
                return default
            unset.append((key, f"environment variable {var} is not set; export {var}=... before the command "
                               f"(or {var}=... bench run ...), or write ${{{var}:-default}} in the grid"))
            return m.group(0)
        out = _ENV.sub(repl, value)
        if out != value and _ENV.fullmatch(value):
            loaded = yamlio.load(out) if out else out
            return loaded if isinstance(loaded, (int, float, bool)) else out
        return out
    if isinstance(value, list):
        return [_substitute(v, f"{key}[{i}]", env, unset) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, f"{key}.{k}" if key else str(k), env, unset) for k, v in value.items()}
    return value


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge; a component given as a new name replaces the old component's params.

    A component that is not a name or a mapping with ``name`` is left as written (a malformed new one replaces the
    old, a malformed old one is replaced): the cell's check (`_without_malformed_components`) names it.
    """
    out = copy.deepcopy(base)
    for key, value in update.items():
        if key in COMPONENTS:
            try:
                new_name, new_params = split_component(key, value)
            except SpecError:
                out[key] = copy.deepcopy(value)
                continue
            try:
                old_name, old_params = split_component(key, out[key]) if key in out else (None, {})
            except SpecError:
                old_name, old_params = None, {}
            params = {**old_params, **new_params} if new_name == old_name else dict(new_params)
            out[key] = {"name": new_name, **params}
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _overridden(spec: TrialSpec, overrides: Mapping[str, Any]) -> TrialSpec:
    """``spec`` with the ``--set`` overrides: a whole component (``loss: arcface``, ``loss: {name: arcface, m: 0.5}``)
    first, merged as a grid axis merges it (a new name replaces the old component's params, the same name keeps
    them), then the flat keys (``loss.m``, ``epochs``).

    Raises:
        SpecError: a component that is not a name or a mapping with ``name``, or a value the spec refuses.
    """
    whole = {k: v for k, v in overrides.items() if k in COMPONENTS}
    for key, value in whole.items():
        if isinstance(value, Mapping) and "name" not in value:
            one = next(iter(value), "<param>")
            raise SpecError(f"a whole {key} is a name or a mapping with 'name' ({key}={{name: ..., ...}}), but got "
                            f"keys {sorted(map(str, value))}; to change one parameter of the grid's {key}, write "
                            f"--set {key}.{one}=VALUE", key=key)
    if whole:
        spec = TrialSpec.from_nested(_merge(spec.to_nested(), whole), spec.labels)
    flat = {k: v for k, v in overrides.items() if k not in whole}
    return spec.with_flat(flat) if flat else spec


def _overridden_each(spec: TrialSpec, overrides: Mapping[str, Any]) -> tuple[TrialSpec, dict[str, Exception]]:
    """``(spec with the overrides, {})`` (`_overridden`), or when that fails ``(spec, {key: error})`` for each
    override refused, so that every bad ``--set`` is named at once, not the first only.

    The overrides that go through are gathered in passes, each tried on top of those taken so far, so that one
    that needs another (``loss.m`` on top of ``loss=cosface``) is not refused for its order.
    """
    try:
        return _overridden(spec, overrides), {}
    except (SpecError, TypeError):
        pass
    taken: dict[str, Any] = {}
    refused: dict[str, Exception] = {}
    pending = list(overrides)
    while pending:
        refused = {}
        for key in pending:
            try:
                _overridden(spec, {**taken, key: overrides[key]})
                taken[key] = overrides[key]
            except (SpecError, TypeError) as err:
                refused[key] = err
        if len(refused) == len(pending):  # no progress: these are refused on top of all the others
            break
        pending = list(refused)
    if not refused:  # taken in another order, they all go through
        return _overridden(spec, taken), {}
    return spec, {key: refused[key] for key in overrides if key in refused}


def _axis_values(path: Path, axis: str, values: Any) -> list[tuple[str, dict[str, Any], str]]:
    """``[(label, update, key_path), ...]`` for one axis."""
    if not isinstance(values, list) or not values:
        raise GridError(path, f"grid.{axis}", f"an axis needs a non-empty list of values, but got {values!r}")
    out = []
    for i, value in enumerate(values):
        where = f"grid.{axis}[{i}]"
        if isinstance(value, Mapping):
            update = {k: v for k, v in value.items() if k != "label"}
            label = value.get("label")
            if label is None:
                label = ", ".join(f"{k}={_short(v)}" for k, v in update.items())
            out.append((str(label), update, where))
        else:
            out.append((_short(value), {axis: value}, where))
    labels = [lab for lab, _, _ in out]
    dup = {lab for lab in labels if labels.count(lab) > 1}
    if dup:
        raise GridError(path, f"grid.{axis}", f"labels must be unique within an axis; repeated: {sorted(dup)}")
    return out


def _short(value: Any) -> str:
    if isinstance(value, Mapping) and "name" in value:
        return str(value["name"])
    return str(value) if not isinstance(value, (dict, list)) else json.dumps(value, sort_keys=True)


def _origin(key: str, sources: list[tuple[str, Mapping[str, Any]]]) -> str:
    """The grid location that last set ``key`` (for error messages): ``grid.loss[1].loss``, or the ``--set``
    options as typed (``--set loss.m=abc``)."""
    where = "base"
    for name, update in sources:
        if key in update:
            where = name
    return where if where.startswith("--set ") else f"{where}.{key}"


def _shown(value: Any) -> str:
    """A ``--set`` value as it would be typed: scalars as text, mappings and lists in YAML's flow style."""
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _set_options(overrides: Mapping[str, Any], typed: Mapping[str, str] | None,
                 keys: list[str] | None = None) -> str:
    """``--set KEY=VALUE`` for each override (of ``keys``), as the user typed it when ``typed`` has it."""
    typed = typed or {}
    return " ".join(f"--set {typed.get(k) or f'{k}={_shown(overrides[k])}'}"
                    for k in (overrides if keys is None else keys))


def _cell_spec(path: Path, config: dict[str, Any], sources: list[tuple[str, Mapping[str, Any]]],
               labels: dict[str, str]) -> TrialSpec:
    """A cell's spec from its merged config; a bad key or value is a GridError naming where the grid set it."""
    try:
        return TrialSpec.from_nested(config, labels)
    except SpecError as err:
        key = err.key or next((k for k in list(config) if k in str(err)), "")
        raise GridError(path, _origin(key, sources) if key else "base", str(err)) from err
    except TypeError as err:
        raise GridError(path, "base", f"bad value: {err}") from err



def _unknown_key_problems(config: Mapping[str, Any], sources: list[tuple[str, Mapping[str, Any]]],
                          ) -> list[tuple[str, str]]:
    """``(key, message)`` for each key of a cell's merged config that is not a trial key, named where the grid set
    it (`TrialSpec.from_nested` stops at the first)."""
    valid = TrialSpec.nested_keys()
    return [(_origin(key, sources), str(TrialSpec.unknown_key_error(key))) for key in config if key not in valid]


#: Trial keys whose value no later check of a cell reads (its dataset, backbone and loss, image size, metric names).
_PLAIN_KEYS = frozenset(TrialSpec.nested_keys()) - set(_REGISTRIES) - {"seed"}


def _without_refused_values(config: Mapping[str, Any], sources: list[tuple[str, Mapping[str, Any]]],
                            labels: dict[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``config`` without the plain keys (`_PLAIN_KEYS`: epochs, optimizer, ...) whose value the spec refuses, and
    ``(key, message)`` for each: the spec checks its values in turn and stops at the first, but these are
    independent of the rest, which is then checked with their defaults. Other problems are left for `_cell_spec`."""
    config = dict(config)
    problems = []
    while True:
        try:
            TrialSpec.from_nested(config, labels)
        except SpecError as err:
            if err.key in _PLAIN_KEYS and err.key in config:
                problems.append((_origin(err.key, sources), str(err)))
                config.pop(err.key)
                continue
        except TypeError:
            pass
        return config, problems


def _replaced_components(overrides: Mapping[str, Any]) -> frozenset[str]:
    """The components (dataset, backbone, loss) that a well-formed whole ``--set`` (``loss=cosface``,
    ``loss={name: cosface, m: 0.2}``) gives in every cell; a malformed one replaces nothing (it is refused)."""
    out = set()
    for key in overrides.keys() & _REGISTRIES.keys():
        try:
            split_component(key, overrides[key])
        except SpecError:
            continue
        out.add(key)
    return frozenset(out)


def _without_malformed_components(config: Mapping[str, Any], sources: list[tuple[str, Mapping[str, Any]]],
                                  replaced: frozenset[str] = frozenset(),
                                  ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """``config`` without the components (dataset, backbone, loss) that are not a name or a mapping with ``name``,
    and ``(key, message)`` for each: the spec stops at the first, but the other components can still be looked up
    and checked in their registries (with the spec's default in place of the malformed one, not checked).

    A malformed component in ``replaced`` (a whole ``--set loss=...`` gives it in every cell, and a malformed old
    one keeps none of its keys, `_merge`) is left out without a problem: its value is never used."""
    config = dict(config)
    problems = []
    for component in _REGISTRIES:
        if component not in config:
            continue
        try:
            split_component(component, config[component])
        except SpecError as err:
            if component not in replaced:
                problems.append((_origin(component, sources), str(err)))
            config.pop(component)
    return config, problems


def _component_problems(spec: TrialSpec, sources: list[tuple[str, Mapping[str, Any]]],
                        checked: dict[str, list[tuple[str, str]]], skip: frozenset[str] = frozenset(),
                        set_sources: list[tuple[str, Mapping[str, Any]]] | None = None,
                        grid_spec: TrialSpec | None = None) -> list[tuple[str, str]]:
    """``(key, message)`` for each problem the registry finds in a component (but those in ``skip``; a dataset's
    files too), at the parameter's key (``grid.loss[1].loss.s``, or the ``--set`` that gave it: `_set_sources`)
    where it is about one; each distinct set is checked once, its problems kept in ``checked``.

    A problem of the whole component (an unknown parameter, a missing one) that the grid's own component
    (``grid_spec``, the cell before the ``--set`` options) has word for word is named at the grid, unless a
    ``--set`` named the component: a ``--set loss.m=0.3`` did not make the grid's unknown ``q``."""
    problems = []
    set_sources = set_sources or []
    named = {component for _, update in set_sources for component, value in update.items()
             if not isinstance(value, Mapping) or "name" in value}
    grid_sources = [(where, update) for where, update in sources if not where.startswith("--set ")]
    for component in _REGISTRIES:
        if component in skip:
            continue
        own = (_registry_problems(grid_spec, component, checked)
               if grid_spec is not None and component not in named else [])
        for param, message in _registry_problems(spec, component, checked):
            if not param and ("", message) in own:
                where = _origin(component, grid_sources)
            else:
                where = _param_origin(component, param, sources, set_sources)
            problems.append((where, message))
    return problems


def _registry_problems(spec: TrialSpec, component: str, checked: dict[str, list[tuple[str, str]]],
                       ) -> list[tuple[str, str]]:
    """``(param, message)`` for each problem the registry finds in ``spec``'s ``component`` (``param`` empty for one
    of the whole component), each distinct component checked once, kept in ``checked``."""
    name = getattr(spec, component)
    params = dict(getattr(spec, f"{component}_params"))
    memo = json.dumps([component, name, params], sort_keys=True, default=str)
    if memo not in checked:
        try:
            _REGISTRIES[component].check(name, params)
            checked[memo] = []
        except RegistryError as err:
            checked[memo] = err.problems or [("", str(err))]
    return checked[memo]


def _param_origin(component: str, param: str, sources: list[tuple[str, Mapping[str, Any]]],
                  set_sources: list[tuple[str, Mapping[str, Any]]]) -> str:
    """Where ``param`` of ``component`` was last set: the ``--set`` option that gave it (`_set_sources`), else the
    grid location (``grid.loss[1].loss.s``, or ``base.loss.s`` when the cell's axis names the component without it);
    the component's own (`_origin`: every ``--set`` of it, if any) for a problem of the whole component (``param``
    empty)."""
    if not param:
        return _origin(component, sources)
    where = f"base.{component}.{param}"
    for name, update in [*sources, *set_sources]:
        value = update.get(component)
        if isinstance(value, Mapping) and param in value:
            where = name if name.startswith("--set ") else f"{name}.{component}.{param}"
    return where


def _set_sources(overrides: Mapping[str, Any], typed: Mapping[str, str] | None,
                 ) -> list[tuple[str, dict[str, Any]]]:
    """``(option, update)`` for each ``--set``, in the order `_overridden` applies them (whole components, then flat
    keys), its update nested as a grid's (``loss.m=x`` -> ``{"loss": {"m": "x"}}``), so that `_param_origin` finds
    the option that gave a parameter."""
    ordered = sorted(overrides, key=lambda k: k not in COMPONENTS)
    out = []
    for key in ordered:
        head, _, rest = key.partition(".")
        update = {head: {rest: overrides[key]}} if rest else {key: overrides[key]}
        out.append((_set_options(overrides, typed, [key]), update))
    return out


def input_size_problem(spec: TrialSpec, backbone_at: str = "backbone",
                       dataset_at: str = "dataset") -> tuple[str, str] | None:
    """``(key, message)`` when the spec's backbone cannot take its dataset's images, else None.

    A face net whose ``input_size`` differs from the dataset's image size, or any backbone of `MIN_SIDE` given
    images smaller than it takes, fails in the first training step, as does a ``timm/...`` model of a fixed input
    size (ViT, Swin: `fixed_input_size`) given another; timm models that pool globally take any size. Datasets
    that do not say their image size (`image_size_of`) are not checked. ``backbone_at`` and
    ``dataset_at`` are the grid keys that set the two components, for the message.
    """
    from registry.backbones._sizes import MIN_SIDE, parse_input_size
    from registry.datasets import image_size_of

    size = image_size_of(spec.dataset, spec.dataset_params)
    if size is None:
        return None
    h, w = size
    dataset_params = DATASETS.parameters(spec.dataset)
    resizable = "image_size" in dataset_params
    if resizable:
        shown = spec.dataset_params.get("image_size", f"{dataset_params['image_size']}, the default")
        images = f"dataset {spec.dataset} gives {h}x{w} images ({dataset_at}.image_size: {shown})"
    else:
        images = f"dataset {spec.dataset} ({dataset_at}) gives {h}x{w} images, a fixed size"
    given = spec.backbone_params.get("input_size")
    if given is not None:
        want = parse_input_size(given, name=spec.backbone, minimum=1)
        if want != size:
            square = want[0] == want[1]
            resize = (f", or set {dataset_at}.image_size: {want[0] if square else list(want)}"
                      if resizable and (square or not isinstance(dataset_params["image_size"], int)) else "")
            return (f"{backbone_at}.input_size",
                    f"backbone {spec.backbone} is built for {want[0]}x{want[1]} inputs (input_size: {given}), but "
                    f"{images}: its last layer is sized by the input, so the first training step would fail. Set "
                    f"input_size: [{h}, {w}] or drop it (it then follows the dataset){resize}")
    if spec.backbone.startswith("timm/"):
        from registry.backbones.timm_family import fixed_input_size

        kwargs = spec.backbone_params.get("kwargs") or {}
        fixed = fixed_input_size(spec.backbone[len("timm/"):], kwargs)
        if fixed is not None and fixed != size:
            given = "img_size" in kwargs
            resize = f", or set {dataset_at}.image_size: {fixed[0]}" if resizable and fixed[0] == fixed[1] else ""
            return (f"{backbone_at}.kwargs.img_size" if given else backbone_at,
                    f"backbone {spec.backbone} takes only {fixed[0]}x{fixed[1]} inputs ("
                    + (f"kwargs.img_size: {kwargs['img_size']}" if given else "timm's fixed_input_size")
                    + f"), but {images}, so the first training step would fail. Set kwargs: {{img_size: [{h}, {w}]}} "
                    f"on the backbone (a ViT's patch_size must divide it){resize}, or choose a model that pools "
                    f"globally (timm/mobilenetv3_large_100, timm/efficientnet_b0)")
    minimum = MIN_SIDE.get(spec.backbone)
    if minimum is not None and min(size) < minimum:
        others = "mini-resnet18 from 4x4, timm/... models" if minimum > 4 else "timm/... models"
        return (f"{dataset_at}.image_size" if resizable else backbone_at,
                f"backbone {spec.backbone} ({backbone_at}) takes images of at least {minimum}x{minimum}, but {images}, "
                f"so the first training step would fail. "
                + (f"Set {dataset_at}.image_size to at least {minimum}, or choose " if resizable else "Choose ")
                + f"a backbone that takes {h}x{w} images ({others})")
    return None


def _check_report(path: Path, report: Any, axes: list[str], labels: dict[str, list[str]]) -> list[Any]:
    """The ``report:`` section's tables (`reports.spec.TableSpec`), parsed against the grid's axes and their labels
    (so a typo fails now, not after training); an axis missing from ``labels`` has its labels unchecked.

    Raises:
        GridError: every problem of the section (its keys, each table, the names), in one listing.
    """
    from reports.spec import ReportError, TableSpec, parse_tables

    try:
        return parse_tables(report, axes=axes, source=str(path), grid_labels=labels)
    except ReportError as err:
        problems = _report_problems(path, err)
    tables = report.get("tables") if isinstance(report, Mapping) else None
    for i, table in enumerate(tables if isinstance(tables, list) else []):  # each on its own: every bad one is named
        try:
            TableSpec.from_dict(table, axes=axes, source=str(path), key=f"report.tables[{i}]", grid_labels=labels)
        except ReportError as err:
            problems += _report_problems(path, err)
    raise GridError.listing(path, list(dict.fromkeys(problems)))


def _report_problems(path: Path, err: Any) -> list[tuple[str, str]]:
    """A `reports.spec.ReportError` as grid problems, one per problem of a table (its ``problems``); each message
    names ``report.<key>``, so the key is left empty, as for a problem of the section."""
    if err.problems:
        return [("", f"{key}: {message}") for key, message in err.problems]
    return [("", str(err).removeprefix(f"{path}: "))]


def _cell_metrics(spec: TrialSpec, checked: dict[str, tuple[frozenset[str] | None, str | None]],
                  ) -> tuple[frozenset[str] | None, str | None]:
    """``(names, problem)``: `bench.metric_names.logged_metrics` of the spec (None: not known), and what is wrong
    with the dataset's files when reading them for it failed (None: nothing), once per distinct dataset.

    The registry's check does not read every file (with ``download: true`` an IDX dataset is not checked, as its
    files may be still to come), so a damaged file met here is a problem of the grid: every trial would fail
    loading it.
    """
    from bench.metric_names import logged_metrics

    memo = json.dumps([spec.dataset, dict(spec.dataset_params)], sort_keys=True, default=str)
    if memo not in checked:
        try:
            checked[memo] = (logged_metrics(spec), None)
        except (OSError, ValueError) as err:
            checked[memo] = (None, f"dataset {spec.dataset!r} cannot be read, so every trial would fail loading "
                                   f"it: {err}")
    return checked[memo]


def _pairs_hint(metric: str, have: frozenset[str]) -> str:
    """For a name shaped as a pair-verification metric (``lfw_acc``) that the trials do not log (``have`` is what they
    log): what their pairs are named, or that they have none."""
    from bench.verification import metric_names
    from reports.tables import verification_accuracies

    prefixes = [metric[: -len(suffix)] for suffix in metric_names("") if metric.endswith(suffix)]
    if not any(p and not difflib.get_close_matches(p, ["train", "test"], 1) for p in prefixes):
        return ""  # not a verification metric's name (tst_acc is a typo of test_acc)
    pairs = [m[: -len("_acc")] for m in verification_accuracies(have)]
    if pairs:
        return (f"; pair-verification metrics are named after the pairs, here {', '.join(map(repr, pairs))} "
                f"({pairs[0]}_acc, {pairs[0]}_auc, ...)")
    return ("; these trials have no verification pairs: metrics such as lfw_acc come from a dataset with pairs "
            "(synthetic-faces, or imagefolder with pairs:, bin: or split: identities)")


def _metric_problems(raw: Mapping[str, Any], tables: list[Any],
                     cells: list[tuple[dict[str, str], frozenset[str] | None]]) -> list[tuple[str, str]]:
    """``(key, message)`` for each metric name in ``objective`` and the ``report:`` tables that the trials would
    not log (`bench.metric_names`), so that the objective does not fail every trial at its end and a table does
    not fail after the training. ``cells``: each cell's labels and metric names (None: not known, when its dataset
    does not say or the cell is invalid).

    The objective must be logged by every cell (``test_acc`` stands for the pairs' accuracy where there is no test
    split, as `bench.workers.objective_metric` takes it); a table's metric by one of the cells the table shows (a
    cell of another dataset shows ``n/a``). A table with a cell whose metrics are not known is not checked.
    """
    import fnmatch

    from reports.spec import closest_first, unknown_metric
    from reports.tables import verification_accuracies

    problems = []
    objective = raw.get("objective")
    metric = objective.get("metric") if isinstance(objective, Mapping) else objective
    known = [(labels, names) for labels, names in cells if names is not None]
    if isinstance(metric, str) and metric and known:
        lacking = [(" / ".join(labels.values()) or "base", names) for labels, names in known
                   if metric not in names and not (metric == "test_acc" and verification_accuracies(names))]
        if lacking:
            every = frozenset.intersection(*(names for _, names in known))  # what the objective can be
            shown = ", ".join(repr(c) for c, _ in lacking[:3]) + (f" and {len(lacking) - 3} more" if len(lacking) > 3
                                                                  else "")
            of = "the trials of this grid" if len(lacking) == len(cells) else f"the trials of cells {shown}"
            hint = _pairs_hint(metric, frozenset.union(*(names for _, names in lacking)))
            problems.append(("objective.metric" if isinstance(objective, Mapping) else "objective",
                             f"{unknown_metric(metric, every, of)}{hint}. Each of those trials "
                             f"would be recorded as failed at its end; set the objective to a metric every cell logs"))
    for i, table in enumerate(tables):
        shown_cells = [names for labels, names in cells
                       if all(labels.get(axis) in values for axis, values in table.where.items())]
        if not shown_cells or any(names is None for names in shown_cells):
            continue
        have = frozenset.union(*shown_cells)
        of = "the trials this table shows" if table.where else "the trials of this grid"
        for key, name in table.named_metrics():
            if name not in have:
                problems.append((f"report.tables[{i}].{key}", f"{unknown_metric(name, have, of)}"
                                                              f"{_pairs_hint(name, have)}; the table could not be "
                                                              f"built after the training"))
        if table.pattern is not None and not any(fnmatch.fnmatchcase(m, table.pattern) for m in have):
            problems.append((f"report.tables[{i}].columns.pattern",
                             f"{table.pattern!r} matches no metric of {of}; metrics: "
                             f"{', '.join(closest_first(table.pattern, have))}"))
    return problems


def _header_problems(tables: list[Any], labels: Mapping[str, list[str]],
                     cells: list[tuple[dict[str, str], frozenset[str] | None]]) -> list[tuple[str, str]]:
    """``(key, message)`` for each key of a table's ``headers:`` that names nothing the table shows
    (`reports.spec.TableSpec.header_problems`): its display name would be dropped without a word. ``labels``: each
    axis's labels and ``label`` the joined ones; ``cells``: each cell's labels and metric names (None: not known), for
    the metrics a ``pattern`` matches (where some are not known, any name it matches is taken)."""
    problems = []
    for i, table in enumerate(tables):
        shown = [names for cell_labels, names in cells
                 if all(cell_labels.get(axis) in values for axis, values in table.where.items())]
        metrics = frozenset().union(*(n for n in shown if n is not None))
        problems += [(f"report.tables[{i}].{key}", message) for key, message in
                     table.header_problems(metrics, labels, metrics_unknown=any(n is None for n in shown))]
    return problems


class _Layout(NamedTuple):
    """A grid file's layout (`_layout`): what its cells are built from, each part None where it has a problem."""

    name: str | None
    base: dict[str, Any] | None
    seeds: list[int] | None
    axes: list[str]  # the names under grid: (none when grid: is not a mapping)
    per_axis: list[list[tuple[str, dict[str, Any], str]]] | None  # each axis's `_axis_values`; None: one is bad
    axis_labels: dict[str, list[str]]  # the labels of each sound axis
    tables: list[Any]  # the report's `reports.spec.TableSpec`s (none when report: has a problem)
    problems: list[tuple[str, str]]  # every (key, message) of the layout, in the order checked
    as_written: bool  # False: the cells leave out an unknown axis's key (`_unknown_axis_problem`), so are no Grid's


_Built = tuple[dict[str, str], TrialSpec, TrialSpec, list[str]]  # labels, spec, spec before --set, axis entries


def _touches(option: str, flat: str) -> bool:
    """Whether the ``--set`` of ``option`` (``loss``, ``loss.m``, ``epochs``) changes the flat key ``flat``."""
    return flat == option or (option in COMPONENTS and flat.startswith(option + "."))


def _varied_axes(group: list[_Built]) -> list[str]:
    """The axes whose label differs between the cells of ``group``."""
    return [axis for axis in group[0][0] if len({labels[axis] for labels, _, _, _ in group}) > 1]


def _cells_named(group: list[_Built]) -> str:
    """The cells of a collapsed group by their labels (``a / 2, b / 2``)."""
    return ", ".join(" / ".join(labels.values()) for labels, _, _, _ in group)


def _set_collapse(group: list[_Built], overrides: Mapping[str, Any], typed: Mapping[str, str] | None,
                  ) -> tuple[str, str]:
    """``(the --set options, what the grid's axes vary)`` for cells that differ in the grid but that the options
    make one trial: the options that set what the cells differ in (all of them if none does)."""
    params = [grid_spec.to_params() for _, _, grid_spec, _ in group]
    differ = sorted(flat for flat in set().union(*params)
                    if len({json.dumps(p.get(flat), default=str) for p in params}) > 1)
    blamed = [option for option in overrides if any(_touches(option, flat) for flat in differ)] or list(overrides)
    return _set_options(overrides, typed, blamed), ", ".join(differ)


def _axis_collapse_problem(group: list[_Built]) -> tuple[str, str]:
    """``(key, message)`` for cells the grid itself makes one trial: at the one axis whose entries are identical
    (by index), or at ``grid`` when several axes differ (a later axis undoes what an earlier one varies)."""
    axes = _varied_axes(group)
    if len(axes) == 1:
        i = list(group[0][0]).index(axes[0])
        entries = list(dict.fromkeys((wheres[i], labels[axes[0]]) for labels, _, _, wheres in group))
        named = " and ".join(f"{where.removeprefix(f'grid.{axes[0]}')} ({label})" for where, label in entries)
        return (f"grid.{axes[0]}", f"entries {named} give the same trial, so the study would train one configuration "
                                   f"under {len(entries)} labels; drop all but one of them, or make them differ")
    return ("grid", f"cells {_cells_named(group)} are one trial: axes {', '.join(axes)} each set what the other "
                    f"varies, so the study would train one configuration under {len(group)} labels; make the cells "
                    f"differ, or drop one of the axes")


def _collapse_problems(built: list[_Built], overrides: Mapping[str, Any] | None,
                       typed: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """``(key, message)`` for the cells that are the same trial (`TrialSpec.key`; every cell has the same seeds):
    their labels differ, but the study runs one configuration and its report shows it in as many rows. Cells that
    only a ``--set`` makes alike are named at the option(s), in one problem; cells alike in the grid at the axis."""
    groups: dict[str, list[_Built]] = {}
    for cell in built:
        groups.setdefault(cell[1].key(), []).append(cell)
    problems: list[tuple[str, str]] = []
    by_set: dict[tuple[str, str, str], list[str]] = {}  # (options, axes, what they vary) -> each group's cells
    for group in (g for g in groups.values() if len(g) > 1):
        if overrides and len({grid_spec.key() for _, _, grid_spec, _ in group}) > 1:
            where, differ = _set_collapse(group, overrides, typed)
            by_set.setdefault((where, ", ".join(_varied_axes(group)), differ), []).append(_cells_named(group))
        else:
            problems.append(_axis_collapse_problem(group))
    for (where, axes, differ), named in by_set.items():
        cells = "; ".join(f"{{{n}}}" for n in named)
        what = "these cells one trial" if len(named) == 1 else "the cells of each group one trial"
        problems.append((where, f"makes {what}: {cells}; the grid's axis {axes} varies {differ}, which {where} sets "
                                f"the same in every cell, so the study would train one configuration under several "
                                f"labels; drop {where} (or the axis {axes}, to run the one trial), or use --set on a "
                                f"key the axis does not vary"))
    return list(dict.fromkeys(problems))


def _collected(problems: list[tuple[str, str]], default: Any, check: Callable[..., Any], *args: Any) -> Any:
    """``check(*args)``, or ``default`` with the problems of its `GridError` added to ``problems``."""
    try:
        return check(*args)
    except GridError as err:
        problems.extend(err.problems)
        return default


def _checked_name(path: Path, name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name or ""):
        raise GridError(path, "name", f"a name of letters, digits, '_', '-', '.' is required, but got {name!r}")
    return name


def _checked_base(path: Path, base: Any) -> dict[str, Any]:
    base = base or {}
    if not isinstance(base, dict):
        raise GridError(path, "base", f"must be a mapping of trial keys, but got {base!r}")
    return base


def _checked_seeds(path: Path, seeds: Any) -> list[int]:
    """``seeds:`` as a list: a count ``n`` is seeds 0..n-1."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise GridError(path, "seeds", f"a count of seeds is at least 1, but got {seeds}; write seeds: 1 (seed 0), "
                                           f"or a list such as seeds: [0, 1, 2]")
        seeds = list(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise GridError(path, "seeds", f"a list of integers (or a count) is required, but got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise GridError(path, "seeds", f"seeds repeat: {seeds}")
    return list(seeds)


def _checked_axes(path: Path, axes: Any) -> dict[str, Any]:
    axes = axes or {}
    if not isinstance(axes, dict):
        raise GridError(path, "grid", f"must map axis names to value lists, but got {axes!r}")
    return axes


def _searched_set_problems(search: Any, overrides: Mapping[str, Any] | None,
                           typed: Mapping[str, str] | None) -> list[tuple[str, str]]:
    """``(key, message)`` for each ``--set`` key that ``search:`` also samples: the sampler would replace its value
    in every trial, so the ``--set`` would do nothing, silently."""
    searched = sorted(set(overrides or {}) & set(search)) if isinstance(search, dict) else []
    return [(_set_options(overrides or {}, typed, [key]),
             f"{key} is searched (search: {key}), so the sampler sets it in every trial; drop --set {key}=..., or "
             f"take {key} out of search: to fix it") for key in searched]


def _unknown_top_level_problems(raw: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The one ``(key, message)`` naming every key of ``raw`` that is not in `TOP_LEVEL_KEYS` (none: empty)."""
    unknown = [k for k in raw if k not in TOP_LEVEL_KEYS]
    if not unknown:
        return []
    hints = [f"{k!r}{did_you_mean(str(k), TOP_LEVEL_KEYS, aside=True)}" for k in unknown]
    return [(str(unknown[0]), f"unknown top-level key {', '.join(hints)}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")]


def _unknown_axis_problem(axis: Any, values: list[Any]) -> tuple[str, str] | None:
    """``(key, message)`` when the axis's plain values set a trial key of the axis's name that does not exist
    (``embeding_dim: [2, 3]``): one problem at ``grid.<axis>``, not one for each value in every cell."""
    if axis in TrialSpec.nested_keys() or all(isinstance(v, Mapping) for v in values):
        return None
    valid = TrialSpec.nested_keys(settable=True)
    return (f"grid.{axis}", f"an axis of plain values sets the trial key of its name, but {axis!r} is not a trial key"
                            f"{did_you_mean(str(axis), valid, aside=True)}; name the axis after one "
                            f"({', '.join(valid)}), or give each value as a mapping of trial keys with a label, e.g. "
                            f"- {{label: m0.2, loss: {{name: cosface, m: 0.2}}}}")


def _without_key(values: list[tuple[str, dict[str, Any], str]], key: str) -> list[tuple[str, dict[str, Any], str]]:
    """An axis's `_axis_values` with ``key`` taken out of each entry's update."""
    return [(label, {k: v for k, v in update.items() if k != key}, where) for label, update, where in values]


def _layout(path: Path, raw: dict[str, Any], overrides: Mapping[str, Any] | None,
            typed: Mapping[str, str] | None) -> _Layout:
    """The file's layout (name, base, seeds, axes, report), checked: every problem of its parts is collected, so
    that one `GridError` lists them all; a part with a problem is None (or empty) in the result.

    The report is checked only when ``grid:`` is a mapping (its tables name the axes), and a bad axis's labels are
    not checked against (its ``where:`` labels would all read as unknown).
    """
    problems: list[tuple[str, str]] = []
    name = _collected(problems, None, _checked_name, path, raw.get("name"))
    base = _collected(problems, None, _checked_base, path, raw.get("base"))
    seeds = _collected(problems, None, _checked_seeds, path, raw.get("seeds", [0]))
    axes_raw = _collected(problems, None, _checked_axes, path, raw.get("grid"))
    problems += _searched_set_problems(raw.get("search"), overrides, typed)
    axes = list(axes_raw or {})
    per_axis = [_collected(problems, None, _axis_values, path, axis, axes_raw[axis]) for axis in axes]
    unknown = {axis: problem for axis, values in zip(axes, per_axis, strict=True)
               if values is not None and (problem := _unknown_axis_problem(axis, axes_raw[axis])) is not None}
    problems += unknown.values()
    # the cells are checked without the unknown key, so that it does not hide their other problems
    per_axis = [_without_key(values, axis) if axis in unknown else values for axis, values in zip(axes, per_axis,
                                                                                                   strict=True)]
    axis_labels = {axis: [label for label, _, _ in values]
                   for axis, values in zip(axes, per_axis, strict=True) if values is not None}
    tables = (_collected(problems, [], _check_report, path, raw.get("report"), axes, axis_labels)
              if axes_raw is not None else [])
    sound = axes_raw is not None and all(values is not None for values in per_axis)
    return _Layout(name, base, seeds, axes, per_axis if sound else None, axis_labels, tables, problems, not unknown)


def load_grid(source: str | Path, *, env: Mapping[str, str] | None = None,
              overrides: Mapping[str, Any] | None = None, typed: Mapping[str, str] | None = None) -> Grid:
    """Reads, validates and expands a grid file.

    Args:
        source: a path, or a bare name looked up in ``sweeps/``.
        env: environment for ``${VAR}`` substitution (default: ``os.environ``).
        overrides: flat keys applied to every cell after merging (``{"epochs": 1}``), as ``--set`` gives.
        typed: the ``--set`` argument each override came from, as typed (``{"epochs": "epochs=abc"}``); an error
            names the option so (default: ``KEY=VALUE`` from the parsed value).

    Raises:
        FileNotFoundError: no such grid.
        GridError: anything invalid, before any training.
    """
    check = check_grid(source, env=env, overrides=overrides, typed=typed)
    if check.problems:
        raise GridError.listing(check.path, check.problems)
    assert check.grid is not None  # a check without problems has its grid
    return check.grid


@dataclass(frozen=True)
class GridCheck:
    """What `check_grid` found in a grid file, so that a caller can add the problems of its own checks (the study
    keys, `bench.study.load_grid_and_config`) and list them all in one `GridError`.

    Attributes:
        path: the grid file.
        raw: the parsed file with environment variables substituted.
        grid: the grid of the cells that have no problem of their own (every cell when ``problems`` is empty);
            None when the file's name, base, seeds or axes have a problem (`_layout`). The cells are still checked
            when only the name, the seeds or an axis named after no trial key do (that axis's key left out), so
            their problems are listed in the same round.
        problems: every distinct ``(key, message)``, in grid order; empty for a valid grid.
    """

    path: Path
    raw: dict[str, Any]
    grid: Grid | None
    problems: list[tuple[str, str]]


def check_grid(source: str | Path, *, env: Mapping[str, str] | None = None,
               overrides: Mapping[str, Any] | None = None, typed: Mapping[str, str] | None = None) -> GridCheck:
    """`load_grid`'s validation, its problems returned instead of raised (arguments as `load_grid`'s).

    Raises:
        FileNotFoundError: no such grid.
        GridError: a file that cannot be read as a grid (not YAML, not a mapping, unset environment variables):
            nothing else can be checked; the error lists every unset variable and the unknown top-level keys.
    """
    path = find_grid_file(source)
    try:
        raw = yamlio.load(path.read_text())
    except yaml.YAMLError as err:
        hint = (" (inside {...} or [...], quote environment references: root: \"${CASIA_ROOT}\")"
                if "${" in path.read_text() else "")
        raise GridError(path, "", f"not valid YAML{hint}: {err}") from err
    if not isinstance(raw, dict):
        raise GridError(path, "", "a grid file must be a mapping with at least 'name' and 'base'")
    unknown = _unknown_top_level_problems(raw)
    unset: list[tuple[str, str]] = []
    raw = _substitute(raw, "", os.environ if env is None else env, unset)
    if unset:  # the values are not known: nothing else can be checked
        raise GridError.listing(path, list(dict.fromkeys([*unknown, *unset])))
    layout = _layout(path, raw, overrides, typed)
    problems: dict[tuple[str, str], None] = dict.fromkeys([*unknown, *layout.problems])  # all fixed in one go
    base, per_axis = layout.base, layout.per_axis
    if base is None or per_axis is None:  # the cells cannot be built; the caller's own checks of raw may still run
        return GridCheck(path, raw, None, list(problems))
    axes, axis_labels, tables = layout.axes, layout.axis_labels, layout.tables
    cells: list[Cell] = []
    clean: list[Cell] = []  # the cells without a problem of their own, for the caller's checks against cells
    checked: dict[str, list[tuple[str, str]]] = {}
    metrics: list[tuple[dict[str, str], frozenset[str] | None]] = []  # each cell's labels and metric names
    metrics_checked: dict[str, tuple[frozenset[str] | None, str | None]] = {}
    built: list[_Built] = []  # the cells whose spec is as written
    # what the --set options give every cell: the components they replace, each option's update (`_set_sources`),
    # and the options that change each trial key, named as the cell's last sources
    replaced = _replaced_components(overrides or {})
    set_sources = _set_sources(overrides or {}, typed)
    by_key: dict[str, list[str]] = {}
    for k in overrides or {}:
        by_key.setdefault(k.split(".")[0], []).append(k)
    set_origins = [(_set_options(overrides or {}, typed, keys), {key: None}) for key, keys in by_key.items()]
    for combo in itertools.product(*per_axis) if per_axis else [()]:
        config = dict(base)
        sources: list[tuple[str, Mapping[str, Any]]] = []
        for _, update, where in combo:
            config = _merge(config, update)
            sources.append((where, update))
        labels = {axis: label for axis, (label, _, _) in zip(axes, combo, strict=True)}
        own = "seed" in config
        if "seed" in config:  # Grid.trials() gives each trial a seed from seeds:, so this one would do nothing
            problems[(_origin("seed", sources), f"the seed is set per trial from the grid's top-level seeds:, so "
                                                f"seed: {config['seed']!r} here would be ignored; write seeds: "
                                                f"[{config['seed']}] at the top level instead")] = None
            config.pop("seed")  # checked on without it, so the cell's other problems show too
        unknown = _unknown_key_problems(config, sources)
        problems.update(dict.fromkeys(unknown))
        own = own or bool(unknown)
        config = {k: v for k, v in config.items() if k in TrialSpec.nested_keys()}  # as the seed: checked on without
        whole = set(config)
        config, malformed = _without_malformed_components(config, sources, replaced)
        skip = frozenset(whole - set(config) - replaced)  # a replaced one is checked as the --set gives it
        config, refused = _without_refused_values(config, sources, labels)
        problems.update(dict.fromkeys([*refused, *malformed]))  # the components' problems together, as checked next
        own = own or bool(refused)
        try:
            spec = grid_spec = _cell_spec(path, config, sources, labels)
            if overrides:  # components are checked as overridden: --set dataset.root=X may supply files the grid lacks
                spec, refused = _overridden_each(spec, overrides)
                if refused:
                    raise GridError.listing(path, [(_set_options(overrides, typed, [k]), str(err))
                                                   for k, err in refused.items()])
                sources = [*sources, *set_origins]
                spec = _cell_spec(path, spec.to_nested(), sources, labels)
        except GridError as err:  # the cell has no spec to check further
            problems.update(dict.fromkeys(err.problems))
            metrics.append((labels, None))
            continue
        found = _component_problems(spec, sources, checked, skip, set_sources, grid_spec)
        problems.update(dict.fromkeys(found))
        if skip:  # a default stands in for a malformed component: the checks of the built cell wait for its fix
            metrics.append((labels, None))
            continue
        if not found:  # the image-size check needs components that exist
            problem = input_size_problem(spec, _origin("backbone", sources), _origin("dataset", sources))
            found = [problem] if problem is not None else []
            problems.update(dict.fromkeys(found))
        dataset_ok = not any(key == _origin("dataset", sources) for key, _ in found)
        names, unreadable = _cell_metrics(spec, metrics_checked) if dataset_ok else (None, None)
        if unreadable is not None:
            problems[(_origin("dataset", sources), unreadable)] = None
        metrics.append((labels, names))
        cells.append(Cell(labels, spec))
        if not own:  # a cell checked without a refused value or key could match another only by the defaults
            built.append((labels, spec, grid_spec, [where for _, _, where in combo]))
        if not (own or found or unreadable is not None):
            clean.append(cells[-1])
    if layout.as_written:  # else the cells leave out an unknown axis's key, so that its cells read as one trial
        problems.update(dict.fromkeys(_collapse_problems(built, overrides, typed)))
    problems.update(dict.fromkeys(_metric_problems(raw, tables, metrics)))
    joined = [" / ".join(labels.values()) for labels, _ in metrics] if axes else [c.spec.label for c in cells]
    problems.update(dict.fromkeys(_header_problems(tables, {**axis_labels, "label": joined}, metrics)))
    if layout.name is None or layout.seeds is None or not layout.as_written:
        return GridCheck(path, raw, None, list(problems))
    grid = Grid(name=layout.name, path=path, cells=clean, seeds=layout.seeds, axes=axes,
                description=str(raw.get("description", "")), raw=raw)
    return GridCheck(path, raw, grid, list(problems))

