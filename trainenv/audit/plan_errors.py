"""Plan errors a person can act on: pydantic validation errors and YAML errors as one line per
problem, naming the field as the plan writes it and what is allowed there."""

from __future__ import annotations

import difflib
import re
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def plan_errors(
    error: ValidationError,
    data: Any,
    root: type[BaseModel],
    shorthand_fields: tuple[str, ...] = (),
    source: str = "plan",
) -> str:
    """``error`` (from validating ``data`` as a ``root`` model, an audit plan) as one line per
    problem,
    each naming the field as the plan writes it (``interventions[0].duration``) and, for an
    unknown or missing field, the allowed fields.

    Pydantic's documentation links are left out, and so are follow-on errors: an error at a
    field whose part already failed (an intervention with a typo also leaves the
    ``interventions`` tuple empty) and a missing field that a misspelt one was meant to be.
    """
    shorthand = isinstance(data, dict) and "env" in data and "recipes" not in data
    allowed_at = _Fields(root, shorthand_fields)
    problems = error.errors(include_url=False)
    locs = [tuple(p["loc"]) for p in problems]
    meant = {
        (*loc[:-1], _close(allowed_at(loc[:-1]), str(loc[-1])))
        for p, loc in zip(problems, locs, strict=True)
        if p["type"] == "extra_forbidden"
    }
    lines = []
    for p, loc in zip(problems, locs, strict=True):
        if any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue  # the deeper error is the cause
        if p["type"] == "missing" and loc in meant:
            continue
        field = _field_path(loc[2:] if shorthand and loc[:2] == ("recipes", 0) else loc)
        problem = _problem(p, loc, allowed_at)
        lines.append(f"{field}: {problem}" if field else problem)
    if len(lines) == 1:
        return f"{source}: {lines[0]}"
    return f"{source}: {len(lines)} problems\n" + "\n".join(f"  {line}" for line in lines)


def _problem(problem: Any, loc: tuple[Any, ...], allowed_at: _Fields) -> str:
    kind, message = problem["type"], str(problem["msg"]).removeprefix("Value error, ")
    allowed = ", ".join(allowed_at(loc[:-1] if loc else ()))
    if kind == "extra_forbidden":
        close = _close(allowed_at(loc[:-1]), str(loc[-1]))
        hint = f" (did you mean {close!r}?)" if close else ""
        return f"unknown field{hint}; allowed fields: {allowed}"
    if kind == "missing":
        return f"required field missing (fields: {allowed})"
    if kind == "model_type":
        got = type(problem["input"]).__name__
        return f"must be a mapping of fields ({', '.join(allowed_at(loc))}), got a {got}"
    if kind == "value_error":
        return message
    return f"{message}, got {problem['input']!r}"


class _Fields:
    """The fields of the model at a pydantic error location inside a ``root`` document (the
    root also takes its ``shorthand`` fields)."""

    def __init__(self, root: type[BaseModel], shorthand: tuple[str, ...]) -> None:
        self.root, self.shorthand = root, shorthand

    def __call__(self, loc: tuple[Any, ...]) -> list[str]:
        model = self.root
        for part in loc:
            if isinstance(part, str) and part in model.model_fields:
                model = _item_model(model.model_fields[part].annotation) or model
        extra = self.shorthand if model is self.root else ()
        return [*model.model_fields, *extra]


def _item_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if (found := _item_model(arg)) is not None:
            return found
    return None


def _close(allowed: list[str], name: str) -> str | None:
    return next(iter(difflib.get_close_matches(name, allowed, n=1)), None)


def _field_path(loc: tuple[Any, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def yaml_problem(error: Exception) -> str:
    """``:line:column: what is wrong`` for a YAML error (a tag says it is refused)."""
    import yaml

    mark = getattr(error, "problem_mark", None)
    where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    problem = str(getattr(error, "problem", None) or error)
    tag = re.search(r"constructor for the tag '([^']*)'", problem)
    if isinstance(error, yaml.constructor.ConstructorError) and tag:
        name = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return f"{where}: tag {name} refused: a plan is plain YAML data (no tags)"
    context = getattr(error, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")
