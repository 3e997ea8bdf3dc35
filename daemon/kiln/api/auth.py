"""Bearer tokens for the invoke API (``[daemon] auth = "token"``).

A token is ``kiln_<id>_<secret>``: ``id`` (8 hex digits) names the entry, the
secret is 32 random bytes (URL-safe base64). Only an HMAC-SHA256 of the secret,
keyed with a per-token random salt, is stored (``state_dir/tokens.json``, mode
0600); the token itself is shown once, when created. A slow password KDF buys
nothing here: the secret has 256 bits of entropy, so there is nothing to
brute-force, and a check costs a microsecond instead of tens of milliseconds
on every call. Digests are compared with :func:`hmac.compare_digest`
(constant time).

A token is scoped to some functions or to all of them. What a request gets:
no or malformed ``Authorization`` → 401 with ``WWW-Authenticate: Bearer``;
an unknown or revoked token → 401; a token without that function → 403.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("kiln.auth")

TOKEN_RE = re.compile(r"^kiln_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
NAME_RE = re.compile(r"^[A-Za-z0-9_.@:-]{1,64}$")


class Verdict(enum.Enum):
    OK = "ok"
    MISSING = "missing"  # 401: no bearer token
    INVALID = "invalid"  # 401: unknown, revoked or malformed
    FORBIDDEN = "forbidden"  # 403: a good token, but not for this function


@dataclass(frozen=True)
class TokenEntry:
    id: str
    name: str
    functions: tuple[str, ...] | None  # None: every function
    salt: str
    digest: str
    created: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "functions": list(self.functions) if self.functions is not None else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "functions": list(self.functions) if self.functions is not None else None,
            "salt": self.salt,
            "hmac_sha256": self.digest,
            "created": self.created,
        }

    @staticmethod
    def from_json(raw: Any) -> TokenEntry:
        fns = raw["functions"]
        if fns is not None and not (isinstance(fns, list) and all(isinstance(f, str) for f in fns)):
            raise ValueError("functions must be a list of names or null")
        entry = TokenEntry(
            id=str(raw["id"]),
            name=str(raw["name"]),
            functions=tuple(fns) if fns is not None else None,
            salt=str(raw["salt"]),
            digest=str(raw["hmac_sha256"]),
            created=float(raw["created"]),
        )
        bytes.fromhex(entry.salt)
        bytes.fromhex(entry.digest)
        return entry


def digest(salt: str, secret: str) -> str:
    return hmac.new(bytes.fromhex(salt), secret.encode(), hashlib.sha256).hexdigest()


def bearer(authorization: bytes | None) -> str | None:
    """The token of an ``Authorization: Bearer …`` header, else None."""
    if not authorization:
        return None
    scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class TokenError(ValueError):
    pass


class Tokens:
    """The token table, persisted at ``path`` (atomically, mode 0600)."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[str, TokenEntry] = {}
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            log.error(
                "cannot read tokens from %s: %s; no token is valid until it is fixed", self.path, e
            )
            return
        for item in raw.get("tokens", []) if isinstance(raw, dict) else []:
            try:
                entry = TokenEntry.from_json(item)
            except (KeyError, TypeError, ValueError) as e:
                log.error("%s: skipping a bad token entry: %s", self.path, e)
                continue
            self._entries[entry.id] = entry

    def _save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps({"tokens": [e.to_json() for e in self._entries.values()]}, indent=2)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)

    def create(self, name: str | None, functions: list[str] | None) -> tuple[str, TokenEntry]:
        """A new token: (the token — shown once, never stored —, its entry)."""
        name = name or f"token-{len(self._entries) + 1}"
        if not NAME_RE.match(name):
            raise TokenError(f"token name {name!r}: use 1-64 of A-Z a-z 0-9 _ . @ : -")
        if any(e.name == name for e in self._entries.values()):
            raise TokenError(f"a token named {name!r} exists already")
        if functions is not None and not functions:
            raise TokenError("give at least one function, or none for all functions")
        token_id = secrets.token_hex(4)
        while token_id in self._entries:
            token_id = secrets.token_hex(4)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        entry = TokenEntry(
            token_id,
            name,
            tuple(sorted(set(functions))) if functions is not None else None,
            salt,
            digest(salt, secret),
            time.time(),
        )
        self._entries[token_id] = entry
        self._save()
        return f"kiln_{token_id}_{secret}", entry

    def remove(self, key: str) -> TokenEntry:
        """Revoke by id or name."""
        for entry in list(self._entries.values()):
            if key in (entry.id, entry.name):
                del self._entries[entry.id]
                self._save()
                return entry
        raise KeyError(key)

    def list(self) -> list[TokenEntry]:
        return sorted(self._entries.values(), key=lambda e: e.created)

    def check(self, token: str | None, function: str | None) -> Verdict:
        """May ``token`` call ``function`` (None: any endpoint a token opens, like /metrics)?"""
        if token is None:
            return Verdict.MISSING
        m = TOKEN_RE.match(token)
        entry = self._entries.get(m.group(1)) if m else None
        if entry is None or m is None:
            # Same work as a real check, so timing says nothing about the id.
            hmac.compare_digest(digest("00" * 16, token), "0" * 64)
            return Verdict.INVALID
        if not hmac.compare_digest(digest(entry.salt, m.group(2)), entry.digest):
            return Verdict.INVALID
        if function is not None and entry.functions is not None and function not in entry.functions:
            return Verdict.FORBIDDEN
        return Verdict.OK

    def __len__(self) -> int:
        return len(self._entries)


def tokens_path(state_dir: str) -> Path:
    return Path(state_dir) / "tokens.json"
