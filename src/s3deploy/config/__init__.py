"""config.ini → frozen dataclasses, with every problem reported by file, section and key.

Every section of config.ini is an environment (a deployment group); ``[DEFAULT]`` values are inherited
by every section, as configparser does. Interpolation is off, so a ``%`` in a value is just a ``%``.
The loader collects all problems in the file and raises one :class:`ConfigError` listing them, one
per line, so an operator fixes the file in one pass.

Modules: ``model`` (``Config``, ``Section``, overrides), ``keys`` (the table of keys), ``values`` (one
parser per kind of value), ``loader`` (finding and reading the file).

Decisions where the product spec is silent (documented here and in examples/config.ini):

- An empty value (``profile_name =``) means "not set": the key's default applies, and in a section
  it also cancels a value inherited from ``[DEFAULT]``. For a required key it is an error.
- ``s3_bucket`` accepts ``[A-Za-z0-9._-]{1,255}``: wider than AWS's 3-63 lowercase rule because legacy
  buckets and S3-compatible stores allow uppercase and underscores; spaces and slashes are refused.
- ``poll_interval`` and ``deployment_timeout`` are seconds, optionally with a unit: ``500ms``, ``30s``,
  ``5m``, ``1h``; at most a year.
- ``keep_revisions``, ``keep_history`` and ``max_files`` are whole numbers from 1 to 10⁹.
- ``max_unpacked_bytes`` is a whole number of bytes, or a number with K/M/G/T, optionally followed by
  ``B`` or ``iB``; the prefixes are binary (``1G`` = ``1GiB`` = 1073741824) whatever the spelling.
- ``last_fetch_time`` is the seed's ``2023-07-30 19:41:09+0000`` or ISO 8601; a time without an offset
  is UTC. It is stored as an aware UTC datetime (so it must stay within the years 1-9999 in UTC).
- ``installation_in_progress`` is legacy: read and ignored (per-section locks replace it).
- Section names become folder and lock-file names, so they are letters, digits, ``.``, ``_``, ``-``
  and spaces, starting with a letter or digit, at most 100 characters.
- No value may hold a control character; messages show what was written with control characters
  escaped (``\\x1b``), cut when long.
- Inline comments are not supported (a ``#`` inside a value is part of it, as configparser does);
  a failing value that looks like it has one gets a hint.
"""

from s3deploy.config.loader import ENV_VAR, SYSTEM_CONFIG_PATH, find_config_path, load_config
from s3deploy.config.model import DEFAULT_SECTION, Config, Section

__all__ = [
    "DEFAULT_SECTION",
    "ENV_VAR",
    "SYSTEM_CONFIG_PATH",
    "Config",
    "Section",
    "find_config_path",
    "load_config",
]
