"""`TrialSpec`: everything one trial depends on, frozen, and its round trip to flat MLflow params.

A trial is a pure function of its spec: same spec, same numbers (on the same device). The flat form is
what MLflow stores as params and what ``search:`` ranges address::

    {"dataset": "mnist", "dataset.root": "data/mnist", "loss": "cosface", "loss.s": 10.0, "loss.m": 0.1,
     "optimizer": "adam", "optimizer.lr": 0.001, "epochs": 20, "seed": 0, ...}

Components (dataset, backbone, loss, optimizer, scheduler) have a name and a params dict; in YAML each is
written ``loss: cosface`` or ``loss: {name: cosface, s: 10, m: 0.1}``. ``center_loss`` is a params dict
(``{weight: 0.01, alpha: 0.5}``), empty when off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from bench import yamlio

__all__ = ["TrialSpec", "COMPONENTS", "PRECISIONS", "OPTIMIZERS", "SCHEDULERS", "SpecError", "parse_param"]

#: Keys whose YAML value is a name or ``{name: ..., **params}``.
COMPONENTS = ("dataset", "backbone", "loss", "optimizer", "scheduler")
#: Keys whose YAML value is a params mapping without a name.
PARAM_GROUPS = ("center_loss",)
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZERS = {"adam": ("lr", "weight_decay", "betas"), "adamw": ("lr", "weight_decay", "betas"),
              "sgd": ("lr", "momentum", "weight_decay", "nesterov")}
SCHEDULERS = {"none": (), "step": ("step_size", "gamma"), "multistep": ("milestones", "gamma"),
              "cosine": ("eta_min",)}
CENTER_LOSS_KEYS = ("weight", "alpha")


class SpecError(ValueError):
    """A spec value that cannot be right; the message names the key and the valid choices.

    Attributes:
        key: the nested trial key at fault (``"optimizer"``, ``"epoch"``), when known.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_number(group: str, key: str, value: Any, *, low: float, strict: bool, high: float | None = None,
                  integer: bool = False) -> None:
    """``value`` is a finite number (an int when ``integer``) > ``low`` (>= unless ``strict``), < ``high``."""
    ok = (_is_number(value) and (not integer or isinstance(value, int))
          and (value > low if strict else value >= low) and (high is None or value < high))
    if not ok:
        kind = "an integer" if integer else "a number"
        bound = f"{'>' if strict else '>='} {low:g}" + (f" and < {high:g}" if high is not None else "")
        raise SpecError(f"{group}.{key} must be {kind} {bound}, but got {value!r}", key=group)


