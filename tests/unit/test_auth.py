"""JWT bearer auth (RFC 8725 rules) and scope checks, on HS256 tokens (no server involved)."""

from __future__ import annotations

import secrets
import time
from typing import Any

import jwt
import pytest

from gateway.domain.errors import HandlerError, HandlerErrorType
from registry.auth import VERIFIED_TTL_S, AuthConfig, Principal, Verifier, mint_token
from tests.tokens import (
    AUDIENCE,
    HS,
    ISSUER,
    RSA_KEY,
    SECRET,
    claims,
    hand_made_token,
    hs_token,
    rejected,
)

# -- HS256 ------------------------------------------------------------------------------------


async def test_a_valid_hs256_token_is_accepted_with_its_scopes() -> None:
    token = mint_token(HS, "alice", ["ops:read", "agents:register"])
    principal = await Verifier(HS).verify(f"Bearer {token}")
    assert principal == Principal(sub="alice", scopes=frozenset({"ops:read", "agents:register"}))
    assert not principal.is_admin


async def test_scopes_are_read_from_a_scope_string_and_an_scp_list() -> None:
    token = hs_token(scope="ops:read  ops:cancel", scp=["agents:register"])
    principal = await Verifier(HS).verify(f"bearer {token}")
    assert principal.scopes == {"ops:read", "ops:cancel", "agents:register"}
    e = await rejected(Verifier(HS), f"Bearer {hs_token(scp=[1, 2])}")
    assert "scp" in e.message


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_a_token_signed_with_alg_none_is_rejected(alg: str) -> None:
    token = hand_made_token({"alg": alg, "typ": "JWT"}, claims(scope="admin"), key=None)
    e = await rejected(Verifier(HS), f"Bearer {token}")
    assert "algorithm" in e.message


async def test_an_hs256_verifier_rejects_an_rs256_token() -> None:
    token = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    e = await rejected(Verifier(HS), f"Bearer {token}")
    assert "algorithm" in e.message


async def test_a_token_signed_with_another_secret_is_rejected() -> None:
    e = await rejected(Verifier(HS), f"Bearer {hs_token(key=secrets.token_urlsafe(32))}")
    assert e.message == "bad token signature"


async def test_a_token_for_another_audience_is_rejected() -> None:
    e = await rejected(Verifier(HS), f"Bearer {hs_token(aud='someone-else')}")
    assert "audience" in e.message


async def test_a_token_from_another_issuer_is_rejected() -> None:
    e = await rejected(Verifier(HS), f"Bearer {hs_token(iss='https://evil.test')}")
    assert "issuer" in e.message


async def test_a_token_expired_beyond_the_leeway_is_rejected_and_within_it_accepted() -> None:
    now = int(time.time())
    e = await rejected(Verifier(HS), f"Bearer {hs_token(iat=now - 700, exp=now - 31 - 5)}")
    assert e.message == "token expired"
    principal = await Verifier(HS).verify(f"Bearer {hs_token(iat=now - 700, exp=now - 10)}")
    assert principal.sub == "alice"


async def test_a_verified_token_is_served_from_memory_until_its_exp_or_a_minute() -> None:
    clock = [time.time()]
    verifier = Verifier(HS, clock=lambda: clock[0])
    token = hs_token(exp=int(clock[0]) + 600)
    first = await verifier.verify(f"Bearer {token}")
    assert await verifier.verify(f"Bearer {token}") == first
    assert verifier.decodes == 1
    clock[0] += VERIFIED_TTL_S + 1  # the minute is over: checked again
    assert await verifier.verify(f"Bearer {token}") == first
    assert verifier.decodes == 2
    short = hs_token(exp=int(clock[0]) + 5)
    await verifier.verify(f"Bearer {short}")
    clock[0] += 6  # past this token's exp: never served from memory
    await verifier.verify(f"Bearer {short}")
    assert verifier.decodes == 4
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    e = await rejected(verifier, f"Bearer {tampered}")
    assert e.message == "bad token signature"


async def test_a_token_issued_in_the_future_beyond_the_leeway_is_rejected() -> None:
    now = int(time.time())
    e = await rejected(Verifier(HS), f"Bearer {hs_token(iat=now + 120, exp=now + 600)}")
    assert "not yet valid" in e.message


@pytest.mark.parametrize("claim", ["exp", "iat", "sub", "iss", "aud"])
async def test_a_token_missing_a_required_claim_is_rejected(claim: str) -> None:
    token = jwt.encode(claims(**{claim: None}), SECRET, algorithm="HS256")
    e = await rejected(Verifier(HS), f"Bearer {token}")
    assert claim in e.message


async def test_a_token_with_an_empty_or_non_string_subject_is_rejected() -> None:
    await rejected(Verifier(HS), f"Bearer {hs_token(sub='')}")
    await rejected(Verifier(HS), f"Bearer {hs_token(sub=42)}")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6cHc=",
        "Token abc",
        "Bearer not.a.jwt!",
        "Bearer x",
    ],
)
async def test_a_missing_or_malformed_authorization_header_is_unauthenticated(
    header: str | None,
) -> None:
    e = await rejected(Verifier(HS), header)
    assert e.status == 401
    assert e.headers["WWW-Authenticate"].startswith("Bearer")


