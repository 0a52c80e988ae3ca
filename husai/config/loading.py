"""Reading configs: YAML files and shipped presets into a validated `ExperimentConfig`; every
problem is a one-line ConfigError naming the file and the field."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from husai.config.experiment import ExperimentConfig
from husai.core.errors import ConfigError

PRESETS = ("quick", "paper")


def format_validation(source: str, err: ValidationError) -> str:
    errors = err.errors()
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field (misspelled?)"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    # Whole-model checks name their fields in the message itself.
    return f"{source}: {field + ': ' if field else ''}{msg}{more}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML keeps the last one
    silently, so `k: 8` followed by `k: 64` would train k = 64 without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    return data


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    text = resources.files("husai.config.presets").joinpath(f"{name}.yaml").read_text()
    return read_yaml(text, f"preset {name}")


def from_dict(data: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"{source}: preset: must be a preset name, got {preset!r}")
        data = deep_merge(preset_dict(preset), data)
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation(source, e)) from None


def read_yaml_file(path: Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from a file; unreadable or malformed files are one-line ConfigErrors."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: {what} is not UTF-8 text (byte {e.start})") from None
    return read_yaml(text, str(path))


def load(path: str | Path, preset: str | None = None) -> ExperimentConfig:
    """Read and validate a config file; every problem is a one-line ConfigError naming the file.
    `preset` (e.g. --preset on the command line): the file's values over that preset, unless the
    file names its own `preset:`, which wins (the file wins over the command line)."""
    data = read_yaml_file(Path(path))
    if preset is not None and "preset" not in data:
        data = {**data, "preset": preset}
    return from_dict(data, str(path))


def load_preset(name: str) -> ExperimentConfig:
    return from_dict({"preset": name}, f"preset {name}")


def resolve(config: str | Path | None, preset: str | None) -> ExperimentConfig:
    """A config file over a preset (the file's own `preset:`, or `preset`); with neither, the
    quick preset."""
    if config:
        return load(config, preset)
    return load_preset(preset or "quick")


def with_activation_source(cfg: ExperimentConfig, key: str, file: str) -> ExperimentConfig:
    """`--activation-key` / `--activations-file` applied on top of a config (validated again)."""
    if not key and not file:
        return cfg
    acts = cfg.activations.model_dump()
    acts.update({k: v for k, v in (("key", key), ("file", file)) if v})
    return from_dict({**cfg.model_dump(), "activations": acts}, "command line")
