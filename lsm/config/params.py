"""Per-family hyper-parameters from a YAML file (``lsm fit --params``).

The file maps a family name to constructor parameters of that family's
estimator, for example::

    xgb: {max_depth: 4, learning_rate: 0.05, n_estimators: 400}
    rf:  {min_samples_leaf: 5}
    mlp: {hidden_layer_sizes: [64, 32], dropout: 0.2}

Names are checked against each family's constructor (an unknown family or
parameter is a one-line :class:`~lsm.errors.SpecError` naming the key), and
values against its type hints and its parameter constraints
(:meth:`lsm.models.base.LsmClassifier.param_problem`: scikit-learn's for the
forest and the logistic regression), before anything is fitted.  ``random_state``
and ``device`` are left to ``--seed`` and ``--device``.  A folder is read as an
``lsm tune`` run: its ``best_params.yaml``.

Example
-------
>>> load_params("runs/tune-hongkong-xgb")          # doctest: +SKIP
{'xgb': {'n_estimators': 420, 'max_depth': 5, ...}}
"""

from __future__ import annotations

import difflib
import functools
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from lsm.errors import SpecError

#: File an ``lsm tune`` run folder keeps its best parameters in.
BEST_PARAMS = "best_params.yaml"
#: Constructor parameters set by other options, never by a parameter file.
RESERVED = {"random_state": "--seed", "device": "--device"}


@functools.cache
def _family_model(family: str) -> type[BaseModel]:
    """A pydantic model of ``family``'s constructor parameters (types from its hints)."""
    from lsm.models.base import get_family

    cls = get_family(family)
    hints = typing.get_type_hints(cls.__init__)
    defaults = cls().get_params()
    fields: dict[str, Any] = {name: (hints.get(name, Any), default)
                              for name, default in defaults.items() if name not in RESERVED}
    return create_model(f"{cls.__name__}Params",
                        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
                        **fields)


def family_param_names(family: str) -> list[str]:
    """Parameter names a parameter file may set for ``family``."""
    return list(_family_model(family).model_fields)


def validate_params(raw: Any, *, source: str) -> dict[str, dict[str, Any]]:
    """Check a ``{family: {param: value}}`` mapping; return it with values converted.

    Raises
    ------
    SpecError
        One line naming ``source`` and the key at fault: an unknown family, an
        unknown or reserved parameter, a value of the wrong type, or one the
        family's constraints refuse (``C: -1``, ``hidden_layer_sizes: [0]``, NaN).
    """
    from lsm.models.base import FAMILY_NAMES, get_family

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: expected a mapping of model family to parameters, "
                        f"got {type(raw).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for fam, params in raw.items():
        if fam not in FAMILY_NAMES:
            raise SpecError(f"{source}: {fam}: unknown model family{_close(fam, FAMILY_NAMES)}; "
                            f"choose from {', '.join(FAMILY_NAMES)}")
        if params is None:
            out[fam] = {}
            continue
        if not isinstance(params, dict):
            raise SpecError(f"{source}: {fam}: expected a mapping of parameter to value, got "
                            f"{type(params).__name__}")
        names = family_param_names(fam)
        for key in params:
            if key in RESERVED:
                raise SpecError(f"{source}: {fam}.{key}: set by {RESERVED[key]}, not in a "
                                "parameter file")
            if key not in names:
                raise SpecError(f"{source}: {fam}.{key}: unknown parameter{_close(key, names)}; "
                                f"{fam} takes {', '.join(names)}")
        try:
            model = _family_model(fam).model_validate(params)
        except ValidationError as err:
            e = err.errors()[0]
            loc = ".".join(str(p) for p in e["loc"][:1])
            raise SpecError(f"{source}: {fam}.{loc}: {e['msg']} (got {e.get('input')!r})"
                            ) from None
        out[fam] = model.model_dump(exclude_unset=True)
        # the family's own constraints (scikit-learn's for rf and lr), before any fitting
        for key, value, problem in get_family(fam).invalid_params(out[fam])[:1]:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise SpecError(f"{source}: {fam}.{key}: {shown} {problem}")
    return out


def load_params(path: str | Path) -> dict[str, dict[str, Any]]:
    """Read and validate a parameter file, or the ``best_params.yaml`` of a tune run folder."""
    from lsm.config.spec import load_yaml

    p = Path(path)
    if p.is_dir():
        if not (p / BEST_PARAMS).exists():
            raise SpecError(f"{p}: a folder without {BEST_PARAMS} (not an 'lsm tune' run, or "
                            "no trial has completed yet)")
        p = p / BEST_PARAMS
    elif not p.exists():
        raise SpecError(f"{p}: no such parameter file")
    return validate_params(load_yaml(p), source=str(p))


def hyper_params(model: Any) -> dict[str, Any]:
    """A fitted or unfitted estimator's constructor parameters, less ``random_state`` and
    ``device`` (what re-training it elsewhere with another seed or device keeps)."""
    return {k: v for k, v in model.get_params().items() if k not in RESERVED}


def dump_params(params: dict[str, dict[str, Any]]) -> str:
    """YAML text of a ``{family: {param: value}}`` mapping (tuples as lists)."""
    import yaml

    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    clean = {f: {k: plain(v) for k, v in ps.items()} for f, ps in params.items()}
    return yaml.safe_dump(clean, sort_keys=False, default_flow_style=False)


def _close(key: str, names: Any) -> str:
    near = difflib.get_close_matches(str(key), list(names), n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""
