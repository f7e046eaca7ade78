"""Tokens and keys the auth tests share: an HS256 config, an RSA and an EC key, claims
builders and the check that a verification failed as unauthenticated."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.domain.errors import HandlerError, HandlerErrorType
from registry.auth import AuthConfig, Verifier

ISSUER = "https://issuer.test"
AUDIENCE = "swarmgate"
SECRET = secrets.token_urlsafe(32)
HS = AuthConfig(mode="hs256", secret=SECRET, issuer=ISSUER, audience=AUDIENCE)

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "iat": now,
        "exp": now + 600,
        "scope": "ops:read",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hs_token(key: str | bytes = SECRET, **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="HS256")


def hand_made_token(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token built without PyJWT, so it can be one PyJWT would refuse to make."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    signature = (
        b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    )
    return signing_input + "." + b64url(signature)


async def rejected(verifier: Verifier, header: str | None) -> HandlerError:
    with pytest.raises(HandlerError) as info:
        await verifier.verify(header)
    assert info.value.type is HandlerErrorType.UNAUTHENTICATED
    return info.value
