"""Which grid file a study belongs to, so that two grids with the same ``name:`` do not share one study.

A grid's ``name:`` is its Optuna study's name (and its MLflow experiment's). Two different grid files with the
same name against the same storage would be one study: the second ``bench run`` failed the first one's waiting
trials as "no longer in the grid", added its own, and the reports mixed the two grids' runs. So ``bench run``
records, in a study user attribute (`OWNER_ATTR`), the grid file it was prepared from: its absolute path and a
hash of its parsed YAML, taken before ``--set`` and ``${VAR}`` substitution (so comments, spacing, key order,
overrides and the environment do not count). A later ``bench run`` of the same name is let through when

- its grid file is the recorded path (the file may have been edited since: that is how a grid is iterated);
- its content hash is the recorded one (the same grid, copied elsewhere);
- the recorded file no longer exists and the new one has the same file name (a checkout that moved, or the
  same repository on another machine of a shared storage);
- the study has no record (made before this check, or outside ``bench run``): the grid file is recorded now;

and refused otherwise, with a `GridError` naming both files, the study, the storage and the fix. The check reads
the storage before MLflow or the study are touched, so a refused run writes nothing. Two ``bench run`` processes
that create the same new study at the same moment are not told apart (the record follows the study's creation).

    owner = check_owner(grid, storage, shown="optuna.journal")  # raises GridError for another grid's study
    study = prepare_study(grid, config, storage, owner=owner)   # records it
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from bench import yamlio
from bench.grid import Grid, GridError

__all__ = ["OWNER_ATTR", "grid_file_record", "check_owner", "record_owner"]

#: The study user attribute: ``{"path": "/abs/sweeps/losses.yaml", "hash": "<sha256 of the parsed YAML>"}``.
OWNER_ATTR = "marginbench.grid_file"


def _canonical(value: Any) -> Any:
    """The parsed YAML in a form JSON writes the same way whatever the key order (keys as text, sorted)."""
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def grid_file_record(path: str | Path) -> dict[str, str | None]:
    """``{"path": <absolute path>, "hash": <sha256 of the parsed YAML, or None when it cannot be read>}``.

    The hash is of the file's content as parsed, before ``${VAR}`` substitution and ``--set``: two files that
    differ only in comments, spacing or key order hash the same.
    """
    path = Path(path).resolve()
    try:
        parsed = yamlio.load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {"path": str(path), "hash": None}
    blob = json.dumps(_canonical(parsed), sort_keys=True, separators=(",", ":"), default=str)
    return {"path": str(path), "hash": hashlib.sha256(blob.encode()).hexdigest()}


def check_owner(grid: Grid, storage: Any, *, shown: str) -> dict[str, str | None] | None:
    """Whether ``bench run`` may prepare ``grid`` in the study of its name in ``storage`` (an Optuna storage).

    Args:
        grid: the validated grid (its ``path`` is the grid file).
        storage: the Optuna storage.
        shown: the storage as the message names it (password hidden).

    Returns:
        The record to store with `record_owner` (this grid file), or None to keep the study's record (a copy of
        the recorded file ran, which still exists).

    Raises:
        GridError: the study was made from another grid file (different path and content, and not a moved copy).
    """
    mine = grid_file_record(grid.path)
    try:
        study_id = storage.get_study_id_from_name(grid.name)
    except KeyError:
        return mine  # a new study
    recorded = storage.get_study_user_attrs(study_id).get(OWNER_ATTR)
    if not isinstance(recorded, dict) or not recorded.get("path"):
        return mine  # made before this check: the first grid file that runs it claims it
    theirs = Path(str(recorded["path"]))
    if str(theirs) == mine["path"]:
        return mine  # the same file, maybe edited: the latest content is recorded
    gone = not theirs.exists()
    if mine["hash"] is not None and recorded.get("hash") == mine["hash"]:
        return mine if gone else None  # the same grid copied (or moved) here
    if gone and theirs.name == Path(str(mine["path"])).name:
        return mine  # a moved checkout, or the same repository on another machine
    moved = (
        f" ({theirs} no longer exists; if {grid.path} is that file moved and renamed, give it back the name "
        f"{theirs.name})"
        if gone
        else ""
    )
    raise GridError(
        grid.path,
        "name",
        f"the study {grid.name!r} in the storage {shown} belongs to another grid file, {theirs}, whose "
        f"content differs from this one's{moved}. Two grids with one name would share one Optuna study "
        f"and one MLflow experiment, and their trials would mix there and in the reports. Rename name: "
        f"in one of the two files, or use another --storage",
    )


def record_owner(study: Any, record: dict[str, str | None] | None) -> None:
    """Stores ``record`` (from `check_owner`) on the Optuna study; None leaves the study's record as it is."""
    if record is not None:
        study.set_user_attr(OWNER_ATTR, dict(record))
