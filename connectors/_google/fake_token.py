"""A fake Google OAuth token endpoint for service accounts, for the Google connectors' loopback
fakes (built from Google's "Using OAuth 2.0 for Server to Server Applications").

`POST /token`, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=JWT`.
The JWT is checked as Google does: RS256, signed by the key's private key, `kid` the key's id,
`iss` the client email, `aud` the token URI, the scope asked for, `exp - iat` at most an hour.
Answers `{"access_token", "expires_in": 3599, "token_type": "Bearer"}`; a bad assertion is 400
`{"error": "invalid_grant", "error_description": ...}`. Google's API errors are the JSON
envelope `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dxkpi.collector.testing import FakeRequest, FakeResponse

CLIENT_EMAIL = "dxkpi-reader@pref-dx.iam.gserviceaccount.com"
KEY_ID = "f3a9c0e1b2d4"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def key_file(key: rsa.RSAPrivateKey, token_uri: str) -> str:
    """A service account key file as the Cloud console downloads it."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return json.dumps(
        {
            "type": "service_account",
            "project_id": "pref-dx",
            "private_key_id": KEY_ID,
            "private_key": pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "112233445566778899",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }
    )


def google_error(code: int, status: str, message: str) -> FakeResponse:
    return FakeResponse(code, {"error": {"code": code, "message": message, "status": status}})


@dataclass
class FakeTokenEndpoint:
    public_key: rsa.RSAPublicKey
    scope: str
    token_uri: str = ""
    valid_tokens: set[str] = field(default_factory=set)
    tokens_issued: int = 0
    _counter: Any = field(default_factory=itertools.count)

    def authorized(self, request: FakeRequest) -> bool:
        bearer = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return bearer in self.valid_tokens

    def __call__(self, request: FakeRequest) -> FakeResponse:
        form = request.form()
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        assertion = (form.get("assertion") or [""])[0]
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=self.token_uri,
                # The fake's clock is the tests' clock, not the wall clock.
                options={"verify_exp": False, "verify_iat": False},
            )
        except jwt.PyJWTError:
            return FakeResponse(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        if (
            header.get("kid") != KEY_ID
            or claims.get("iss") != CLIENT_EMAIL
            or self.scope not in str(claims.get("scope", "")).split()
            or not 0 < claims["exp"] - claims["iat"] <= 3600
        ):
            return FakeResponse(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT claims."}
            )
        self.tokens_issued += 1
        token = f"ya29.fake-{next(self._counter)}"
        self.valid_tokens.add(token)
        return FakeResponse(
            200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"}
        )
