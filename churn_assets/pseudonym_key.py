"""The key of the e-mail pseudonyms: every installation has its own, none is public.

``CHURN_PSEUDONYM_KEY`` when set; otherwise a random key created once per data root in
``$CHURN_HOME/secrets/pseudonym.key``, readable by its owner only (0600). Whoever holds
the key and a list of e-mails can recompute the pseudonyms, so it is a secret; whoever
loses it gets new pseudonyms for the same customers (see the README).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

ENV = "CHURN_PSEUDONYM_KEY"
# 32 characters: 128 bits if hex, the least a keyed hash is given here. Generated keys
# are 64 hex characters (256 bits).
MIN_LENGTH = 32


class PseudonymKeyError(ValueError):
    """A key that must not be used; the message is one line that says what to do."""


def key_path(home: Path) -> Path:
    return home / "secrets" / "pseudonym.key"


def check_key(key: str, source: str) -> str:
    key = key.strip()
    if len(key) < MIN_LENGTH:
        raise PseudonymKeyError(
            f"{source} is {len(key)} characters; the e-mail pseudonym key needs at least {MIN_LENGTH} "
            f"(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


def _read_private(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise PseudonymKeyError(f"{path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`")
    return check_key(path.read_text(encoding="ascii"), str(path))


def _create(path: Path) -> None:
    """Write a new random key, readable by the owner only, or leave the one a concurrent
    process wrote first: the key appears whole or not at all (written aside, then linked)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails if another process created the key first: theirs wins
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def pseudonym_key(home: Path, configured: str | None = None) -> str:
    """The key to use: ``configured`` (the value of ``CHURN_PSEUDONYM_KEY``) when given,
    else the data root's key file, created on first use. Raises ``PseudonymKeyError``."""
    if configured:
        return check_key(configured, ENV)
    path = key_path(home)
    if not path.exists():
        _create(path)
    return _read_private(path)
