"""Credentials towards agents: a registration's ``auth`` resolved into request headers.

Secrets are named by reference (env var names) and read from the gateway's environment when a
request needs them; nothing here logs, stores or raises a secret value. OAuth2 client
credentials (RFC 6749 section 4.4): the token is fetched from ``token_url`` through the screened
transport (client authentication with HTTP Basic), cached until its expiry minus a margin, one
fetch at a time per configuration, and dropped when the agent answers 401 (``refresh=True``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from gateway.domain import jsonio
from gateway.domain.dispatch import CredentialError, Transport, TransportError
from gateway.domain.specs import AgentAuth, AgentSpec, AuthType

TOKEN_MARGIN_S = 30.0  # a cached token is renewed this long before it expires
DEFAULT_TOKEN_LIFETIME_S = 300.0  # a token answer without expires_in
TOKEN_TIMEOUT_S = 10.0
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class _Token:
    value: str
    renew_at: float  # monotonic


class EnvCredentials:
    """A :class:`~gateway.domain.dispatch.CredentialSource` reading secrets from ``env``."""

    def __init__(
        self,
        transport: Transport,
        env: Mapping[str, str],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._env = env
        self._monotonic = monotonic
        self._tokens: dict[str, _Token] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetches = 0  # token requests made (tests and metrics read it)

    def _secret(self, name: str | None) -> str:
        value = self._env.get(name or "")
        if not value:
            raise CredentialError(f"env var {name!r} named by the agent's auth is not set")
        return value

    async def headers(self, agent: AgentSpec, *, refresh: bool = False) -> dict[str, str]:
        auth = agent.auth
        if auth is None:
            return {}
        if auth.type is AuthType.BEARER:
            return {"Authorization": f"Bearer {self._secret(auth.token_env)}"}
        if auth.type is AuthType.API_KEY:
            return {auth.header or "X-Api-Key": self._secret(auth.value_env)}
        token = await self._oauth2_token(auth, refresh=refresh)
        return {"Authorization": f"Bearer {token}"}

    def _key(self, auth: AgentAuth, secret: str) -> str:
        # the secret's digest is part of the key: a rotated secret gets a new token at once
        digest = hashlib.sha256(secret.encode()).hexdigest()[:16]
        return "\x00".join((auth.token_url or "", auth.client_id or "", auth.scope or "", digest))

    async def _oauth2_token(self, auth: AgentAuth, *, refresh: bool) -> str:
        secret = self._secret(auth.client_secret_env)
        key = self._key(auth, secret)
        if refresh:
            self._tokens.pop(key, None)
        cached = self._tokens.get(key)
        if cached is not None and self._monotonic() < cached.renew_at:
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one fetch at a time; the others take its token
            cached = self._tokens.get(key)
            if cached is not None and self._monotonic() < cached.renew_at:
                return cached.value
            token = await self._fetch(auth, secret)
            if len(self._tokens) >= _MAX_CACHED:
                self._tokens.clear()
            self._tokens[key] = token
            return token.value

    async def _fetch(self, auth: AgentAuth, secret: str) -> _Token:
        url = auth.token_url or ""
        basic = base64.b64encode(
            f"{quote(auth.client_id or '', safe='')}:{quote(secret, safe='')}".encode()
        ).decode()
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        self.fetches += 1
        try:
            resp = await self._transport.request(
                "POST",
                url,
                headers={
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                    "Authorization": f"Basic {basic}",
                },
                body=urlencode(form).encode(),
                timeout_s=TOKEN_TIMEOUT_S,
            )
        except TransportError as exc:
            raise CredentialError(
                f"OAuth2 token request to {url} failed: {exc}", retryable=exc.retryable
            ) from None
        if resp.status != 200:
            raise CredentialError(f"OAuth2 token endpoint {url} answered HTTP {resp.status}")
        try:
            data = jsonio.loads(resp.body)
        except (ValueError, UnicodeDecodeError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            raise CredentialError(f"OAuth2 token endpoint {url} answered no access_token")
        lifetime = data.get("expires_in")
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            lifetime = DEFAULT_TOKEN_LIFETIME_S
        margin = min(TOKEN_MARGIN_S, float(lifetime) / 2)
        return _Token(data["access_token"], self._monotonic() + float(lifetime) - margin)
