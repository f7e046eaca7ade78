"""Bearer-token authentication (JWT, RFC 8725) and scope checks.

Three modes (``AuthConfig.mode``):

- ``hs256``: tokens signed with a shared secret (at least 32 bytes); :func:`mint_token` makes
  dev tokens with it.
- ``jwks``: tokens signed by an identity provider, whose public keys are fetched from
  ``jwks_url`` with PyJWT's ``PyJWKClient`` (in a thread). Keys are cached; a token with an
  unknown ``kid`` triggers at most one refetch per ``jwks_min_refetch_s``, so random ``kid``
  spam cannot turn into a fetch per request.
- ``none``: auth disabled; every caller is the admin principal ``anonymous``. Tests/demo only.

RFC 8725 rules applied: the algorithm list is pinned and never mixes HMAC with public-key
algorithms (nor contains ``none``); ``exp``, ``iat``, ``iss``, ``aud`` and ``sub`` are required,
issuer and audience must match, clock leeway is at most 60 s. Every failure is a
``HandlerError(UNAUTHENTICATED)`` with a short reason that never quotes the token.

Scopes come from the ``scope`` claim (space-separated string) and/or ``scp`` (list or string).
``admin`` grants everything; a grant ending in ``:*`` or ``/*`` grants every scope under that
prefix (``ops:start:*`` and ``ops:start:agent/*`` both grant ``ops:start:agent/op``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import jwt
from jwt.types import Options

from gateway.domain.errors import HandlerError, HandlerErrorType

__all__ = [
    "ADMIN_SCOPE",
    "ANONYMOUS",
    "AuthConfig",
    "AuthMode",
    "Principal",
    "Verifier",
    "mint_token",
]

log = logging.getLogger("swarmgate.auth")

AuthMode = Literal["hs256", "jwks", "none"]
ADMIN_SCOPE = "admin"
ANONYMOUS = "anonymous"
MAX_LEEWAY_S = 60
MIN_HMAC_SECRET_BYTES = 32  # RFC 7518 3.2: at least the hash size
MAX_TOKEN_CHARS = 16_384
JWKS_CACHE_S = 300.0  # a known key set is refetched after this long
JWKS_FETCH_TIMEOUT_S = 10.0
JWKS_RETRY_AFTER_FAILURE_S = 5.0
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]

_HMAC_ALGS = frozenset({"HS256", "HS384", "HS512"})
_PUBLIC_KEY_ALGS = frozenset(
    {
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "ES512",
        "ES256K",
        "EdDSA",
        "Ed25519",
    }
)
_DEFAULT_ALGS: dict[str, tuple[str, ...]] = {
    "hs256": ("HS256",),
    "jwks": ("RS256", "ES256"),
    "none": (),
}
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """How bearer tokens are checked. Invalid combinations raise ValueError at construction."""

    mode: AuthMode
    issuer: str
    audience: str
    secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    algorithms: tuple[str, ...] = ()  # empty: HS256 for hs256, RS256 + ES256 for jwks
    leeway_s: int = 30
    jwks_min_refetch_s: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in get_args(AuthMode):
            raise ValueError(f"auth mode must be one of {get_args(AuthMode)}, not {self.mode!r}")
        algs = tuple(self.algorithms) or _DEFAULT_ALGS[self.mode]
        object.__setattr__(self, "algorithms", algs)
        if any(a.lower() == "none" for a in algs):
            raise ValueError('the "none" algorithm is never accepted')
        unknown = [a for a in algs if a not in _HMAC_ALGS | _PUBLIC_KEY_ALGS]
        if unknown:
            raise ValueError(f"unsupported JWT algorithms: {unknown}")
        hmac_algs = [a for a in algs if a in _HMAC_ALGS]
        if hmac_algs and len(hmac_algs) != len(algs):
            raise ValueError("JWT algorithms must not mix HMAC (HS*) with public-key algorithms")
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ValueError(f"leeway_s must be between 0 and {MAX_LEEWAY_S}")
        if self.jwks_min_refetch_s < 0:
            raise ValueError("jwks_min_refetch_s must not be negative")
        if self.mode == "none":
            return
        if not self.issuer or not self.audience:
            raise ValueError("issuer and audience are required")
        if self.mode == "hs256":
            if hmac_algs != list(algs):
                raise ValueError("hs256 mode accepts only HS* algorithms")
            if not self.secret:
                raise ValueError("hs256 mode needs a secret")
            if len(self.secret.encode()) < MIN_HMAC_SECRET_BYTES:
                raise ValueError(f"the HS256 secret must be at least {MIN_HMAC_SECRET_BYTES} bytes")
        else:  # jwks
            if hmac_algs:
                raise ValueError("jwks mode accepts only public-key algorithms")
            if not self.jwks_url or not self.jwks_url.lower().startswith(("https://", "http://")):
                raise ValueError("jwks mode needs an http(s) jwks_url")


def _unauthenticated(reason: str, *, error: str = "invalid_token") -> HandlerError:
    challenge = 'Bearer realm="swarmgate"'
    if error:
        challenge += f', error="{error}"'
    return HandlerError(
        HandlerErrorType.UNAUTHENTICATED, reason, headers={"WWW-Authenticate": challenge}
    )


def _scope_matches(grant: str, wanted: str) -> bool:
    if grant == wanted:
        return True
    if grant.endswith((":*", "/*")):
        prefix = grant[:-1]
        return len(wanted) > len(prefix) and wanted.startswith(prefix)
    return False


@dataclass(frozen=True, kw_only=True)
class Principal:
    """Who is calling, and what they may do."""

    sub: str
    scopes: frozenset[str] = frozenset()

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def has(self, scope: str) -> bool:
        """True if ``admin``, ``scope`` itself or a ``:*``/``/*`` prefix grant is held."""
        if self.is_admin:
            return True
        return any(_scope_matches(g, scope) for g in self.scopes)

    def require(self, scope: str) -> None:
        """Raise HandlerError(UNAUTHORIZED) unless :meth:`has` ``scope``."""
        if not self.has(scope):
            raise HandlerError(HandlerErrorType.UNAUTHORIZED, f"missing scope {scope!r}")


ANONYMOUS_ADMIN = Principal(sub=ANONYMOUS, scopes=frozenset({ADMIN_SCOPE}))


def _scopes_from(claims: dict[str, Any]) -> frozenset[str]:
    out: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            out.update(v for v in value if v)
        else:
            raise _unauthenticated(f"malformed {name} claim")
    return frozenset(out)


def _reason(exc: jwt.PyJWTError) -> str:
    match exc:
        case jwt.ExpiredSignatureError():
            return "token expired"
        case jwt.ImmatureSignatureError():
            return "token not yet valid"
        case jwt.InvalidAudienceError():
            return "wrong token audience"
        case jwt.InvalidIssuerError():
            return "wrong token issuer"
        case jwt.MissingRequiredClaimError():
            return f"token lacks the {exc.claim} claim"
        case jwt.InvalidAlgorithmError():
            return "token algorithm not allowed"
        case jwt.InvalidSignatureError():
            return "bad token signature"
        case jwt.InvalidKeyError():
            return "unusable signing key"
        case jwt.DecodeError():
            return "malformed token"
        case _:
            return "invalid token"


class _JwksKeys:
    """Signing keys from a JWKS URL, refetched at most once per ``min_refetch_s``."""

    def __init__(self, config: AuthConfig) -> None:
        assert config.jwks_url is not None
        self._client = jwt.PyJWKClient(
            config.jwks_url,
            cache_keys=False,
            cache_jwk_set=False,  # we cache (and rate-limit) here
            timeout=JWKS_FETCH_TIMEOUT_S,
        )
        self._algorithms = frozenset(config.algorithms)
        self._min_refetch_s = config.jwks_min_refetch_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None  # monotonic time of the last good fetch
        self._next_fetch_at = 0.0  # no fetch (of any kind) before this monotonic time
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def get(self, kid: str) -> jwt.PyJWK:
        stale = self._fetched_at is None or time.monotonic() - self._fetched_at > JWKS_CACHE_S
        if stale or kid not in self._keys:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            if self._fetched_at is None:
                raise _unauthenticated("signing keys unavailable", error="")
            raise _unauthenticated("unknown signing key")
        return key

    async def _refresh(self) -> None:
        async with self._lock:  # concurrent misses share one fetch
            now = time.monotonic()
            if now < self._next_fetch_at:
                return
            self._next_fetch_at = now + min(self._min_refetch_s, JWKS_RETRY_AFTER_FAILURE_S)
            self.fetches += 1
            try:
                keys = await asyncio.to_thread(self._client.get_signing_keys, True)
            except (jwt.PyJWTError, OSError, ValueError) as exc:
                log.warning("JWKS fetch failed: %s", type(exc).__name__)
                return
            self._keys = {
                k.key_id: k for k in keys if k.key_id and k.algorithm_name in self._algorithms
            }
            self._fetched_at = time.monotonic()
            self._next_fetch_at = self._fetched_at + self._min_refetch_s


VERIFIED_TTL_S = 60.0
VERIFIED_MAX = 4096


class Verifier:
    """Turns an ``Authorization`` header into a :class:`Principal` (or HandlerError 401)."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._clock = clock
        self._jwks = _JwksKeys(config) if config.mode == "jwks" else None
        # Tokens already verified (a caller sends the same one on every request): the
        # signature check costs far more than the lookup. An entry lasts until the token's
        # exp, at most VERIFIED_TTL_S (a key dropped from the JWKS stops working within it).
        self._verified: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self.decodes = 0
        self._options: Options = {
            "verify_signature": True,
            "require": list(REQUIRED_CLAIMS),
            "verify_exp": True,
            "verify_iat": True,
            "verify_iss": True,
            "verify_aud": True,
            "verify_sub": True,
            "verify_nbf": True,
            "enforce_minimum_key_length": True,
        }

    @property
    def jwks_fetches(self) -> int:
        """How many times the JWKS URL was fetched (0 outside jwks mode)."""
        return self._jwks.fetches if self._jwks is not None else 0

    async def verify(self, authorization_header: str | None) -> Principal:
        cfg = self.config
        if cfg.mode == "none":
            return ANONYMOUS_ADMIN
        token = self._bearer(authorization_header)
        now = self._clock()
        hit = self._verified.get(token)
        if hit is not None:
            if now < hit[1]:
                self._verified.move_to_end(token)
                return hit[0]
            del self._verified[token]
        principal, exp = await self._decode(token)
        self._verified[token] = (principal, min(exp, now + VERIFIED_TTL_S))
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)
        return principal

    async def _decode(self, token: str) -> tuple[Principal, float]:
        cfg = self.config
        self.decodes += 1
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthenticated("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in cfg.algorithms:
            raise _unauthenticated("token algorithm not allowed")

        key: jwt.PyJWK | str
        if self._jwks is not None:
            kid = header.get("kid")
            if not isinstance(kid, str) or not kid or len(kid) > 256:
                raise _unauthenticated("token has no usable kid")
            key = await self._jwks.get(kid)
        else:
            assert cfg.secret is not None
            key = cfg.secret

        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(cfg.algorithms),
                audience=cfg.audience,
                issuer=cfg.issuer,
                leeway=cfg.leeway_s,
                options=self._options,
            )
        except jwt.PyJWTError as exc:
            raise _unauthenticated(_reason(exc)) from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _unauthenticated("token lacks the sub claim")
        return Principal(sub=sub, scopes=_scopes_from(claims)), float(claims["exp"])

    @staticmethod
    def _bearer(header: str | None) -> str:
        if header is None or not header.strip():
            raise _unauthenticated("missing bearer token", error="")
        scheme, _, token = header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise _unauthenticated("authorization must be a bearer token", error="invalid_request")
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN_RE.match(token):
            raise _unauthenticated("malformed token")
        return token


def mint_token(
    config: AuthConfig,
    sub: str,
    scopes: Iterable[str],
    ttl_s: int = 3600,
    now: int | None = None,
) -> str:
    """An HS256 token the :class:`Verifier` for ``config`` accepts (dev tokens; the CLI)."""
    if config.mode != "hs256" or config.secret is None:
        raise ValueError("tokens can only be minted in hs256 mode")
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    if isinstance(scopes, str):
        raise TypeError("scopes must be an iterable of scope strings, not a string")
    issued = int(time.time()) if now is None else now
    claims = {
        "iss": config.issuer,
        "aud": config.audience,
        "sub": sub,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_s,
        "jti": uuid.uuid4().hex,
        "scope": " ".join(sorted(set(scopes))),
    }
    return jwt.encode(claims, config.secret, algorithm=config.algorithms[0])
