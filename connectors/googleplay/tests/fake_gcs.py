"""A fake Google OAuth token endpoint and Cloud Storage JSON API, built from Google's public docs.

- "Using OAuth 2.0 for Server to Server Applications": `POST /token` with
  `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and `assertion` = an RS256 JWT signed
  with the service account's key, claims `iss` (client_email), `scope`, `aud` (the token URI),
  `iat`, `exp` (at most one hour later). Answers `{"access_token", "expires_in", "token_type"}`
  or 400 `{"error": "invalid_grant", "error_description": ...}`. This fake checks the signature.
- Cloud Storage JSON API: `GET /storage/v1/b/{bucket}/o?prefix=&pageToken=&maxResults=` lists
  objects (`items` is ABSENT when nothing matches; `nextPageToken` while more remain);
  `GET /storage/v1/b/{bucket}/o/{object}?alt=media[&generation=]` downloads one, the object name
  percent-encoded (`/` as `%2F`). Errors are `{"error": {"code", "message", "errors": [...]}}`;
  an expired token is 401 "Invalid Credentials", a bucket the account may not read 403.
- Play Console writes the reports as `stats/installs/installs_<package>_<YYYYMM>_overview.csv`,
  UTF-16LE with a byte-order mark.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dxkpi.collector.testing import FakeRequest, FakeResponse

TESTDATA = Path(__file__).parent / "testdata"
SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
_generations = itertools.count(1_730_000_000_000_000)


def new_service_account(
    token_uri: str = "https://oauth2.googleapis.com/token",
    email: str = "dxkpi@kpi-prod.iam.gserviceaccount.com",
) -> tuple[dict[str, str], rsa.RSAPublicKey]:
    """(key file as the Cloud console downloads it, public key)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "kpi-prod",
        "private_key_id": "4f1c2d3e5a6b7c8d9e0f",
        "private_key": pem,
        "client_email": email,
        "client_id": "112233445566778899000",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return info, private.public_key()


def utf16_csv(text: str) -> bytes:
    """How Play writes its reports: UTF-16LE with a byte-order mark."""
    return codecs.BOM_UTF16_LE + text.encode("utf-16-le")


def gcs_error(code: int, message: str, reason: str) -> FakeResponse:
    error = {"message": message, "domain": "global", "reason": reason}
    return FakeResponse(code, {"error": {"code": code, "message": message, "errors": [error]}})


@dataclass
class StoredObject:
    data: bytes
    generation: int = field(default_factory=lambda: next(_generations))


