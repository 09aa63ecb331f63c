"""Where bearer tokens come from. `HttpClient(auth=...)` takes any `TokenProvider`.

    TokenProvider            the protocol (defined in collector/http.py, re-exported here)
    StaticToken              a fixed API key (Plausible)
    CachedToken              caches what a fetch function returns until shortly before it expires
    ClientCredentialsToken   OAuth2 client_credentials and look-alikes (Zoom account_credentials)
    JwtBearerToken           RFC 7523 JWT-bearer grant: Google service accounts (GA4, Google Play)
    StaticJwt                a self-signed JWT used as the bearer itself (App Store Connect)

A token endpoint that refuses us raises SourceAuthError naming the endpoint's path (`POST
/oauth/token -> 401`) and the OAuth error code, never the secret, the assertion or the token.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
import requests
from pydantic import SecretStr

from dxkpi.collector.contract import SourceContext, real_clock
from dxkpi.collector.errors import RetryableSourceError, SourceAuthError
from dxkpi.collector.http import HttpClient, TokenProvider

__all__ = [
    "GOOGLE_TOKEN_URI",
    "CachedToken",
    "ClientCredentialsToken",
    "JwtBearerToken",
    "StaticJwt",
    "StaticToken",
    "TokenProvider",
]

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"

Secret = str | SecretStr


def reveal(secret: Secret) -> str:
    return secret.get_secret_value() if isinstance(secret, SecretStr) else secret


class StaticToken:
    """A fixed API key. Refreshing cannot help, so `force_refresh` returns the same key."""

    def __init__(self, secret: Secret) -> None:
        self._secret = secret if isinstance(secret, SecretStr) else SecretStr(secret)

    def token(self, force_refresh: bool = False) -> str:
        return self._secret.get_secret_value()


# Tokens shared by every run in this process, keyed by a digest of who asks whom for what:
# a connector is built anew for each run, and a worker runs a source every few minutes, so
# without this each run would fetch a token the previous run already holds.
_SHARED: dict[str, tuple[str, float]] = {}
_SHARED_LOCK = threading.Lock()


def share_key(*parts: str | None) -> str:
    """A digest of the credentials and endpoint: the shared cache never holds secrets as keys."""
    return hashlib.sha256("\x00".join(p or "" for p in parts).encode()).hexdigest()


class CachedToken:
    """Caches the token `fetch()` returns as `(token, expires_in_seconds)` until `margin_seconds`
    before it expires (by `clock`), so a request never leaves with a token about to die.
    Short-lived tokens are cached for at least half their life. With `share_as`, the token is
    shared with every CachedToken of this process given the same key (see `share_key`)."""

    def __init__(
        self,
        fetch: Callable[[], tuple[str, float]],
        clock: Callable[[], datetime],
        *,
        margin_seconds: float = 60.0,
        share_as: str | None = None,
    ) -> None:
        self._fetch = fetch
        self._clock = clock
        self._margin = margin_seconds
        self._token: str | None = None
        self._expires_at = 0.0
        # Shared only on the real clock: expiry times from an injected (test) clock mean nothing
        # to anyone else.
        self._key = share_as if clock is real_clock() else None
        self._lock = _SHARED_LOCK if self._key else threading.Lock()

    def token(self, force_refresh: bool = False) -> str:
        with self._lock:
            now = self._clock().timestamp()
            if self._key is not None and self._token is None and self._key in _SHARED:
                self._token, self._expires_at = _SHARED[self._key]
            if force_refresh or self._token is None or now >= self._expires_at:
                token, expires_in = self._fetch()
                self._token = token
                self._expires_at = now + expires_in - min(self._margin, expires_in / 2)
                if self._key is not None:
                    _SHARED[self._key] = (self._token, self._expires_at)
            return self._token


def _expires_in(body: Mapping[str, Any], default: float) -> float:
    try:
        return float(body.get("expires_in", default))
    except (TypeError, ValueError):
        return default


class _TokenEndpoint:
    """POSTs a form to an OAuth token endpoint and returns (access_token, expires_in)."""

    def __init__(
        self,
        context: SourceContext,
        token_url: str,
        *,
        hint: str,
        redact: Sequence[str],
        session: requests.Session | None,
        timeout: float,
    ) -> None:
        parts = urlsplit(token_url)
        self.context = context
        self.path = parts.path or "/"
        self.query = parts.query
        self.hint = hint
        self.client = HttpClient(
            context,
            f"{parts.scheme}://{parts.netloc}",
            session=session,
            timeout=timeout,
            redact=redact,
            # A token endpoint that is down is worth a short wait, not the full five minutes.
            max_retry_seconds=60.0,
            max_attempts=4,
        )

    def fetch(
        self,
        form: Mapping[str, str],
        *,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        default_expires_in: float = 3600.0,
    ) -> tuple[str, float]:
        refused = (400, 401, 403)
        response = self.client.request(
            "POST",
            f"{self.path}?{self.query}" if self.query else self.path,
            params=params,
            data=dict(form),
            headers={"Accept": "application/json", **(headers or {})},
            passthrough=refused,
        )
        where = f"POST {self.path} -> {response.status_code}"
        try:
            body = self.client.parse_json(response)
        except RetryableSourceError:  # not JSON: a proxy's page
            if response.status_code not in refused:
                raise
            body = None  # the status speaks
        if response.status_code in refused:
            code = body.get("error") if isinstance(body, Mapping) else None
            said = self.client.with_vendor_message(
                f"token request refused ({code})"
                if isinstance(code, str)
                else "token request refused",
                response,
            )
            raise SourceAuthError(self.context.source_id, said, where=where, hint=self.hint)
        token = body.get("access_token") if isinstance(body, Mapping) else None
        if not isinstance(token, str) or not token:
            raise SourceAuthError(
                self.context.source_id,
                "the token endpoint answered without an access_token",
                where=where,
                hint=self.hint,
            )
        return token, _expires_in(body, default_expires_in)


class ClientCredentialsToken:
    """OAuth2 client_credentials grant (RFC 6749 4.4), cached until expiry.

    `credentials_in="basic"` sends client_id:client_secret as HTTP Basic auth (preferred by the
    RFC), "body" sends them as form fields. `grant_type`, `scope` and `extra_params` fill the
    form; `params_in="query"` puts them in the URL instead for vendors that document it so
    (Zoom: `POST /oauth/token?grant_type=account_credentials&account_id=...`). Never put a secret
    in `extra_params` with `params_in="query"`.
    """

    def __init__(
        self,
        context: SourceContext,
        token_url: str,
        client_id: str,
        client_secret: Secret,
        *,
        scope: str | Sequence[str] | None = None,
        grant_type: str = "client_credentials",
        extra_params: Mapping[str, str] | None = None,
        credentials_in: Literal["basic", "body"] = "basic",
        params_in: Literal["body", "query"] = "body",
        hint: str = "check the client id and secret, and that the app is active",
        margin_seconds: float = 60.0,
        session: requests.Session | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._client_id = client_id
        self._client_secret = reveal(client_secret)
        self._params: dict[str, str] = {"grant_type": grant_type, **(extra_params or {})}
        if scope:
            self._params["scope"] = scope if isinstance(scope, str) else " ".join(scope)
        self._credentials_in = credentials_in
        self._params_in = params_in
        self._endpoint = _TokenEndpoint(
            context,
            token_url,
            hint=hint,
            redact=[self._client_secret],
            session=session,
            timeout=timeout,
        )
        shared = share_key(
            token_url, client_id, self._client_secret, repr(sorted(self._params.items()))
        )
        self._cache = CachedToken(
            self._fetch,
            context.clock,
            margin_seconds=margin_seconds,
            share_as=shared,
        )

    def token(self, force_refresh: bool = False) -> str:
        return self._cache.token(force_refresh)

    def _fetch(self) -> tuple[str, float]:
        form: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self._credentials_in == "basic":
            pair = f"{self._client_id}:{self._client_secret}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        else:
            form.update(client_id=self._client_id, client_secret=self._client_secret)
        if self._params_in == "query":
            return self._endpoint.fetch(form, params=self._params, headers=headers)
        return self._endpoint.fetch({**self._params, **form}, headers=headers)


class JwtBearerToken:
    """RFC 7523 JWT-bearer grant as Google service accounts use it: an RS256 JWT with
    iss/scope/aud/iat/exp (and `sub` to impersonate), signed with the account's private key,
    is exchanged at `token_uri` for an access token (cached until shortly before expiry)."""

    def __init__(
        self,
        context: SourceContext,
        issuer: str,
        private_key: Secret,
        scopes: Sequence[str],
        token_uri: str = GOOGLE_TOKEN_URI,
        *,
        key_id: str | None = None,
        subject: str | None = None,
        lifetime_seconds: int = 3600,
        hint: str = "check the service account key and that the account has access",
        margin_seconds: float = 60.0,
        session: requests.Session | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._context = context
        self._issuer = issuer
        self._private_key = reveal(private_key)
        self._scope = " ".join(scopes)
        self._token_uri = token_uri
        self._key_id = key_id
        self._subject = subject
        self._lifetime = lifetime_seconds
        self._hint = hint
        self._endpoint = _TokenEndpoint(
            context, token_uri, hint=hint, redact=[], session=session, timeout=timeout
        )
        shared = share_key(token_uri, issuer, self._private_key, self._scope, subject)
        self._cache = CachedToken(
            self._fetch,
            context.clock,
            margin_seconds=margin_seconds,
            share_as=shared,
        )

    @classmethod
    def from_service_account(
        cls,
        context: SourceContext,
        info: Mapping[str, Any],
        scopes: Sequence[str],
        *,
        token_uri: str | None = None,
        **kwargs: Any,
    ) -> JwtBearerToken:
        """Build from a service-account key file's JSON (`client_email`, `private_key`,
        `private_key_id`, `token_uri`); an explicit `token_uri` wins over the file's."""
        missing = [k for k in ("client_email", "private_key") if not info.get(k)]
        if missing:
            raise SourceAuthError(
                context.source_id,
                f"the service account key lacks {', '.join(missing)}",
                hint="use the JSON key file downloaded from the Google Cloud console",
            )
        return cls(
            context,
            str(info["client_email"]),
            str(info["private_key"]),
            scopes,
            token_uri or str(info.get("token_uri") or GOOGLE_TOKEN_URI),
            key_id=info.get("private_key_id"),
            **kwargs,
        )

    def token(self, force_refresh: bool = False) -> str:
        return self._cache.token(force_refresh)

    def _fetch(self) -> tuple[str, float]:
        now = int(self._context.clock().timestamp())
        claims: dict[str, Any] = {
            "iss": self._issuer,
            "scope": self._scope,
            "aud": self._token_uri,
            "iat": now,
            "exp": now + self._lifetime,
        }
        if self._subject:
            claims["sub"] = self._subject
        headers = {"kid": self._key_id} if self._key_id else None
        assertion = _sign(self._context, claims, self._private_key, "RS256", headers, self._hint)
        return self._endpoint.fetch({"grant_type": JWT_BEARER_GRANT, "assertion": assertion})