@dataclass(frozen=True)
class TrialSpec:
    """One trial's full configuration (one grid cell and one seed).

    Attributes:
        dataset, dataset_params: registered dataset and its keyword arguments.
        backbone, backbone_params: registered backbone and its keyword arguments.
        loss, loss_params: registered margin head and its keyword arguments.
        embedding_dim: feature size the backbone emits and the head takes.
        optimizer, optimizer_params: ``adam``/``adamw``/``sgd`` with ``lr``, ``momentum``, ``weight_decay``;
            one parameter group: ``weight_decay`` reaches every backbone and head parameter (BatchNorm,
            biases, PReLU slopes and the head's class weights included), never the center-loss centres.
        scheduler, scheduler_params: learning-rate schedule stepped once per epoch (``step``: step_size,
            gamma; ``multistep``: milestones in epochs, gamma; ``cosine``: eta_min).
        center_loss: ``{"weight": lambda, "alpha": a}`` adds CenterLoss; empty dict: off.
        epochs, batch_size: training length and minibatch size (a backbone with BatchNorm skips a final
            training batch of one sample, which BatchNorm cannot normalize).
        grad_clip: max gradient L2 norm, None for no clipping.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast for the backbone (heads always run in fp32).
        channels_last, compile: memory format and ``torch.compile`` of the backbone.
        eval_batch_size: batch size for evaluation passes.
        seed: the seed every random generator is set from.
        labels: the grid cell's label per axis (``{"loss": "CosFace_v1"}``), logged as tags, not params.
    """

    dataset: str = "digits"
    dataset_params: Mapping[str, Any] = field(default_factory=dict)
    backbone: str = "lenet++"
    backbone_params: Mapping[str, Any] = field(default_factory=dict)
    loss: str = "softmax"
    loss_params: Mapping[str, Any] = field(default_factory=dict)
    embedding_dim: int = 2
    optimizer: str = "adam"
    optimizer_params: Mapping[str, Any] = field(default_factory=lambda: {"lr": 1e-3})
    scheduler: str = "none"
    scheduler_params: Mapping[str, Any] = field(default_factory=dict)
    center_loss: Mapping[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    grad_clip: float | None = None
    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False
    eval_batch_size: int = 1024
    seed: int = 0
    labels: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise SpecError(f"precision must be one of {', '.join(PRECISIONS)}, but got {self.precision!r}",
                            key="precision")
        if self.optimizer not in OPTIMIZERS:
            raise SpecError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, but got {self.optimizer!r}",
                            key="optimizer")
        unknown = set(self.optimizer_params) - set(OPTIMIZERS[self.optimizer])
        if unknown:
            raise SpecError(f"optimizer {self.optimizer!r} takes {', '.join(OPTIMIZERS[self.optimizer])}, "
                            f"not {', '.join(sorted(unknown))}", key="optimizer")
        if "lr" not in self.optimizer_params:
            raise SpecError("optimizer.lr must be > 0, but got None", key="optimizer")
        self._check_optimizer_params()
        if self.scheduler not in SCHEDULERS:
            raise SpecError(f"scheduler must be one of {', '.join(SCHEDULERS)}, but got {self.scheduler!r}",
                            key="scheduler")
        unknown = set(self.scheduler_params) - set(SCHEDULERS[self.scheduler])
        if unknown:
            raise SpecError(f"scheduler {self.scheduler!r} takes {', '.join(SCHEDULERS[self.scheduler]) or 'nothing'}, "
                            f"not {', '.join(sorted(unknown))}", key="scheduler")
        self._check_scheduler_params()
        unknown = set(self.center_loss) - set(CENTER_LOSS_KEYS)
        if unknown:
            raise SpecError(f"center_loss takes {', '.join(CENTER_LOSS_KEYS)}, not {', '.join(sorted(unknown))}",
                            key="center_loss")
        if "weight" in self.center_loss:
            _check_number("center_loss", "weight", self.center_loss["weight"], low=0, strict=False)
        if "alpha" in self.center_loss:
            alpha = self.center_loss["alpha"]
            if not (_is_number(alpha) and 0 <= alpha <= 1):
                raise SpecError(f"center_loss.alpha must be a number in [0, 1], but got {alpha!r}", key="center_loss")
        for key in ("epochs", "batch_size", "embedding_dim", "eval_batch_size"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{key} must be a positive integer, but got {value!r}", key=key)
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and self.grad_clip > 0):
            raise SpecError(f"grad_clip must be a number > 0 or null, but got {self.grad_clip!r}", key="grad_clip")
        for key in ("channels_last", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise SpecError(f"{key} must be true or false, but got {getattr(self, key)!r}", key=key)

    def _check_optimizer_params(self) -> None:
        p = self.optimizer_params
        _check_number("optimizer", "lr", p["lr"], low=0, strict=True)
        for key in ("weight_decay", "momentum"):
            if key in p:
                _check_number("optimizer", key, p[key], low=0, strict=False)
        if "betas" in p:
            betas = p["betas"]
            if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                    and all(_is_number(b) and 0 <= b < 1 for b in betas)):
                raise SpecError(f"optimizer.betas must be two numbers in [0, 1) like [0.9, 0.999], but got {betas!r}",
                                key="optimizer")
        if "nesterov" in p and not isinstance(p["nesterov"], bool):
            raise SpecError(f"optimizer.nesterov must be true or false, but got {p['nesterov']!r}", key="optimizer")

    def _check_scheduler_params(self) -> None:
        p = self.scheduler_params
        if "step_size" in p:
            _check_number("scheduler", "step_size", p["step_size"], low=1, strict=False, integer=True)
        if "gamma" in p:
            _check_number("scheduler", "gamma", p["gamma"], low=0, strict=True)
        if "eta_min" in p:
            _check_number("scheduler", "eta_min", p["eta_min"], low=0, strict=False)
        if "milestones" in p:
            ms = p["milestones"]
            if not (isinstance(ms, (list, tuple)) and ms and all(isinstance(m, int) and not isinstance(m, bool)
                                                                 and m >= 0 for m in ms)):
                raise SpecError(f"scheduler.milestones must be a non-empty list of epochs (integers >= 0) like "
                                f"[10, 15], but got {ms!r}", key="scheduler")

    # flat form ------------------------------------------------------------------------------------
    def to_params(self) -> dict[str, Any]:
        """Flat ``{key: scalar}`` dict (MLflow params); nested params become ``component.key``."""
        flat: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "labels":
                continue
            value = getattr(self, f.name)
            if f.name.endswith("_params"):
                component = f.name[: -len("_params")]
                flat.update({f"{component}.{k}": _scalar(v) for k, v in sorted(value.items())})
            elif f.name in PARAM_GROUPS:
                flat.update({f"{f.name}.{k}": _scalar(v) for k, v in sorted(value.items())})
            else:
                flat[f.name] = value
        return flat

    @classmethod
    def from_params(cls, params: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> TrialSpec:
        """Inverse of `to_params`; string values (as MLflow returns them) are parsed as YAML scalars."""
        kwargs: dict[str, Any] = {}
        groups: dict[str, dict[str, Any]] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        for key, raw in params.items():
            value = parse_param(raw)
            if "." in key:
                head, sub = key.split(".", 1)
                group = head if head in PARAM_GROUPS else f"{head}_params"
                if group not in names:
                    raise SpecError(f"unknown parameter {key!r}: {head!r} is not a component"
                                    f"{_did_you_mean(head, list(COMPONENTS + PARAM_GROUPS))} "
                                    f"(components: {', '.join(COMPONENTS + PARAM_GROUPS)})")
                groups.setdefault(group, {})[sub] = value
            elif key in names and key != "labels" and not key.endswith("_params"):
                kwargs[key] = value
            else:
                raise SpecError(f"unknown parameter {key!r}{_did_you_mean(key, cls.nested_keys())}; "
                                f"valid: {', '.join(sorted(cls.flat_keys(settable=True)))}")
        for group in [f"{c}_params" for c in COMPONENTS] + list(PARAM_GROUPS):
            if group in groups or group in kwargs:
                kwargs[group] = groups.get(group, {})
        return cls(**kwargs, labels=dict(labels or {}))

    @classmethod
    def from_nested(cls, config: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> TrialSpec:
        """Builds a spec from the YAML form (components as names or ``{name: ..., **params}``).

        Raises:
            SpecError: an unknown key (with the valid ones) or a malformed component.
        """
        kwargs: dict[str, Any] = {}
        valid = cls.nested_keys()
        for key, value in config.items():
            if key in COMPONENTS:
                name, params = split_component(key, value)
                kwargs[key] = name
                kwargs[f"{key}_params"] = params
            elif key in PARAM_GROUPS:
                if value is None:
                    value = {}
                if not isinstance(value, Mapping):
                    raise SpecError(f"{key} must be a mapping like {{weight: 0.01, alpha: 0.5}}, but got {value!r}",
                                    key=key)
                kwargs[key] = dict(value)
            elif key in valid:
                kwargs[key] = value
            else:
                raise cls.unknown_key_error(key)
        return cls(**kwargs, labels=dict(labels or {}))

    @classmethod
    def unknown_key_error(cls, key: Any) -> SpecError:
        """The error for a ``key`` of the YAML form that is not a trial key: the close one and the valid ones."""
        return SpecError(f"unknown trial key {key!r}.{_did_you_mean(str(key), cls.nested_keys(), aside=False)} Valid "
                         f"keys: {', '.join(cls.nested_keys(settable=True))}", key=key)

    def to_nested(self) -> dict[str, Any]:
        """The YAML form (inverse of `from_nested`)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name == "labels" or f.name.endswith("_params"):
                continue
            value = getattr(self, f.name)
            if f.name in COMPONENTS:
                out[f.name] = {"name": value, **dict(getattr(self, f"{f.name}_params"))}
            elif f.name in PARAM_GROUPS:
                out[f.name] = dict(value)
            else:
                out[f.name] = value
        return out

    @classmethod
    def nested_keys(cls, *, settable: bool = False) -> list[str]:
        """The spec's top-level keys; ``settable=True`` leaves out ``seed``, which a grid sets from ``seeds:``."""
        return [f.name for f in dataclasses.fields(cls)
                if f.name != "labels" and not f.name.endswith("_params") and not (settable and f.name == "seed")]

    @classmethod
    def flat_keys(cls, *, settable: bool = False) -> list[str]:
        return cls.nested_keys(settable=settable) + [f"{c}.<param>" for c in COMPONENTS + PARAM_GROUPS]

    def replace(self, **changes: Any) -> TrialSpec:
        return dataclasses.replace(self, **changes)

    def with_flat(self, updates: Mapping[str, Any]) -> TrialSpec:
        """A copy with flat keys (``"loss.m"``, ``"epochs"``) overridden, as a sampler proposes them."""
        params = self.to_params()
        params.update(updates)
        return TrialSpec.from_params(params, self.labels)

    def key(self) -> str:
        """Stable short hash of the flat params: the identity of a trial across runs and resumptions."""
        blob = json.dumps(self.to_params(), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """All cell labels joined, e.g. ``"CosFace_v1 / dim=2"``; the loss name when there are none."""
        return " / ".join(self.labels.values()) if self.labels else self.loss


def _did_you_mean(key: str, valid: list[str], *, aside: bool = True) -> str:
    """`registry._suggest.did_you_mean`: `` (did you mean 'epochs'?)`` (``aside=False``: `` Did you mean 'epochs'?``)
    for a close key, else ``""``."""
    # imported here, on the error path: importing registry registers its torch-backed entries, and bench.spec (with
    # reports, which imports it) loads without torch
    from registry._suggest import did_you_mean

    return did_you_mean(key, valid, aside=aside)


def split_component(key: str, value: Any) -> tuple[str, dict[str, Any]]:
    """``"cosface"`` or ``{"name": "cosface", "s": 10}`` -> ``("cosface", {"s": 10})``."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, Mapping):
        if "name" not in value:
            raise SpecError(f"{key} needs a 'name', e.g. {key}: {{name: ..., ...}}; got keys {sorted(value)}", key=key)
        params = {k: v for k, v in value.items() if k != "name"}
        return str(value["name"]), params
    raise SpecError(f"{key} must be a name or a mapping with 'name', but got {value!r}", key=key)


def _scalar(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return json.dumps(list(value))
    return value


def parse_param(raw: Any) -> Any:
    """A flat param's value as MLflow keeps it (text) read back as `TrialSpec.to_params` wrote it: YAML
    scalars and lists, ``"None"`` as None, a mapping from its JSON (as `bench.tracking` logs one); other text
    that reads as a mapping (``{root}``) stays text; a value that is not text is returned as it is."""
    if not isinstance(raw, str):
        return raw
    if raw == "None":
        return None
    try:
        value = yamlio.load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, dict):
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return value
