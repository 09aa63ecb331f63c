"""Token providers against a real loopback token endpoint."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from dxkpi.collector.auth import (
    CachedToken,
    ClientCredentialsToken,
    JwtBearerToken,
    StaticJwt,
    StaticToken,
)
from dxkpi.collector.contract import SourceContext
from dxkpi.collector.errors import SourceAuthError
from dxkpi.collector.http import HttpClient
from dxkpi.collector.testing import FakeRequest, FakeResponse, loopback_server

NOW = datetime(2025, 4, 1, 3, 0, 0, tzinfo=UTC)
CLIENT_SECRET = "cl1ent-s3cret-do-not-print"


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def context(clock: Callable[[], datetime]) -> SourceContext:
    return SourceContext(source_id="auth_test", sleep=lambda s: None, clock=clock)


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


Serve = Callable[[Callable[[FakeRequest], FakeResponse]], str]


@pytest.fixture(scope="module")
def serve() -> Iterator[Serve]:
    """One loopback server per module (each costs half a second to stop); `serve(handler)`
    plugs the test's handler in and returns the base URL."""
    plugged: list[Callable[[FakeRequest], FakeResponse]] = []
    with loopback_server(lambda request: plugged[-1](request)) as (base_url, _):

        def plug(handler: Callable[[FakeRequest], FakeResponse]) -> str:
            plugged.append(handler)
            return base_url

        yield plug


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


# -- CachedToken -----------------------------------------------------------------------------


def test_cached_token_lives_until_expiry_minus_margin() -> None:
    clock = Clock()
    fetched: list[int] = []

    def fetch() -> tuple[str, float]:
        fetched.append(1)
        return f"t{len(fetched)}", 3600

    cache = CachedToken(fetch, clock, margin_seconds=60)
    assert cache.token() == "t1"
    clock.now += timedelta(seconds=3539)
    assert cache.token() == "t1"
    clock.now += timedelta(seconds=1)  # 60 s before expiry: renew
    assert cache.token() == "t2"
    assert cache.token(force_refresh=True) == "t3"
    assert len(fetched) == 3


def test_static_token_is_the_key() -> None:
    assert StaticToken(SecretStr("k")).token(force_refresh=True) == "k"


# -- ClientCredentialsToken ------------------------------------------------------------------


def token_endpoint(issued: list[FakeRequest]) -> Callable[[FakeRequest], FakeResponse]:
    def handler(request: FakeRequest) -> FakeResponse:
        if request.path != "/oauth/token":
            return FakeResponse(404, {})
        issued.append(request)
        expected = base64.b64encode(f"cid:{CLIENT_SECRET}".encode()).decode()
        form = request.form()
        body_ok = form.get("client_secret") == [CLIENT_SECRET]
        if request.headers.get("Authorization") != f"Basic {expected}" and not body_ok:
            return FakeResponse(401, {"error": "invalid_client", "reason": "Invalid client"})
        return FakeResponse(
            200, {"access_token": f"at-{len(issued)}", "token_type": "bearer", "expires_in": 3599}
        )

    return handler


def test_client_credentials_basic_with_query_params_like_zoom(serve: Serve) -> None:
    issued: list[FakeRequest] = []
    clock = Clock()
    url = serve(token_endpoint(issued))
    provider = ClientCredentialsToken(
        context(clock),
        f"{url}/oauth/token",
        "cid",
        SecretStr(CLIENT_SECRET),
        grant_type="account_credentials",
        extra_params={"account_id": "acc1"},
        params_in="query",
    )
    assert provider.token() == "at-1"
    assert provider.token() == "at-1"  # cached
    clock.now += timedelta(seconds=3600)
    assert provider.token() == "at-2"
    assert issued[0].method == "POST"
    assert issued[0].query == {"grant_type": ["account_credentials"], "account_id": ["acc1"]}
    assert issued[0].form() == {}


