"""Command-line flags built from the contract's models: a flag's name, type, choices, default and help all come
from a model field, so the CLI cannot drift from the API. A nested model's fields become `--parent-child` flags
(`--budget-tokens`, `--lora-r`), a list a comma-separated value, a mapping `KEY=VALUE,KEY=VALUE`; only a flag's
name may be given here instead (`renames`), and fields the command takes another way are skipped."""

import argparse
import types
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined


@dataclass(frozen=True)
class FieldFlag:
    """One flag: where its value goes in the model's input (`path`) and the argparse dest it is read from."""

    path: tuple[str, ...]
    dest: str


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    *,
    skip: Collection[str] = (),
    renames: Mapping[str, str] | None = None,
    helps: Mapping[str, str] | None = None,
    prefix: tuple[str, ...] = (),
) -> list[FieldFlag]:
    """Add a flag for each field of `model` (dotted paths in `skip` are left out; `renames` maps a dotted path to
    a flag name without the dashes; `helps` replaces a field's help) and return what `model_input` reads back."""
    renames, helps = renames or {}, helps or {}
    flags = []
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        dotted = ".".join(path)
        if dotted in skip:
            continue
        annotation = _unwrap_optional(field.annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            flags += add_model_flags(parser, annotation, skip=skip, renames=renames, helps=helps, prefix=path)
            continue
        public = [field.alias or name if k == len(path) - 1 else p for k, p in enumerate(path)]
        flag = "--" + renames.get(dotted, "-".join(p.rstrip("_").replace("_", "-") for p in public))
        dest = "__".join(path)
        parser.add_argument(flag, dest=dest, default=None, help=_help(helps.get(dotted), field), **_kind(annotation))
        flags.append(FieldFlag(path, dest))
    return flags


def model_input(args: argparse.Namespace, flags: list[FieldFlag]) -> dict[str, Any]:
    """The flags that were given, nested as the model takes them: the model supplies every default."""
    values: dict[str, Any] = {}
    for flag in flags:
        value = getattr(args, flag.dest)
        if value is None:
            continue
        *parents, leaf = flag.path
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return values


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _kind(annotation: Any) -> dict[str, Any]:
    """argparse's type, choices and metavar for a field's annotation."""
    if get_origin(annotation) is list:
        (item,) = get_args(annotation)
        choices = get_args(item) if get_origin(item) is Literal else None
        return {"type": _comma_list(_scalar(item), choices), "metavar": "X[,X]" if not choices else ",".join(choices)}
    if get_origin(annotation) is Literal:
        values = get_args(annotation)
        return {"type": type(values[0]), "choices": values}
    if get_origin(annotation) is dict:
        _, value = get_args(annotation)
        return {"type": _mapping(_scalar(value)), "metavar": "KEY=X[,KEY=X]"}
    return {"type": _scalar(annotation), "metavar": _scalar(annotation).__name__.upper()}


def _scalar(annotation: Any) -> Callable[[str], Any]:
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return type(get_args(annotation)[0])
    if annotation in (int, float, bool):
        return typing.cast(Callable[[str], Any], annotation)
    return str


def _comma_list(item: Callable[[str], Any], choices: tuple[Any, ...] | None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        values = [item(v.strip()) for v in text.split(",") if v.strip()]
        unknown = [v for v in values if choices and v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"{', '.join(map(str, unknown))}: not one of {', '.join(choices or ())}")
        return values

    return parse


def _mapping(value: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    def parse(text: str) -> dict[str, Any]:
        pairs = [item.rpartition("=") for item in text.split(",") if item.strip()]
        if any(not key.strip() for key, _, _ in pairs):
            raise argparse.ArgumentTypeError(f"{text}: give KEY=VALUE pairs, comma-separated")
        try:
            return {key.strip(): value(v.strip()) for key, _, v in pairs}
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{text}: {e}") from None

    return parse


def _help(given: str | None, field: FieldInfo) -> str:
    text = given or field.description or ""
    default = field.get_default(call_default_factory=True)
    if default not in (PydanticUndefined, None, {}) and not isinstance(default, BaseModel):
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")