class StaticJwt:
    """A JWT we sign ourselves and send as the bearer (App Store Connect: ES256, `kid` header,
    claims iss/aud, at most 20 minutes). `iat` and `exp` are added from the context's clock;
    a minted token is reused until `margin_seconds` before it expires."""

    def __init__(
        self,
        context: SourceContext,
        private_key: Secret,
        *,
        claims: Mapping[str, Any],
        headers: Mapping[str, Any] | None = None,
        algorithm: str = "ES256",
        lifetime_seconds: int = 1200,
        margin_seconds: float = 60.0,
        hint: str = "check the private key, its key id and issuer",
    ) -> None:
        self._context = context
        self._private_key = reveal(private_key)
        self._claims = dict(claims)
        self._headers = dict(headers or {})
        self._algorithm = algorithm
        self._lifetime = lifetime_seconds
        self._hint = hint
        self._cache = CachedToken(self._mint, context.clock, margin_seconds=margin_seconds)

    def token(self, force_refresh: bool = False) -> str:
        return self._cache.token(force_refresh)

    def _mint(self) -> tuple[str, float]:
        now = int(self._context.clock().timestamp())
        claims = {**self._claims, "iat": now, "exp": now + self._lifetime}
        signed = _sign(
            self._context, claims, self._private_key, self._algorithm, self._headers, self._hint
        )
        return signed, float(self._lifetime)


def _sign(
    context: SourceContext,
    claims: Mapping[str, Any],
    private_key: str,
    algorithm: str,
    headers: Mapping[str, Any] | None,
    hint: str,
) -> str:
    try:
        return jwt.encode(
            dict(claims), private_key, algorithm=algorithm, headers=dict(headers or {})
        )
    except (ValueError, TypeError, jwt.PyJWTError) as exc:
        # The library's message may quote the key material: name only the kind of failure.
        raise SourceAuthError(
            context.source_id,
            f"cannot sign a {algorithm} JWT with the configured private key ({type(exc).__name__})",
            hint=hint,
        ) from None
