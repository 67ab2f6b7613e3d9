"""Where a config comes from: shipped configs by name, YAML files read with a loader that refuses a key
given twice, and dotted ``key=value`` overrides; :func:`load_config` joins them and validates the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bissl.config.convert import from_dict
from bissl.config.schema import Config
from bissl.config.validation import validate
from bissl.errors import ConfigError

SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG_SUFFIXES = (".yaml", ".yml")


def _parse_scalar(text: str) -> Any:
    """Parse an override value with YAML rules (so 1e-3 is a float, true a bool, [1,2] a list)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and value.lower() in ("none", "null"):
        return None
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (validated later against the dataclasses)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key=value (for example pretext.temperature=0.2)"
            )
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key part")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return data


def shipped_configs() -> dict[str, Path]:
    """The configs shipped inside the package, by name (file name without .yaml), sorted."""
    if not SHIPPED_CONFIGS.is_dir():
        return {}
    files = sorted(p for p in SHIPPED_CONFIGS.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    return {p.stem: p for p in files}


def is_config_name(text: str) -> bool:
    """A config argument without a folder and without a YAML suffix is the name of a shipped config."""
    return "/" not in text and "\\" not in text and not text.endswith(CONFIG_SUFFIXES)


def resolve_config(path_or_name: str | Path) -> Path:
    """The YAML file a ``--config`` argument means: a shipped config for a bare name (``demo``), else a path.

    A bare name that matches no shipped config but names an existing file is that file."""
    text = str(path_or_name)
    if is_config_name(text):
        shipped = shipped_configs()
        if text in shipped:
            return shipped[text]
        if Path(text).is_file():
            return Path(text)
        if not Path(text).is_dir():
            raise ConfigError(
                f"unknown config name '{text}'; shipped configs: {', '.join(shipped) or 'none'} "
                "(or give the path of a YAML file)"
            )
    file = Path(text)
    if file.is_dir():
        raise ConfigError(
            f"config '{file}' is a folder, not a YAML file; pass --config a YAML file or a shipped name "
            "('bissl configs' lists them)"
        )
    if not file.is_file():
        raise ConfigError(
            f"config file '{file}' does not exist; pass --config a YAML file or a shipped name "
            "('bissl configs' lists them)"
        )
    return file


def config_description(path: Path) -> str:
    """A config file's one-line description: the first sentence of its leading comment block."""
    lines: list[str] = []
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        text = stripped.lstrip("#").strip()
        if not text:
            if lines:
                break
            continue
        lines.append(text)
    joined = " ".join(lines)
    cut = joined.find(". ")
    return joined[: cut + 1] if cut >= 0 else joined


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping holds the same key twice (``key`` dotted from the document's top, ``line`` 1-based)."""

    def __init__(self, key: str, line: int) -> None:
        super().__init__(f"key '{key}' twice (line {line})")
        self.key = key
        self.line = line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping holding a key twice (safe_load silently keeps the last)."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicate_keys(node, "", set())
        return super().construct_document(node)


def _refuse_duplicate_keys(node: yaml.Node, prefix: str, seen_nodes: set[int]) -> None:
    """Raise DuplicateKeyError for the first scalar key repeated in a mapping of ``node``'s tree.

    Keys merged in with ``<<`` are not counted: the mapping's own keys override them, as YAML says."""
    if id(node) in seen_nodes:  # an alias of a node already walked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys: set[str] = set()
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            if isinstance(key_node, yaml.ScalarNode):
                key = f"{prefix}{key_node.value}"
                if key_node.value in keys:
                    raise DuplicateKeyError(key, key_node.start_mark.line + 1)
                keys.add(key_node.value)
                _refuse_duplicate_keys(value_node, key + ".", seen_nodes)
            else:
                _refuse_duplicate_keys(value_node, prefix, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        stem = prefix.rstrip(".")
        for index, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{stem}[{index}].", seen_nodes)


def read_config_file(file: Path) -> dict[str, Any]:
    """The nested mapping a YAML config file holds; ConfigError for anything but a readable UTF-8 mapping."""
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{file}' is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file '{file}' cannot be read ({exc.strerror or exc})") from None
    try:
        loaded = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: plain data only
    except DuplicateKeyError as exc:
        raise ConfigError(
            f"config file '{file}' has key '{exc.key}' twice (line {exc.line}); keep one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file '{file}' is not valid YAML{where}; fix the syntax") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config file '{file}' must hold a mapping of sections, not {type(loaded).__name__}"
        )
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate.

    ``path`` is a YAML file or the name of a shipped config (see :func:`resolve_config`)."""
    data = read_config_file(resolve_config(path)) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    config: Config = from_dict(Config, data)
    validate(config)
    return config