@dataclass
class FakeGcs:
    """Token endpoint plus one bucket. `objects` maps object names to their content.

    `script` answers the next storage requests (after the token check) to inject failures.
    `page_size` is the listing page size when the client does not ask for one.
    """

    public_key: rsa.RSAPublicKey
    client_email: str
    bucket: str = "pubsite_prod_rev_01234567890987654321"
    objects: dict[str, StoredObject] = field(default_factory=dict)
    script: list[FakeResponse] = field(default_factory=list)
    page_size: int = 2
    token_lifetime: int = 3599
    clock: Callable[[], float] = time.time
    base_url: str = ""  # set once the server runs: the token URI is base_url + "/token"
    tokens: dict[str, float] = field(default_factory=dict)
    assertions: list[dict[str, object]] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)

    def put(self, name: str, data: bytes) -> StoredObject:
        """Store (or overwrite, with a new generation) an object."""
        self.objects[name] = StoredObject(data)
        return self.objects[name]

    def put_testdata(self, filename: str) -> StoredObject:
        return self.put(f"stats/installs/{filename}", (TESTDATA / filename).read_bytes())

    def handle(self, request: FakeRequest) -> FakeResponse:
        if request.path == "/token":
            return self._token(request)
        if not self._authorized(request.headers.get("Authorization", "")):
            return gcs_error(401, "Invalid Credentials", "authError")
        if self.script:
            return self.script.pop(0)
        prefix = f"/storage/v1/b/{self.bucket}/o"
        if not request.path.startswith(f"/storage/v1/b/{self.bucket}/"):
            return gcs_error(
                403,
                f"{self.client_email} does not have storage.objects.list access to the "
                "Google Cloud Storage bucket. Permission 'storage.objects.list' denied on "
                "resource (or it may not exist).",
                "forbidden",
            )
        if request.path == prefix:
            return self._list(request)
        if request.path.startswith(prefix + "/"):
            return self._get(request, request.path.removeprefix(prefix + "/"))
        return gcs_error(404, "Not Found", "notFound")

    # -- OAuth ---------------------------------------------------------------------------

    def _token(self, request: FakeRequest) -> FakeResponse:
        form = {k: v[0] for k, v in request.form().items()}
        if form.get("grant_type") != JWT_BEARER:
            return FakeResponse(400, {"error": "unsupported_grant_type"})
        try:
            claims = jwt.decode(
                form.get("assertion", ""),
                self.public_key,
                algorithms=["RS256"],
                audience=f"{self.base_url}/token",
                issuer=self.client_email,
                options={
                    "require": ["iss", "aud", "iat", "exp"],
                    # Time is checked below against the fake clock, not the real one.
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            return FakeResponse(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        now = self.clock()
        self.assertions.append(claims)
        if not (float(claims["iat"]) - 300 <= now < float(claims["exp"])) or (
            float(claims["exp"]) - float(claims["iat"]) > 3600
        ):
            return FakeResponse(
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "Invalid JWT: Token must be a short-lived token "
                    "(60 minutes) and in a reasonable timeframe.",
                },
            )
        if SCOPE not in str(claims.get("scope", "")).split():
            return FakeResponse(400, {"error": "invalid_scope"})
        token = f"ya29.fake-{len(self.tokens)}-{hashlib.sha1(str(now).encode()).hexdigest()[:8]}"
        self.tokens[token] = now + self.token_lifetime
        body = {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return FakeResponse(200, body)

    def _authorized(self, authorization: str) -> bool:
        expires = self.tokens.get(authorization.removeprefix("Bearer "))
        return expires is not None and self.clock() < expires

    def expire_tokens(self) -> None:
        """Revoke every token issued so far (as if they had run out)."""
        self.tokens = dict.fromkeys(self.tokens, 0.0)

    # -- storage -------------------------------------------------------------------------

    def _list(self, request: FakeRequest) -> FakeResponse:
        prefix = request.arg("prefix", "") or ""
        size = int(request.arg("maxResults") or self.page_size)
        names = sorted(n for n in self.objects if n.startswith(prefix))
        start = int(base64.urlsafe_b64decode(request.arg("pageToken") or "MA==").decode())
        page = names[start : start + size]
        body: dict[str, object] = {"kind": "storage#objects"}
        if page:  # GCS leaves `items` out of an empty listing
            body["items"] = [self._resource(n) for n in page]
        if start + size < len(names):
            body["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return FakeResponse(200, body)

    def _resource(self, name: str) -> dict[str, object]:
        stored = self.objects[name]
        md5 = base64.b64encode(hashlib.md5(stored.data).digest()).decode()
        return {
            "kind": "storage#object",
            "id": f"{self.bucket}/{name}/{stored.generation}",
            "name": name,
            "bucket": self.bucket,
            "generation": str(stored.generation),
            "metageneration": "1",
            "contentType": "text/csv; charset=utf-16le",
            "storageClass": "STANDARD",
            "size": str(len(stored.data)),
            "md5Hash": md5,
            "etag": f"C{stored.generation % 10**8}EAE=",
            "timeCreated": "2026-11-01T03:00:00.000Z",
            "updated": "2026-11-19T03:00:00.000Z",
        }

    def _get(self, request: FakeRequest, encoded: str) -> FakeResponse:
        if "/" in encoded:
            # An unencoded slash is another URL altogether on the real API.
            return gcs_error(404, "Not Found", "notFound")
        name = unquote(encoded)
        stored = self.objects.get(name)
        wanted = request.arg("generation")
        if stored is None or (wanted is not None and wanted != str(stored.generation)):
            return gcs_error(404, f"No such object: {self.bucket}/{name}", "notFound")
        if request.arg("alt") != "media":
            return FakeResponse(200, self._resource(name))
        self.downloads.append(name)
        headers = {
            "Content-Type": "text/csv; charset=utf-16le",
            "x-goog-generation": str(stored.generation),
            "ETag": f'"{hashlib.md5(stored.data).hexdigest()}"',
        }
        return FakeResponse(200, stored.data, headers)
