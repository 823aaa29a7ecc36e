"""Storage URLs without their secrets: one masked form for everything shown or stored, scrubbed error text.

A storage password lives only in memory: config files, ``config.json``, study attributes, exports,
reports, ``--json`` output and error messages carry the masked URL.

    >>> mask_url("postgresql+psycopg://nas:hunter22@db.example:5432/nas")
    'postgresql+psycopg://nas:***@db.example:5432/nas'
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, quote_plus

STORAGE_ENV = "NAS_STORAGE"  # the storage URL when --storage is not given: keeps it out of the command line
MASK = "***"
_SECRETS: set[str] = set()  # passwords this process has seen, scrubbed from any text it prints
# scheme://user:password@ (the password may hold unencoded '@': mask up to the last one)
_URL_PASSWORD = re.compile(r"([A-Za-z][\w+.-]*://[^\s/:@'\"]*:)[^\s'\"]*@")


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (unchanged when it has none).

        >>> mask_url("sqlite:///runs/demo/study.db")
        'sqlite:///runs/demo/study.db'
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        masked = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError, TypeError):
        masked = str(url)
    return _URL_PASSWORD.sub(rf"\1{MASK}@", masked)


def url_password(url: str) -> str | None:
    """The (decoded) password of ``url``, or None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).password
    except (ArgumentError, ValueError, TypeError):
        return None


def is_masked(url: str) -> bool:
    """True for a URL whose password was replaced by ``***`` (as stored in a run directory)."""
    return url_password(url) == MASK


def same_database(first: str, second: str) -> bool:
    """Both URLs name the same database (backend, user, host, port, name), whatever their passwords and drivers."""
    from sqlalchemy.engine import make_url

    a, b = make_url(first), make_url(second)
    return (a.get_backend_name(), a.username, a.host, a.port, a.database) == \
        (b.get_backend_name(), b.username, b.host, b.port, b.database)


def remember_secret(url: str | None) -> None:
    """Note the password of ``url`` so that :func:`scrub` removes it from any text we print."""
    password = url_password(url) if url else None
    if password and password != MASK and len(password) >= 4:  # shorter ones would garble ordinary text
        _SECRETS.update({password, quote(password, safe=""), quote_plus(password)})


def scrub(text: str) -> str:
    """``text`` with every known password and every ``scheme://user:password@`` masked.

        >>> scrub("cannot open postgresql://nas:hunter22@db/nas")
        'cannot open postgresql://nas:***@db/nas'
    """
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return _URL_PASSWORD.sub(rf"\1{MASK}@", text)


def storage_option(flag: str | None) -> str | None:
    """``--storage`` when given, else the ``NAS_STORAGE`` environment variable, else None."""
    url = flag or os.environ.get(STORAGE_ENV) or None
    remember_secret(url)
    return url


def owner_only_files() -> None:
    """From now on this process (and the Ray instance it starts) creates files readable by the owner only."""
    os.umask(0o077)


def private_dir(path: os.PathLike[str] | str) -> None:
    """Create ``path`` (0700: a run directory holds the study and its records) and make later files owner-only."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # also an existing directory, and whatever the umask was
    owner_only_files()


def local_ray_environment(env: dict[str, str] | os._Environ) -> None:
    """Settings for a Ray instance the sweep starts itself: loopback only, and a fresh token unless the user chose.

    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes Ray take 127.0.0.1 as the node address (what it does on
    macOS): every Ray server of the instance then listens on 127.0.0.1 only (tests/test_team.py checks it).
    ``RAY_AUTH_MODE=token`` with a random ``RAY_AUTH_TOKEN`` closes it to other local users, without
    Ray's warning or a ``~/.ray/auth_token`` file; an explicit ``RAY_AUTH_MODE`` is respected.
    """
    import secrets

    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "RAY_AUTH_MODE" not in env:
        env["RAY_AUTH_MODE"] = "token"
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
