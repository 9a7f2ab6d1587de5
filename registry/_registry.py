"""The one `Registry` class behind `LOSSES`, `BACKBONES` and `DATASETS`.

Registration is a decorator beside the code it names (timm's ``register_model``); ``create`` checks the
keyword arguments against the factory's signature before calling it, and an unknown name is an error that
lists the closest valid names and the full list (never a bare "Unknown model").

Example:
    >>> from registry import LOSSES
    >>> head = LOSSES.create("cosface", embedding_dim=2, num_classes=10, s=10.0, m=0.1)
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from registry._suggest import did_you_mean, natural_key

__all__ = ["Registry", "RegistryError", "Entry", "Family"]


class RegistryError(ValueError):
    """A name or a keyword argument that the registry cannot resolve; the message says how to fix it.

    Attributes:
        problems: from `Registry.check`, each ``(key, message)`` of the component, one per line of the message: the
            parameter a problem is about (``"s"``), or ``""`` for the component as a whole (unknown, missing or
            bound parameters, listed together, and its ``validate``); empty otherwise.
    """

    def __init__(self, *args: object, problems: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(*args)
        self.problems = list(problems)

    @classmethod
    def listing(cls, problems: Sequence[tuple[str, str]]) -> RegistryError:
        """One error for all of ``problems`` (non-empty), a line per message; one problem reads as its message."""
        return cls("\n".join(message for _, message in problems), problems=problems)


@dataclass(frozen=True)
class Entry:
    """One registered factory.

    Attributes:
        name: the registered name (``"cosface"``).
        factory: the callable ``create`` calls.
        fixed: keyword arguments the registry passes itself (``embedding_dim`` for a loss), not the user.
        defaults: keyword arguments bound at registration, e.g. ``sphere20a`` is ``sphereface`` with
            ``depth=20``; the user may not override them.
        validate: optional ``validate(params) -> None`` that checks values (paths present, ranges) without
            building anything; raises ``ValueError`` with the fix.
        summary: first line of the factory's docstring.
    """

    name: str
    factory: Callable[..., Any]
    fixed: tuple[str, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict)
    validate: Callable[[dict[str, Any]], None] | None = None
    summary: str = ""

    def parameters(self) -> dict[str, Any]:
        """The user-settable parameters and their defaults (``inspect.Parameter.empty`` when required)."""
        params: dict[str, Any] = {}
        for p in inspect.signature(self.factory).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in self.fixed or p.name in self.defaults:
                continue
            params[p.name] = p.default
        return params

    def accepts_any_kwargs(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.factory).parameters.values())


@dataclass(frozen=True)
class Family:
    """A prefix that resolves any name below it, e.g. ``timm/<model>`` answered by timm's own registry.

    Attributes:
        prefix: ``"timm/"``.
        factory: called as ``factory(rest_of_name, **kwargs)``.
        exists: ``exists(rest) -> bool``; ``known() -> list[str]`` lists the names it answers.
        validate: optional ``validate(params, rest) -> None`` for every name below the prefix, as
            `Entry.validate` with the rest of the name (``timm/`` builds ``rest`` cheaply to check its kwargs).
    """

    prefix: str
    factory: Callable[..., Any]
    exists: Callable[[str], bool]
    known: Callable[[], list[str]]
    fixed: tuple[str, ...] = ()
    summary: str = ""
    validate: Callable[[dict[str, Any], str], None] | None = None


class Registry:
    """Name -> factory, with signature-checked creation and wildcard listing.

    Args:
        kind: what the registry holds, singular ("loss"); used in error messages.
        fixed: keyword arguments every factory takes from the harness rather than from the user
            (``("embedding_dim", "num_classes")`` for losses).
        fixed_from: for some of ``fixed``, where the harness takes the value from, told to a user who sets it
            (``{"in_chans": "it follows the dataset's images ..."}``).
    """

    def __init__(self, kind: str, *, fixed: tuple[str, ...] = (), fixed_from: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.fixed = fixed
        self.fixed_from = dict(fixed_from or {})
        self._entries: dict[str, Entry] = {}
        self._families: dict[str, Family] = {}

    # registration -----------------------------------------------------------------------------
    def register(
        self,
        name: str | None = None,
        *,
        aliases: dict[str, dict[str, Any]] | None = None,
        validate: Callable[[dict[str, Any]], None] | None = None,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers a factory under ``name`` (default: the function's name).

        Args:
            name: registered name.
            aliases: more names for the same factory with some arguments bound,
                e.g. ``{"sphere20a": {"depth": 20}}``.
            validate: checks a parameter dict without building; raises ``ValueError``.
        """

        def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
            doc = inspect.getdoc(factory) or ""
            summary = doc.splitlines()[0] if doc else ""
            self._add(Entry(name or factory.__name__, factory, self.fixed, {}, validate, summary))
            for alias, bound in (aliases or {}).items():
                self._add(Entry(alias, factory, self.fixed, dict(bound), validate, summary))
            return factory

        return decorator

    def register_family(
        self,
        prefix: str,
        factory: Callable[..., Any],
        *,
        exists: Callable[[str], bool],
        known: Callable[[], list[str]],
        summary: str = "",
        validate: Callable[[dict[str, Any], str], None] | None = None,
    ) -> None:
        """Registers every name ``prefix + <rest>`` that ``exists(rest)`` accepts (``validate(params, rest)``, as in
        `register` with the rest of the name)."""
        self._families[prefix] = Family(prefix, factory, exists, known, self.fixed, summary, validate)

    def unregister(self, name: str) -> None:
        """Removes ``name`` (tests register throwaway entries and remove them again)."""
        if name not in self._entries:
            raise RegistryError(self.unknown_message(name))
        del self._entries[name]

    def _add(self, entry: Entry) -> None:
        if entry.name in self._entries and self._entries[entry.name].factory is not entry.factory:
            warnings.warn(f"{self.kind} {entry.name!r} is registered again; the new factory replaces the old",
                          stacklevel=3)
        self._entries[entry.name] = entry

    # lookup -------------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        if name in self._entries:
            return True
        family = self._family_for(name)
        return family is not None and family.exists(name[len(family.prefix):])

    def _family_for(self, name: str) -> Family | None:
        for prefix, family in self._families.items():
            if name.startswith(prefix):
                return family
        return None

    def names(self, pattern: str = "*", *, include_families: bool = False) -> list[str]:
        """Registered names matching a shell wildcard, in natural sort order.

        Args:
            pattern: ``fnmatch`` pattern, e.g. ``"*face"``.
            include_families: also list the names that families answer (``timm/...``); can be thousands.
        """
        names = set(self._entries)
        if include_families:
            for family in self._families.values():
                names.update(family.prefix + rest for rest in family.known())
        return sorted((n for n in names if fnmatch.fnmatch(n, pattern)), key=natural_key)

    def families(self) -> list[Family]:
        return list(self._families.values())

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; raises `RegistryError` listing the closest names when unknown."""
        if name in self._entries:
            return self._entries[name]
        family = self._family_for(name)
        if family is not None:
            rest = name[len(family.prefix):]
            if family.exists(rest):
                validate = (None if family.validate is None
                            else functools.partial(_validate_family, family.validate, rest))
                return Entry(name, _bind_family(family, rest), self.fixed, {}, validate, family.summary)
            hint = did_you_mean(rest, family.known(), n=3, prefix=family.prefix)
            raise RegistryError(f"Unknown {self.kind} {name!r}: {family.prefix!r} does not know {rest!r}.{hint}")
        raise RegistryError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        candidates = list(self._entries) + [f.prefix + "<name>" for f in self._families.values()]
        hint = did_you_mean(str(name), self._entries, n=3, cutoff=0.5)
        return f"Unknown {self.kind} {name!r}.{hint} Available: {', '.join(sorted(candidates, key=natural_key))}."

    def parameters(self, name: str) -> dict[str, Any]:
        """User-settable parameters of ``name`` with their defaults."""
        return self.entry(name).parameters()

    def check(self, name: str, params: dict[str, Any], *, provided: tuple[str, ...] = ()) -> None:
        """Checks ``params`` against the factory of ``name`` without building anything.

        Args:
            name: registered name.
            params: user keyword arguments.
            provided: fixed arguments the caller will supply (they do not count as missing).

        Raises:
            RegistryError: unknown name, or every independent problem of the parameters at once (its
                ``problems``): bound, unknown and missing ones, and each value of the wrong kind; only when there
                are none, a value the entry's ``validate`` rejects.
        """
        entry = self.entry(name)
        problems = self._bound_problems(entry, params)
        if not entry.accepts_any_kwargs():
            settable = entry.parameters()
            problems += self._unknown_problems(entry, params, settable)
            problems += self._missing_problems(entry, params, settable)
            problems += self._type_problems(entry, params, settable)
        if problems:
            raise RegistryError.listing(problems)
        if entry.validate is not None:  # only now: its rules across parameters would see the values refused above
            try:
                entry.validate({**entry.defaults, **params})
            except (ValueError, FileNotFoundError) as err:
                raise RegistryError.listing([("", f"{self.kind} {name!r}: {err}")]) from err

    def _bound_problems(self, entry: Entry, params: dict[str, Any]) -> list[tuple[str, str]]:
        """The parameters an alias binds (``sphere20a``'s ``depth``), which the user may not set; one problem."""
        bound = [k for k in params if k in entry.defaults]
        if not bound:
            return []
        return [("", f"{self.kind} {entry.name!r} fixes {', '.join(f'{k}={entry.defaults[k]!r}' for k in bound)};"
                     f" drop {', '.join(map(repr, bound))} or use the base name.")]

    def _unknown_problems(self, entry: Entry, params: dict[str, Any],
                          settable: dict[str, Any]) -> list[tuple[str, str]]:
        """The parameters the factory does not take (bound ones aside), with close names; one problem."""
        unknown = [k for k in params if k not in settable and k not in entry.defaults]
        if not unknown:
            return []
        msgs = []
        for key in unknown:
            if key in self.fixed_from:
                msgs.append(f"{key!r} ({self.fixed_from[key]})")
                continue
            msgs.append(f"{key!r}{did_you_mean(key, settable, cutoff=0.5, aside=True)}")
        valid = ", ".join(f"{k}={_show(v)}" for k, v in settable.items()) or "none"
        return [("", f"{self.kind} {entry.name!r} has no parameter {', '.join(msgs)}. Its parameters: {valid}.")]

    def _missing_problems(self, entry: Entry, params: dict[str, Any],
                          settable: dict[str, Any]) -> list[tuple[str, str]]:
        """The required parameters not given; one problem."""
        missing = [k for k, v in settable.items() if v is inspect.Parameter.empty and k not in params]
        if not missing:
            return []
        return [("", f"{self.kind} {entry.name!r} needs {', '.join(map(repr, missing))}; none was given.")]

    def _type_problems(self, entry: Entry, params: dict[str, Any],
                       settable: dict[str, Any]) -> list[tuple[str, str]]:
        """A problem at each parameter whose value is not of its default's kind (`_wrong_type`)."""
        problems = []
        for key, value in params.items():
            wrong = _wrong_type(value, settable[key]) if key in settable else None
            if wrong:
                problems.append((key, f"{self.kind} {entry.name!r}: {key} must be {wrong}, but got {value!r} "
                                      f"(default {_show(settable[key])})"))
        return problems

    def create(self, name: str, /, **kwargs: Any) -> Any:
        """Builds ``name`` with ``kwargs``; ``None`` values are dropped so that CLI defaults never override
        the factory's own defaults.

        Raises:
            RegistryError: as `check`.
        """
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        user = {k: v for k, v in kwargs.items() if k not in self.fixed}
        self.check(name, user)
        entry = self.entry(name)
        return entry.factory(**entry.defaults, **kwargs)


def _validate_family(validate: Callable[[dict[str, Any], str], None], rest: str, params: dict[str, Any]) -> None:
    validate(params, rest)


def _bind_family(family: Family, rest: str) -> Callable[..., Any]:
    def factory(**kwargs: Any) -> Any:
        return family.factory(rest, **kwargs)

    factory.__signature__ = _family_signature(family)  # type: ignore[attr-defined]
    return factory


def _family_signature(family: Family) -> inspect.Signature:
    sig = inspect.signature(family.factory)
    params = list(sig.parameters.values())[1:]  # drop the model name
    return sig.replace(parameters=params)


def _wrong_type(value: Any, default: Any) -> str | None:
    """What ``value`` should be, judged by the factory's ``default``, or None when it fits (or the default says
    nothing): a number where the default is a number (finite where the default is), true/false where it is a
    bool. So ``s: abc`` or ``m: .nan`` is named here, not found as a TypeError inside the factory."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, (int, float)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return "a number"
        if math.isfinite(default) and not math.isfinite(value):
            return "a finite number"
    return None


def _show(value: Any) -> str:
    return "<required>" if value is inspect.Parameter.empty else repr(value)
