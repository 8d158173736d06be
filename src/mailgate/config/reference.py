"""The configuration reference (docs/configuration.md), generated from the model's fields."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mailgate.config.model import Config


def _default(field: FieldInfo) -> str:
    if field.default_factory is not None:
        if field.description and "Default:" in field.description:
            return "see description"
        value: Any = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Enum):
        value = value.value
    return f"`{json.dumps(value)}`"


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("mailgate.config.model.", "")


def _section(model: type[BaseModel], path: str, out: list[str]) -> None:
    doc = (model.__doc__ or "").strip()
    out += [f"## `{path}`" if path else "## (top level)", "", doc, ""]
    out += ["| setting | default | meaning |", "| --- | --- | --- |"]
    nested: list[tuple[type[BaseModel], str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{path}.{name}" if path else name
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((annotation, key))
            out.append(f"| `{key}` | (section) | {field.description} |")
            continue
        args = getattr(annotation, "__args__", ())
        item = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if item is not None:
            nested.append((item, f"{key}[]" if "list" in str(annotation) else key))
        description = (field.description or "").replace("|", "\\|")
        out.append(f"| `{key}` | {_default(field)} | {description} |")
    out.append("")
    for sub, sub_path in nested:
        _section(sub, sub_path, out)


def render() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from `src/mailgate/config/model.py` by `mailgate config reference`; do not",
        "edit by hand. Change settings with `mailgate domain ...`, `mailgate settings ...` or",
        "`mailgate config import FILE`; every change is validated as a whole and applied to the",
        "running gateway without a restart.",
        "",
    ]
    _section(Config, "", out)
    return "\n".join(out).rstrip() + "\n"
