"""Typed experiment configuration: dataclasses loaded from YAML with dotted ``key=value`` overrides.

Every user mistake (unknown key, wrong type, value out of range) raises ConfigError with one line that
names the key and what is allowed; every numeric field declares its allowed values in its metadata
(:class:`Range`, through ``at_least``, ``above``, ``within``, ``one_of``), checked at load time. Every field
carries a one-line attribute docstring (the string on the line below it); ``bissl config show`` prints them
beside the resolved values. Configs shipped with the package (``src/bissl/configs``) are found by name:
``--config demo`` is ``configs/demo.yaml``.

The parts: ``bounds`` (:class:`Range` and the field metadata that declares one), ``schema`` (the
dataclasses), ``convert`` (plain dicts to and from the dataclasses), ``validation`` (ranges, shapes and
cross-field rules), ``loading`` (shipped configs, YAML files, overrides, :func:`load_config`) and
``describe`` (attribute docstrings and the text of ``bissl config show``).
"""

from bissl.config.bounds import (
    COUNT,
    CROP_SCALE,
    MOMENTUM,
    NON_NEGATIVE,
    POSITIVE,
    PRETEXT_BATCH,
    PROBABILITY,
    RANGE,
    SEED,
    Range,
    above,
    at_least,
    one_of,
    within,
)
from bissl.config.convert import RENAMED_KEYS, config_from_dict, dump_yaml, to_dict, with_current_names
from bissl.config.describe import _walk_fields as _walk_fields
from bissl.config.describe import (
    attribute_docstrings,
    describe_config,
    field_descriptions,
    flatten,
    format_value,
    section_descriptions,
)
from bissl.config.loading import (
    CONFIG_SUFFIXES,
    SHIPPED_CONFIGS,
    DuplicateKeyError,
    UniqueKeyLoader,
    apply_overrides,
    config_description,
    is_config_name,
    load_config,
    read_config_file,
    resolve_config,
    shipped_configs,
)
from bissl.config.schema import (
    CHANNEL_CHOICES,
    AugmentConfig,
    BilevelConfig,
    CompareConfig,
    Config,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ImportConfig,
    LoggingConfig,
    ModelConfig,
    PretextConfig,
    PretrainConfig,
    SearchConfig,
    StudyArm,
    StudyConfig,
    WarmupConfig,
)
from bissl.config.validation import COMPARE_ARMS, ITERATIVE_SOLVERS, ranges, validate

__all__ = [
    "CHANNEL_CHOICES",
    "COMPARE_ARMS",
    "CONFIG_SUFFIXES",
    "COUNT",
    "CROP_SCALE",
    "ITERATIVE_SOLVERS",
    "MOMENTUM",
    "NON_NEGATIVE",
    "POSITIVE",
    "PRETEXT_BATCH",
    "PROBABILITY",
    "RANGE",
    "RENAMED_KEYS",
    "SEED",
    "SHIPPED_CONFIGS",
    "AugmentConfig",
    "BilevelConfig",
    "CompareConfig",
    "Config",
    "DataConfig",
    "DuplicateKeyError",
    "EvalConfig",
    "FinetuneConfig",
    "ImportConfig",
    "LoggingConfig",
    "ModelConfig",
    "PretextConfig",
    "PretrainConfig",
    "Range",
    "SearchConfig",
    "StudyArm",
    "StudyConfig",
    "UniqueKeyLoader",
    "WarmupConfig",
    "above",
    "apply_overrides",
    "at_least",
    "attribute_docstrings",
    "config_description",
    "config_from_dict",
    "describe_config",
    "dump_yaml",
    "field_descriptions",
    "flatten",
    "format_value",
    "is_config_name",
    "load_config",
    "one_of",
    "ranges",
    "read_config_file",
    "resolve_config",
    "section_descriptions",
    "shipped_configs",
    "to_dict",
    "validate",
    "with_current_names",
    "within",
]