async def test_failure_messages_never_include_the_token() -> None:
    for token in (
        hs_token(aud="x"),
        hs_token(key=secrets.token_urlsafe(32)),
        hs_token()[:-4],
        hs_token() + "x" * 20_000,
    ):
        e = await rejected(Verifier(HS), f"Bearer {token}")
        assert token not in str(e) and token[:20] not in str(e)
        assert len(str(e)) < 80


async def test_auth_mode_none_makes_every_caller_the_anonymous_admin() -> None:
    verifier = Verifier(AuthConfig(mode="none", issuer=ISSUER, audience=AUDIENCE))
    for header in (None, "Bearer whatever"):
        principal = await verifier.verify(header)
        assert principal.sub == "anonymous" and principal.is_admin


def test_mint_token_only_works_in_hs256_mode() -> None:
    jwks = AuthConfig(mode="jwks", jwks_url="http://127.0.0.1:9/jwks", issuer=ISSUER, audience="a")
    with pytest.raises(ValueError):
        mint_token(jwks, "alice", ["ops:read"])


# -- scopes -----------------------------------------------------------------------------------


def test_a_missing_scope_makes_require_raise_unauthorized() -> None:
    principal = Principal(sub="alice", scopes=frozenset({"ops:read"}))
    principal.require("ops:read")
    with pytest.raises(HandlerError) as info:
        principal.require("agents:register")
    assert info.value.type is HandlerErrorType.UNAUTHORIZED
    assert info.value.status == 403


def test_the_admin_scope_grants_everything() -> None:
    admin = Principal(sub="root", scopes=frozenset({"admin"}))
    assert admin.is_admin and admin.has("ops:start:any/thing") and admin.has("admin")


def test_wildcard_grants_cover_every_scope_under_their_prefix() -> None:
    agent_wide = Principal(sub="a", scopes=frozenset({"ops:start:agent/*"}))
    assert agent_wide.has("ops:start:agent/op")
    assert agent_wide.has("ops:start:agent/other-op")
    assert not agent_wide.has("ops:start:agent2/op")
    assert not agent_wide.has("ops:start:agent/")
    assert not agent_wide.has("ops:read")

    start_all = Principal(sub="b", scopes=frozenset({"ops:start:*"}))
    assert start_all.has("ops:start:agent/op")
    assert start_all.has("ops:start:other/op")
    assert not start_all.has("ops:read")
    assert not start_all.has("ops:start")


def test_a_star_that_is_not_a_trailing_segment_is_not_a_wildcard() -> None:
    principal = Principal(sub="c", scopes=frozenset({"*", "ops:st*", "ops:*:agent/op"}))
    assert not principal.has("ops:start:agent/op")
    assert not principal.has("admin")
    assert principal.has("ops:st*")  # still granted literally


# -- configuration ----------------------------------------------------------------------------


def test_algorithms_default_per_mode() -> None:
    assert HS.algorithms == ("HS256",)
    jwks = AuthConfig(mode="jwks", jwks_url="https://idp.test/jwks", issuer=ISSUER, audience="a")
    assert jwks.algorithms == ("RS256", "ES256")
    assert jwks.leeway_s == 30 and jwks.jwks_min_refetch_s == 60


@pytest.mark.parametrize(
    ("mode", "algorithms"),
    [
        ("hs256", ("HS256", "RS256")),
        ("jwks", ("RS256", "HS256")),
        ("jwks", ("ES256", "HS512")),
        ("hs256", ("HS256", "none")),
        ("jwks", ("none",)),
        ("hs256", ("RS256",)),
        ("jwks", ("HS256",)),
        ("hs256", ("XS256",)),
    ],
)
def test_mixed_unsafe_or_mismatched_algorithm_lists_are_rejected(
    mode: str, algorithms: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError):
        AuthConfig(
            mode=mode,  # type: ignore[arg-type]
            secret=SECRET,
            jwks_url="https://idp.test/jwks",
            algorithms=algorithms,
            issuer=ISSUER,
            audience=AUDIENCE,
        )


def test_constructing_a_config_with_hs256_and_rs256_raises_value_error() -> None:
    with pytest.raises(ValueError, match="mix"):
        AuthConfig(
            mode="hs256",
            secret=SECRET,
            algorithms=("HS256", "RS256"),
            issuer=ISSUER,
            audience=AUDIENCE,
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"leeway_s": 61},
        {"leeway_s": -1},
        {"secret": None},
        {"secret": "too-short"},
        {"issuer": ""},
        {"mode": "jwks", "secret": None, "jwks_url": None},
        {"mode": "jwks", "secret": None, "jwks_url": "file:///etc/jwks.json"},
        {"mode": "basic"},
    ],
)
def test_unsafe_or_incomplete_configs_are_rejected(overrides: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {
        "mode": "hs256",
        "secret": SECRET,
        "issuer": ISSUER,
        "audience": AUDIENCE,
        **overrides,
    }
    with pytest.raises(ValueError):
        AuthConfig(**kwargs)
