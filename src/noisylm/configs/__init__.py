"""Config presets and config fields.

The sweep presets shipped with noisylm (TOML): `demo`, `paper-124m`, `paper-774m`. And `fields`: config
dataclass fields that carry their one-line doc and check (`setting`, `validate`), rendered into
``--help`` and the README's field tables (``python -m noisylm.configs README.md`` regenerates those).
"""

from noisylm.configs.fields import (
    Check,
    above,
    at_least,
    between,
    check_of,
    check_type,
    doc_of,
    field_table,
    format_default,
    help_text,
    one_of,
    rule,
    setting,
    update_tables,
    validate,
)

__all__ = [
    "Check",
    "setting",
    "validate",
    "at_least",
    "above",
    "between",
    "one_of",
    "rule",
    "doc_of",
    "check_of",
    "check_type",
    "format_default",
    "help_text",
    "field_table",
    "update_tables",
]
