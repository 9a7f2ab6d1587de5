"""``timm/<model>``: any timm model as a backbone, its classifier replaced by an ``embedding_dim`` head.

timm's own registry answers which names exist (``timm.is_model``); the model is built with
``num_classes=embedding_dim`` and the requested ``in_chans``, from scratch: ``pretrained`` is off by default
and, when on, timm fetches the weights itself (which fails offline with timm's own message).

Example:
    >>> from registry import BACKBONES
    >>> net = BACKBONES.create("timm/mobilenetv3_small_100", embedding_dim=128, in_chans=3)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from registry import BACKBONES

__all__ = ["timm_backbone", "GRID_MODELS", "fixed_input_size"]

#: The timm models the shipped grids name (tested on every run).
GRID_MODELS = ("mobilenetv3_small_100", "mobilenetv3_large_100", "efficientnet_b0")


def timm_backbone(model_name: str, embedding_dim: int, in_chans: int, drop_rate: float = 0.0,
                  drop_path_rate: float | None = None, pretrained: bool = False,
                  kwargs: dict[str, Any] | None = None) -> nn.Module:
    """A timm model with ``num_classes=embedding_dim`` (its pooled features through a new linear layer).

    Args:
        model_name: timm's name, e.g. ``mobilenetv3_small_100``.
        embedding_dim: output feature size.
        in_chans: input channels.
        drop_rate: dropout before the last layer.
        drop_path_rate: stochastic depth rate (timm's default when None).
        pretrained: load timm's pretrained weights (needs network or a local cache); off by default.
        kwargs: any other keyword argument of ``timm.create_model`` for this model.

    Raises:
        ValueError: ``kwargs`` sets one of the arguments above.
    """
    import timm

    extra = dict(kwargs or {})
    _check_clash(model_name, extra)
    if drop_path_rate is not None:
        extra["drop_path_rate"] = drop_path_rate
    return timm.create_model(model_name, pretrained=pretrained, num_classes=embedding_dim, in_chans=in_chans,
                             drop_rate=drop_rate, **extra)


_SET_HERE = ("num_classes", "in_chans", "drop_rate", "drop_path_rate", "pretrained")


#: Where each of `_SET_HERE` is set instead of in ``kwargs`` (in_chans and num_classes are no backbone parameters).
_SET_INSTEAD = {"num_classes": "num_classes is the trial's embedding_dim: set embedding_dim (a top-level trial key) "
                               "instead", "in_chans": BACKBONES.fixed_from["in_chans"]}


def _check_clash(model_name: str, extra: Mapping[str, Any]) -> None:
    clash = [k for k in _SET_HERE if k in extra]
    if clash:
        fixes = [_SET_INSTEAD.get(k, f"set {k} as a backbone parameter ({{name: timm/{model_name}, {k}: ...}})")
                 for k in clash]
        raise ValueError(f"timm/{model_name}: kwargs may not set {', '.join(clash)}, which the harness passes "
                         f"to timm itself: {'; '.join(fixes)}")


def _check_builds(model_name: str, extra: dict[str, Any]) -> None:
    """Builds the model on the meta device (no memory, no weights: tens of milliseconds) with ``extra``, so a
    keyword the model does not take, or one its variant sets itself, is named now and not in the first trial.
    Only a keyword error is reported; anything else is left to the trial, where the model is built for real."""
    import inspect

    import timm
    import torch

    try:
        with torch.device("meta"):
            timm.create_model(model_name, pretrained=False, num_classes=2, **extra)
    except TypeError as err:
        if "keyword argument" not in str(err):
            return
        with torch.device("meta"):
            cls = type(timm.create_model(model_name, pretrained=False))
        own = [p.name for p in inspect.signature(cls.__init__).parameters.values()
               if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in _SET_HERE]
        builder = [p for p in inspect.signature(timm.create_model).parameters if p not in ("model_name", "pretrained",
                                                                                           "kwargs")]
        given = [k if k == "drop_path_rate" else f"kwargs.{k}" for k in extra]
        raise ValueError(f"timm/{model_name} cannot be built with {', '.join(given)}: timm says {err}. Valid kwargs "
                         f"keys: {', '.join(own)} ({cls.__name__}'s; the variant {model_name} may set some itself), "
                         f"and timm.create_model's {', '.join(builder)}") from None


def _validate(params: dict[str, Any], model_name: str) -> None:
    """Dropout rates in [0, 1) and ``kwargs`` a mapping that timm takes, checked before building: timm takes
    any rate and fails only in the first training step (``drop_path_rate: 2`` as a negative Bernoulli
    probability), and an unknown keyword failed the first trial's build."""
    for key in ("drop_rate", "drop_path_rate"):
        rate = params.get(key)
        if rate is not None and not (isinstance(rate, (int, float)) and not isinstance(rate, bool) and 0 <= rate < 1):
            raise ValueError(f"{key} must be a number in [0, 1), but got {key}={rate!r}")
    extra = params.get("kwargs")
    if extra is not None and not isinstance(extra, Mapping):
        raise ValueError(f"kwargs must be a mapping of timm.create_model keyword arguments, but got kwargs={extra!r}")
    extra = dict(extra or {})
    _check_clash(model_name, extra)
    if params.get("drop_path_rate") is not None:
        extra["drop_path_rate"] = params["drop_path_rate"]
    if extra:
        _check_builds(model_name, extra)


def fixed_input_size(model_name: str, kwargs: Mapping[str, Any] | None = None) -> tuple[int, int] | None:
    """The one (H, W) a timm model takes, or None when it takes any size.

    Models that pool globally (MobileNet, EfficientNet, ResNet) take any size; transformers and MLP-mixers
    whose pretrained config says ``fixed_input_size`` (ViT, DeiT, Swin, Mixer, LeViT) take only their
    ``img_size`` (``kwargs.img_size``, else the config's, 224x224 for most) and fail in the first forward
    otherwise ("Input height (28) doesn't match model (224)"). ``kwargs.dynamic_img_size`` lifts that: None.
    """
    from timm.models import get_pretrained_cfg

    kwargs = kwargs or {}
    if kwargs.get("dynamic_img_size"):
        return None
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or not cfg.fixed_input_size:
        return None
    size = kwargs.get("img_size", tuple(cfg.input_size[-2:]))
    if isinstance(size, int) and not isinstance(size, bool):
        return (size, size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(v, int) for v in size):
        return (int(size[0]), int(size[1]))
    return None  # a value timm itself will judge when the model is built


def _exists(name: str) -> bool:
    import timm

    return timm.is_model(name)


def _known() -> list[str]:
    import timm

    return timm.list_models()


BACKBONES.register_family("timm/", timm_backbone, exists=_exists, known=_known, validate=_validate,
                          summary="any timm model, built with num_classes=embedding_dim and in_chans (no weights "
                                  "downloaded unless pretrained: true)")
