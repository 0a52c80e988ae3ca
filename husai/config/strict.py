"""The base of every config section: unknown fields refused, floats finite, numbers strict."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


class Strict(BaseModel):
    """Every config section: unknown fields refused, floats finite (inf and nan are refused,
    never discovered mid-training), integers strict (`k: true` is not k = 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, v: Any, info: ValidationInfo) -> Any:
        # YAML's true/false would otherwise pass as 1/0 for an int or float field.
        if isinstance(v, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if annotation in NUMBER_TYPES:
                raise ValueError(f"expected a number, got {str(v).lower()}")
        return v


NUMBER_TYPES = (int, float, int | None, float | None)
