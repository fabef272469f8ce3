"""API keys, roles and signed upload tokens.

- Keys look like ``pk_live_<43 url-safe chars>``; only their sha256 is stored, with a short
  prefix (``pk_live_AbCd``) to recognize them in listings. A key is never logged.
- Roles are ordered ``viewer < member < admin < owner``.
- Upload tokens are ``<payload>.<signature>``: the payload (base64url JSON) names the dataset
  id, folder, filename, content type, expiry and a random nonce (which makes each URL one of
  a kind, so that its register can spend it); the signature is HMAC-SHA256 under a
  per-server secret kept in ``DIR/upload.secret`` (0600). Tampered or expired tokens → 403.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from pictofs.model import ROLES
from pictofs.server.failures import ApiFailure, forbidden

KEY_PREFIX = "pk_live_"
UPLOAD_TTL_SECONDS = 15 * 60
READ_TTL_SECONDS = 5 * 60  # a signed storage URL for an image's bytes (hosted profile)
SECRET_FILE = "upload.secret"


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def key_prefix(key: str) -> str:
    """What may be shown of a key: the scheme and four characters."""
    return key[: len(KEY_PREFIX) + 4]


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    return role


def role_at_least(role: str, minimum: str) -> bool:
    return ROLES.index(role) >= ROLES.index(minimum)


def require_role(role: str, minimum: str) -> None:
    if not role_at_least(role, minimum):
        raise forbidden(f"this operation needs the {minimum} role or higher; the key is {role}",
                        required_role=minimum, role=role)


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class UploadGrant:
    """What a signed upload URL allows: the PUT of one path with one content type, until
    it expires or its upload is registered (``nonce`` names the URL)."""

    dataset_id: str
    directory_path: str
    filename: str
    content_type: str
    expires_at: int
    nonce: str


class UploadSigner:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("upload secret too short")
        self._secret = secret

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> UploadSigner:
        """Load ``DIR/upload.secret``, creating it (0600) on first use."""
        path = data_dir / SECRET_FILE
        try:
            return cls(path.read_bytes())
        except FileNotFoundError:
            pass
        secret = secrets.token_bytes(32)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # first writer wins if two processes race
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return cls(path.read_bytes())

    def grant(self, dataset_id: str, directory_path: str, filename: str, content_type: str,
              ttl: int = UPLOAD_TTL_SECONDS, now: float | None = None) -> UploadGrant:
        expires = int((time.time() if now is None else now) + ttl)
        return UploadGrant(dataset_id, directory_path, filename, content_type, expires,
                           secrets.token_urlsafe(12))

    def mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()

    def sign(self, grant: UploadGrant) -> str:
        payload = json.dumps([grant.dataset_id, grant.directory_path, grant.filename,
                              grant.content_type, grant.expires_at, grant.nonce],
                             separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        mac = hmac.new(self._secret, payload, hashlib.sha256).digest()
        return _b64encode(payload) + "." + _b64encode(mac)

    def verify(self, token: str, now: float | None = None) -> UploadGrant:
        """The grant a token carries; 403 if it is malformed, tampered with or expired."""
        try:
            payload_text, mac_text = token.split(".")
            payload = _b64decode(payload_text)
            mac = _b64decode(mac_text)
        except (ValueError, binascii.Error):
            raise forbidden("malformed upload token", reason="malformed") from None
        expected = hmac.new(self._secret, payload, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise forbidden("upload token signature does not match", reason="bad_signature")
        try:
            dataset_id, directory, filename, content_type, expires, nonce = json.loads(payload)
            grant = UploadGrant(str(dataset_id), str(directory), str(filename),
                                str(content_type), int(expires), str(nonce))
        except (ValueError, TypeError):
            raise forbidden("malformed upload token", reason="malformed") from None
        if grant.expires_at < (time.time() if now is None else now):
            raise ApiFailure(403, "forbidden", "upload URL expired", {"reason": "expired"})
        return grant


@dataclass(frozen=True)
class ReadGrant:
    """What a signed storage URL for reading lets its holder fetch: one blob, until then."""

    blob: str
    content_type: str
    expires_at: int


def sign_read(signer: UploadSigner, blob: str, content_type: str,
              ttl: int = READ_TTL_SECONDS, now: float | None = None) -> str:
    """A token for reading one blob (the hosted profile's redirect for image bytes). Its
    payload starts with ``"read"``, so it is never taken for an upload token (which has six
    fields) nor the other way round."""
    expires = int((time.time() if now is None else now) + ttl)
    payload = json.dumps(["read", blob, content_type, expires],
                         separators=(",", ":")).encode("utf-8")
    return _b64encode(payload) + "." + _b64encode(signer.mac(payload))


def verify_read(signer: UploadSigner, token: str, now: float | None = None) -> ReadGrant:
    """The grant of a read token; 403 if it is malformed, tampered with or expired."""
    try:
        payload_text, mac_text = token.split(".")
        payload = _b64decode(payload_text)
        mac = _b64decode(mac_text)
    except (ValueError, binascii.Error):
        raise forbidden("malformed storage token", reason="malformed") from None
    if not hmac.compare_digest(mac, signer.mac(payload)):
        raise forbidden("storage token signature does not match", reason="bad_signature")
    try:
        purpose, blob, content_type, expires = json.loads(payload)
        if purpose != "read":
            raise ValueError(purpose)
        grant = ReadGrant(str(blob), str(content_type), int(expires))
    except (ValueError, TypeError):
        raise forbidden("malformed storage token", reason="malformed") from None
    if grant.expires_at < (time.time() if now is None else now):
        raise ApiFailure(403, "forbidden", "storage URL expired", {"reason": "expired"})
    return grant

