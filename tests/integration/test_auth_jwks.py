"""JWT bearer auth with keys from a JWKS served by a real loopback server (RFC 8725 rules)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import BaseTestServer, TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from registry.auth import AuthConfig, Verifier
from tests.tokens import (
    AUDIENCE,
    EC_KEY,
    ISSUER,
    RSA_KEY,
    RSA_PUBLIC_PEM,
    claims,
    hand_made_token,
    rejected,
)

# -- JWKS -------------------------------------------------------------------------------------


def public_jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    else:
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    assert isinstance(jwk, dict)
    return {**jwk, "kid": kid, "use": "sig", "alg": alg}


@dataclass
class Idp:
    """A loopback identity provider serving a JWKS and counting fetches."""

    server: BaseTestServer
    keys: list[dict[str, Any]]
    fetches: int = 0
    failing: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def jwks_url(self) -> str:
        return str(self.server.make_url("/.well-known/jwks.json"))

    def config(self, **overrides: Any) -> AuthConfig:
        kwargs: dict[str, Any] = {
            "mode": "jwks",
            "jwks_url": self.jwks_url,
            "issuer": ISSUER,
            "audience": AUDIENCE,
            **overrides,
        }
        return AuthConfig(**kwargs)


@pytest.fixture
async def idp() -> AsyncIterator[Idp]:
    state: list[Idp] = []

    async def jwks(request: web.Request) -> web.Response:
        me = state[0]
        me.fetches += 1
        if me.failing:
            return web.Response(status=503)
        return web.json_response({"keys": me.keys})

    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", jwks)
    async with TestServer(app, host="127.0.0.1") as server:
        state.append(
            Idp(server=server, keys=[public_jwk(RSA_KEY, "rsa-1"), public_jwk(EC_KEY, "ec-1")])
        )
        yield state[0]


def signed(key: Any, alg: str, kid: str | None, **overrides: Any) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers=headers)


async def test_jwks_tokens_signed_with_the_rsa_key_and_the_ec_key_are_both_accepted(
    idp: Idp,
) -> None:
    verifier = Verifier(idp.config())
    rsa_principal = await verifier.verify(f"Bearer {signed(RSA_KEY, 'RS256', 'rsa-1', sub='r')}")
    ec_principal = await verifier.verify(f"Bearer {signed(EC_KEY, 'ES256', 'ec-1', sub='e')}")
    assert (rsa_principal.sub, ec_principal.sub) == ("r", "e")
    assert rsa_principal.scopes == {"ops:read"}
    assert idp.fetches == 1  # one fetch served both


async def test_an_rs256_verifier_rejects_an_hs256_token_signed_with_its_public_key_pem(
    idp: Idp,
) -> None:
    verifier = Verifier(idp.config(algorithms=("RS256",)))
    forged = hand_made_token(
        {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}, claims(scope="admin"), key=RSA_PUBLIC_PEM
    )
    e = await rejected(verifier, f"Bearer {forged}")
    assert "algorithm" in e.message


async def test_a_token_whose_alg_does_not_match_its_keys_type_is_rejected(idp: Idp) -> None:
    verifier = Verifier(idp.config())
    token = signed(EC_KEY, "ES256", "rsa-1")  # claims the RSA key's kid
    e = await rejected(verifier, f"Bearer {token}")
    assert "algorithm" in e.message


async def test_jwks_tokens_need_a_kid_and_a_valid_signature(idp: Idp) -> None:
    verifier = Verifier(idp.config())
    await rejected(verifier, f"Bearer {signed(RSA_KEY, 'RS256', None)}")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    e = await rejected(verifier, f"Bearer {signed(other, 'RS256', 'rsa-1')}")
    assert e.message == "bad token signature"


async def test_unknown_kid_spam_does_not_refetch_within_the_rate_limit(idp: Idp) -> None:
    verifier = Verifier(idp.config(jwks_min_refetch_s=60))
    await verifier.verify(f"Bearer {signed(RSA_KEY, 'RS256', 'rsa-1')}")
    assert idp.fetches == 1
    spam = [signed(RSA_KEY, "RS256", uuid.uuid4().hex) for _ in range(50)]
    for token in spam[:25]:
        e = await rejected(verifier, f"Bearer {token}")
        assert e.message == "unknown signing key"
    await asyncio.gather(*(rejected(verifier, f"Bearer {t}") for t in spam[25:]))
    assert idp.fetches == 1
    assert verifier.jwks_fetches == 1


async def test_a_rotated_in_key_is_picked_up_once_the_rate_limit_allows(idp: Idp) -> None:
    verifier = Verifier(idp.config(jwks_min_refetch_s=0.3))
    await verifier.verify(f"Bearer {signed(EC_KEY, 'ES256', 'ec-1')}")
    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    idp.keys.append(public_jwk(new_key, "rsa-2"))
    fresh = f"Bearer {signed(new_key, 'RS256', 'rsa-2')}"
    for _ in range(10):  # too soon: no refetch, the new kid is unknown
        await rejected(verifier, fresh)
    assert idp.fetches == 1
    # The stimulus: the 0.3 s refetch limit runs out. The verifier measures it on
    # time.monotonic (not an injectable clock), so this wait is real time.
    await asyncio.sleep(0.35)
    results = await asyncio.gather(*(verifier.verify(fresh) for _ in range(10)))
    assert {p.sub for p in results} == {"alice"}
    assert idp.fetches == 2  # the concurrent misses shared one fetch


async def test_concurrent_first_requests_share_one_jwks_fetch(idp: Idp) -> None:
    verifier = Verifier(idp.config())
    token = f"Bearer {signed(RSA_KEY, 'RS256', 'rsa-1')}"
    await asyncio.gather(*(verifier.verify(token) for _ in range(20)))
    assert idp.fetches == 1


async def test_an_unreachable_jwks_fails_closed_and_is_not_hammered(idp: Idp) -> None:
    idp.failing = True
    verifier = Verifier(idp.config())
    token = f"Bearer {signed(RSA_KEY, 'RS256', 'rsa-1')}"
    for _ in range(10):
        e = await rejected(verifier, token)
        assert e.message == "signing keys unavailable"
    assert idp.fetches == 1
