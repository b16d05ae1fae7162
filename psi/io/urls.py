"""Database URLs: recognise them, mask their passwords, and add a password from a safe place.

A password never belongs on a command line (``ps`` shows it to every user of the machine, and
shells keep it in their history). psiq takes it, in this order, from ``--db-password-file``
(first line), the ``PSIQ_DB_PASSWORD`` environment variable, or the driver's own mechanism
(``PGPASSFILE`` / ``~/.pgpass`` for PostgreSQL, ``option_files`` for MySQL...). The CLI refuses
a URL that carries a password itself. Every URL psiq prints goes through :func:`mask_url`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError, UsageError

__all__ = ["is_database_url", "mask_url", "resolve_url", "sqlalchemy", "PASSWORD_ENV"]

PASSWORD_ENV = "PSIQ_DB_PASSWORD"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+._-]*://")
_NOT_DATABASES = ("file", "http", "https", "s3", "gs")
_PASSWORD_IN_TEXT = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")


def is_database_url(value: Any) -> bool:
    """True for ``dialect[+driver]://...`` strings (``sqlite:///f.db``, ``postgresql://u@h/db``)."""
    if not isinstance(value, str) or not _URL.match(value):
        return False
    return value.split(":", 1)[0].split("+", 1)[0].lower() not in _NOT_DATABASES


def sqlalchemy() -> Any:
    """The sqlalchemy module, or an error naming the extra to install."""
    try:
        import sqlalchemy as sa
    except ImportError:
        raise UsageError("database input/output needs SQLAlchemy 2: pip install 'psiq[sql]' "
                         "plus the driver's extra (postgresql, mysql, oracle, duckdb, hive)") from None
    if int(sa.__version__.split(".")[0]) < 2:
        raise UsageError(f"database input/output needs SQLAlchemy 2 (found {sa.__version__}): pip install 'psiq[sql]'")
    return sa


def mask_url(url: Any) -> str:
    """The URL as text with any password replaced by ``***`` (for messages, logs and --json)."""
    if not isinstance(url, str):
        return url.render_as_string(hide_password=True)
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - unparseable or no SQLAlchemy: mask by pattern
        return _PASSWORD_IN_TEXT.sub(r"\1***@", url)


def resolve_url(text: str, *, password_file: str | os.PathLike[str] | None = None,
                allow_password_in_url: bool = False) -> Any:
    """Parse ``text`` into a SQLAlchemy ``URL`` and add the password from ``password_file`` or
    ``PSIQ_DB_PASSWORD`` (else the driver finds its own). A password inside ``text`` is refused
    unless ``allow_password_in_url`` (the Python API: the URL is not on a command line there)."""
    sa = sqlalchemy()
    try:
        url = sa.engine.make_url(text)
    except Exception:  # noqa: BLE001 - ArgumentError, ValueError
        raise UsageError(f"not a database URL: {mask_url(text)}") from None
    if url.password is not None and not allow_password_in_url:
        raise UsageError(f"{mask_url(url)}: the URL contains a password, which other users can read in ps and shell "
                         f"history; remove it and use {PASSWORD_ENV}, --db-password-file or the driver's "
                         "password file (e.g. ~/.pgpass)")
    password = None
    if password_file is not None:
        path = Path(password_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise InputError(f"{path}: cannot read the password file ({err.strerror or err})") from None
        password = lines[0] if lines else ""
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    if password is not None and url.password is None:
        url = url.set(password=password)
    return url