def test_client_credentials_in_body_with_scope(serve: Serve) -> None:
    issued: list[FakeRequest] = []
    url = serve(token_endpoint(issued))
    provider = ClientCredentialsToken(
        context(Clock()),
        f"{url}/oauth/token",
        "cid",
        CLIENT_SECRET,
        scope=["OR.Jobs.Read", "OR.Robots.Read"],
        credentials_in="body",
    )
    assert provider.token() == "at-1"
    form = issued[0].form()
    assert form["grant_type"] == ["client_credentials"]
    assert form["scope"] == ["OR.Jobs.Read OR.Robots.Read"]
    assert form["client_id"] == ["cid"]
    assert "Authorization" not in issued[0].headers


def test_refused_client_credentials_name_the_endpoint_not_the_secret(
    caplog: pytest.LogCaptureFixture, serve: Serve
) -> None:
    caplog.set_level(logging.DEBUG)

    def refuse(request: FakeRequest) -> FakeResponse:
        return FakeResponse(
            400, {"error": "invalid_client", "error_description": f"secret {CLIENT_SECRET} bad"}
        )

    url = serve(refuse)
    provider = ClientCredentialsToken(
        context(Clock()), f"{url}/oauth/token", "cid", CLIENT_SECRET, hint="check the Zoom app"
    )
    with pytest.raises(SourceAuthError) as caught:
        provider.token()
    text = str(caught.value)
    assert "POST /oauth/token -> 400" in text
    assert "invalid_client" in text and "check the Zoom app" in text
    assert CLIENT_SECRET not in text and CLIENT_SECRET not in caplog.text


def test_token_endpoint_without_access_token_is_an_auth_error(serve: Serve) -> None:
    url = serve(lambda r: FakeResponse(200, {"token_type": "bearer"}))
    provider = ClientCredentialsToken(context(Clock()), f"{url}/t", "cid", CLIENT_SECRET)
    with pytest.raises(SourceAuthError, match="without an access_token"):
        provider.token()


def test_http_client_refreshes_a_revoked_client_credentials_token(serve: Serve) -> None:
    issued: list[FakeRequest] = []
    endpoint = token_endpoint(issued)

    def api(request: FakeRequest) -> FakeResponse:
        if request.path == "/oauth/token":
            return endpoint(request)
        if request.headers.get("Authorization") == "Bearer at-1":  # revoked early
            return FakeResponse(401, {"code": 124, "message": "Invalid access token."})
        return FakeResponse(200, {"ok": True})

    url = serve(api)
    ctx = context(Clock())
    provider = ClientCredentialsToken(ctx, f"{url}/oauth/token", "cid", CLIENT_SECRET)
    assert HttpClient(ctx, url, auth=provider).get_json("/v2/report") == {"ok": True}
    assert len(issued) == 2


# -- JwtBearerToken --------------------------------------------------------------------------


def test_jwt_bearer_grant_signs_the_google_claims(rsa_key: rsa.RSAPrivateKey, serve: Serve) -> None:
    seen: list[dict[str, Any]] = []
    public = rsa_key.public_key()

    def google(request: FakeRequest) -> FakeResponse:
        form = request.form()
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
        assertion = form["assertion"][0]
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(
            assertion,
            public,
            algorithms=["RS256"],
            audience=f"{base}/token",
            options={"verify_exp": False, "verify_iat": False},
        )
        seen.append({"header": header, "claims": claims})
        return FakeResponse(200, {"access_token": f"ya29.{len(seen)}", "expires_in": 3599})

    clock = Clock()
    base = serve(google)
    info = {
        "type": "service_account",
        "client_email": "dxkpi@project.iam.gserviceaccount.com",
        "private_key": pem(rsa_key),
        "private_key_id": "kid-1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    provider = JwtBearerToken.from_service_account(
        context(clock),
        info,
        ["https://www.googleapis.com/auth/analytics.readonly"],
        token_uri=f"{base}/token",
    )
    assert provider.token() == "ya29.1"
    assert provider.token() == "ya29.1"
    clock.now += timedelta(hours=1)
    assert provider.token() == "ya29.2"
    first = seen[0]
    assert first["header"]["alg"] == "RS256" and first["header"]["kid"] == "kid-1"
    claims = first["claims"]
    assert claims["iss"] == "dxkpi@project.iam.gserviceaccount.com"
    assert claims["scope"] == "https://www.googleapis.com/auth/analytics.readonly"
    assert claims["iat"] == int(NOW.timestamp())
    assert claims["exp"] - claims["iat"] == 3600


