"""The people who may log in to ``shaping web``: a users file, and the session secret.

The users file is JSON (``{"version": 1, "users": {NAME: {"role": ..., "password": ...}}}``),
readable by its owner only (mode 0600: a file anyone else can read is refused at load, with the
``chmod`` to run). Passwords are kept as argon2id hashes (argon2-cffi), never as text. The file
is re-read when it changes, so a user added or removed with ``shaping web add-user`` counts at
once, without a restart.

The secret that signs the session cookies is a random key in a file of its own (0600), made on
the first start.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from shaping.schemas.identifiers import check_id
from shaping.services.web.roles import check_role

FORMAT_VERSION = 1
MIN_PASSWORD = 8
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class UsersError(Exception):
    """The users file or the secret file cannot be used as it is (the message says why and what
    to do), or a user cannot be added as asked."""


@dataclass(frozen=True)
class User:
    """Someone who may log in, and their role (:data:`shaping.services.web.roles.ROLES`)."""

    name: str
    role: str


def _check_private(path: Path, what: str) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UsersError(
            f"{what} {path} is readable by others (mode {mode:04o}): run `chmod 600 {path}`"
        )


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` atomically, created with mode 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_user_name(name: str) -> str:
    """Returns ``name`` when it is a valid user name (the id grammar: letters, digits, ``.``,
    ``_``, ``-``); raises UsersError saying why not."""
    try:
        return check_id(name, "user name")
    except ValueError as exc:
        raise UsersError(str(exc)) from exc


class UsersFile:
    """The users file at ``path``; read again whenever it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._users: dict[str, dict[str, Any]] = {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._users = None, {}
            return self._users
        seen = (info.st_mtime_ns, info.st_size)
        if seen == self._seen:
            return self._users
        _check_private(self.path, "the users file")
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if data.get("version") != FORMAT_VERSION or not isinstance(data.get("users"), dict):
                raise ValueError(f"expected version {FORMAT_VERSION} and a users object")
            users = {str(k): dict(v) for k, v in data["users"].items()}
        except (ValueError, AttributeError, TypeError) as exc:
            raise UsersError(f"the users file {self.path} is not readable: {exc}") from exc
        self._seen, self._users = seen, users
        return users

    def check(self) -> int:
        """The number of users; raises UsersError when the file cannot be used."""
        return len(self._load())

    def get(self, name: str) -> User | None:
        """The user called ``name`` (None: no such user)."""
        entry = self._load().get(name)
        if entry is None:
            return None
        return User(name, str(entry.get("role")))

    def authenticate(self, name: str, password: str) -> User | None:
        """The user when ``password`` is theirs, else None (the time taken is about the same
        for an unknown name, so it does not tell which names exist)."""
        entry = self._load().get(name)
        stored = str(entry.get("password")) if entry is not None else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if entry is None:
            return None
        return User(name, str(entry.get("role")))

    def put(self, name: str, role: str, password: str) -> bool:
        """Adds the user, or changes their role and password; True when the user is new.

        Raises:
            UsersError: a bad name, an unknown role, a password shorter than
                :data:`MIN_PASSWORD`, or an unreadable file.
        """
        check_user_name(name)
        try:
            check_role(role)
        except ValueError as exc:
            raise UsersError(str(exc)) from exc
        if len(password) < MIN_PASSWORD:
            raise UsersError(f"the password must have at least {MIN_PASSWORD} characters")
        users = dict(self._load())
        new = name not in users
        users[name] = {"role": role, "password": _HASHER.hash(password)}
        text = json.dumps({"version": FORMAT_VERSION, "users": users}, indent=2, sort_keys=True)
        _write_private(self.path, text + "\n")
        return new

    def first_manager(self, name: str) -> Path | None:
        """When nobody may log in yet, makes ``name`` a lab manager with a new random password,
        written to a 0600 file beside the users file (``<name>.initial-password``), and returns
        that file; None when there are users already (the file is left alone).

        A service started unattended (the local stack, a container) can then be logged into
        without a password on any command line; the manager changes it with ``shaping web
        add-user`` and deletes the file.
        """
        if self.check() > 0:
            return None
        password = secrets.token_urlsafe(18)
        file = self.path.with_name(f"{check_user_name(name)}.initial-password")
        _write_private(file, password + "\n")
        self.put(name, "manager", password)
        return file


def session_secret(path: Path) -> str:
    """The key that signs the session cookies, from ``path`` (made with a new random key and
    mode 0600 when absent).

    Raises:
        UsersError: the file is readable by others, or too short to be a key.
    """
    if not path.exists():
        _write_private(path, secrets.token_hex(32) + "\n")
    _check_private(path, "the session secret")
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < 32:
        raise UsersError(f"the session secret {path} is too short: delete it to make a new one")
    return key