def test_jwt_bearer_refused_is_an_auth_error(rsa_key: rsa.RSAPrivateKey, serve: Serve) -> None:
    refuse = FakeResponse(400, {"error": "invalid_grant", "error_description": "Invalid JWT"})
    base = serve(lambda r: refuse)
    provider = JwtBearerToken(context(Clock()), "sa@x", pem(rsa_key), ["scope"], f"{base}/token")
    with pytest.raises(SourceAuthError, match=r"POST /token -> 400.*invalid_grant"):
        provider.token()


def test_a_bad_private_key_never_shows_in_the_error() -> None:
    bad_key = "-----BEGIN PRIVATE KEY-----\nnot-really-a-key-MIIEv\n-----END PRIVATE KEY-----\n"
    provider = JwtBearerToken(context(Clock()), "sa@x", bad_key, ["s"], "http://127.0.0.1:9/t")
    with pytest.raises(SourceAuthError) as caught:
        provider.token()
    assert "not-really-a-key" not in str(caught.value)
    assert "cannot sign" in str(caught.value)


def test_missing_service_account_fields() -> None:
    with pytest.raises(SourceAuthError, match="lacks private_key"):
        JwtBearerToken.from_service_account(context(Clock()), {"client_email": "x"}, ["s"])


# -- StaticJwt --------------------------------------------------------------------------------


def test_static_jwt_es256_like_app_store_connect() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    clock = Clock()
    provider = StaticJwt(
        context(clock),
        SecretStr(pem(key)),
        claims={"iss": "issuer-uuid", "aud": "appstoreconnect-v1"},
        headers={"kid": "ABC123", "typ": "JWT"},
        lifetime_seconds=1200,
    )
    first = provider.token()
    header = jwt.get_unverified_header(first)
    assert header == {"alg": "ES256", "kid": "ABC123", "typ": "JWT"}
    claims = jwt.decode(
        first,
        key.public_key(),
        algorithms=["ES256"],
        audience="appstoreconnect-v1",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["iss"] == "issuer-uuid"
    assert claims["exp"] - claims["iat"] == 1200
    clock.now += timedelta(seconds=1139)
    assert provider.token() == first  # reused while more than the margin remains
    clock.now += timedelta(seconds=1)
    assert provider.token() != first


def test_runs_in_one_process_share_a_live_token(serve: Serve) -> None:
    """A connector is built per run; on the real clock its token outlives the run."""
    issued: list[FakeRequest] = []
    url = serve(token_endpoint(issued))
    real = SourceContext(source_id="zoom_main")

    def provider() -> ClientCredentialsToken:
        return ClientCredentialsToken(real, f"{url}/oauth/token", "cid", SecretStr(CLIENT_SECRET))

    assert provider().token() == "at-1"
    assert provider().token() == "at-1"
    assert len(issued) == 1  # the second run reused the first run's token
    other = ClientCredentialsToken(real, f"{url}/oauth/token", "cid2", SecretStr(CLIENT_SECRET))
    with pytest.raises(SourceAuthError):  # other credentials never get someone else's token
        other.token()
    assert provider().token(force_refresh=True) == "at-3"  # a 401 refresh fetches anew
    assert provider().token() == "at-3"  # ... for every later run too
