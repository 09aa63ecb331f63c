"""A fake App Store Connect API serving `GET /v1/salesReports`, built from Apple's public docs.

- Auth ("Generating Tokens for API Requests"): every request carries `Authorization: Bearer <JWT>`
  signed ES256 with the team key; header `kid` = key id; claims `iss` = issuer id,
  `aud` = "appstoreconnect-v1", `iat`, `exp`. Apple refuses tokens living longer than 20 minutes
  and expired ones with 401 NOT_AUTHORIZED. This fake verifies the signature with the public key.
- "Download sales and trends reports": filters `frequency`, `reportType`, `reportSubType`,
  `vendorNumber`, `reportDate`, `version`; answers 200 with a gzip-compressed TSV
  (`Content-Type: application/a-gzip`), or an error document `{"errors": [{status, code, title,
  detail}]}`. A day without sales is 404 NOT_FOUND "There were no sales for the date specified.";
  a day not yet processed is 404 "Report is not available yet"; past the retention 410.
"""

from __future__ import annotations

import gzip
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from dxkpi.collector.testing import FakeRequest, FakeResponse

TESTDATA = Path(__file__).parent / "testdata"
AUDIENCE = "appstoreconnect-v1"
MAX_TOKEN_LIFETIME = 20 * 60
COLUMNS = (
    "Provider\tProvider Country\tSKU\tDeveloper\tTitle\tVersion\tProduct Type Identifier\tUnits\t"
    "Developer Proceeds\tBegin Date\tEnd Date\tCustomer Currency\tCountry Code\t"
    "Currency of Proceeds\tApple Identifier\tCustomer Price\tPromo Code\tParent Identifier\t"
    "Subscription\tPeriod\tCategory\tCMB\tDevice\tSupported Platforms\tProceeds Reason\t"
    "Preserved Pricing\tClient\tOrder Type"
)


def new_team_key() -> tuple[str, ec.EllipticCurvePublicKey]:
    """A fresh P-256 key as App Store Connect hands it out: a PKCS#8 PEM `.p8` file."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return pem, private.public_key()


def apple_error(status: int, code: str, title: str, detail: str) -> FakeResponse:
    body = {
        "errors": [
            {
                "id": str(uuid.uuid4()),
                "status": str(status),
                "code": code,
                "title": title,
                "detail": detail,
            }
        ]
    }
    return FakeResponse(status, body)


def no_sales() -> FakeResponse:
    return apple_error(
        404,
        "NOT_FOUND",
        "The specified resource does not exist",
        "There were no sales for the date specified.",
    )


def not_yet_available() -> FakeResponse:
    return apple_error(
        404,
        "NOT_FOUND",
        "The specified resource does not exist",
        "Report is not available yet. Daily reports for the Americas are available by 5 am "
        "Pacific Time; Japan, Australia, and New Zealand by 5 am Japan Standard Time.",
    )


def gone() -> FakeResponse:
    return apple_error(
        410,
        "GONE",
        "The requested resource is no longer available",
        "Report is no longer available. Daily reports are available for 365 days.",
    )


def tsv_response(text: str) -> FakeResponse:
    return FakeResponse(
        200,
        gzip.compress(text.encode()),
        {"Content-Type": "application/a-gzip", "Content-Disposition": "attachment"},
    )


def report_row(
    report_date: str, apple_id: str, sku: str, product_type: str, units: float | str
) -> str:
    """One line of a version 1_0 summary report; `report_date` is YYYY-MM-DD."""
    y, m, d = report_date.split("-")
    day = f"{m}/{d}/{y}"
    cells = ["APPLE", "US", sku, "Example Prefecture", "Title", "1.0", product_type, str(units)]
    cells += ["0", day, day, "JPY", "JP", "JPY", apple_id, "0", "", "", "", "", "Utilities", ""]
    cells += ["iPhone", "iOS", "", "", "", ""]
    return "\t".join(cells)


def report(lines: list[str]) -> str:
    return "\n".join([COLUMNS, *lines]) + "\n"


@dataclass
class FakeAppStore:
    """Holds the vendor's reports and the team key; `handle` is the loopback handler.

    `reports` maps YYYY-MM-DD to TSV text or to a canned FakeResponse (no sales, not yet...).
    Dates absent from it answer "no sales". `script` is consumed first, one response per
    request, to inject 429/5xx/garbage ahead of the normal answers.
    """

    public_key: ec.EllipticCurvePublicKey
    key_id: str = "2X9R4HXF34"
    issuer_id: str = "57246542-96fe-1a63-e053-0824d011072a"
    vendor_number: str = "85012345"
    reports: dict[str, str | FakeResponse] = field(default_factory=dict)
    script: list[FakeResponse] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    tokens_seen: list[dict[str, object]] = field(default_factory=list)

    def handle(self, request: FakeRequest) -> FakeResponse:
        refused = self.refusal(request.headers.get("Authorization", ""))
        if refused is not None:
            return refused
        if self.script:
            return self.script.pop(0)
        if request.method != "GET" or request.path != "/v1/salesReports":
            return apple_error(404, "NOT_FOUND", "The specified resource does not exist", "")
        bad = self._bad_filters(request)
        if bad is not None:
            return bad
        answer = self.reports.get(request.arg("filter[reportDate]") or "", None)
        if answer is None:
            return no_sales()
        return answer if isinstance(answer, FakeResponse) else tsv_response(answer)

    def refusal(self, authorization: str) -> FakeResponse | None:
        """Apple's 401 for a missing, badly signed, expired or too long-lived token; else None."""
        refused = apple_error(
            401,
            "NOT_AUTHORIZED",
            "Authentication credentials are missing or invalid.",
            "Provide a properly configured and signed bearer token, and make sure that it has "
            "not expired. Learn more about Generating Tokens for API Requests "
            "https://developer.apple.com/go/?id=api-generating-tokens",
        )
        if not authorization.startswith("Bearer "):
            return refused
        token = authorization.removeprefix("Bearer ")
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["ES256"],
                audience=AUDIENCE,
                issuer=self.issuer_id,
                options={
                    "require": ["exp", "iss", "aud"],
                    # Time is checked below against the fake clock, not the real one.
                    "verify_exp": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError:
            return refused
        now = self.clock()
        self.tokens_seen.append(claims)
        if header.get("kid") != self.key_id or header.get("alg") != "ES256":
            return refused
        exp = float(claims["exp"])
        # Apple: tokens that expire more than 20 minutes in the future are not valid.
        if exp <= now or exp - now > MAX_TOKEN_LIFETIME:
            return refused
        if "iat" in claims and exp - float(claims["iat"]) > MAX_TOKEN_LIFETIME:
            return refused
        return None

    def _bad_filters(self, request: FakeRequest) -> FakeResponse | None:
        expected = {
            "filter[frequency]": "DAILY",
            "filter[reportType]": "SALES",
            "filter[reportSubType]": "SUMMARY",
            "filter[version]": "1_0",
        }
        for name, value in expected.items():
            if request.arg(name) != value:
                return apple_error(
                    400,
                    "PARAMETER_ERROR.INVALID",
                    "A parameter has an invalid value",
                    f"'{request.arg(name)}' is not a valid value for the parameter '{name}'",
                )
        if request.arg("filter[vendorNumber]") != self.vendor_number:
            return apple_error(
                403,
                "FORBIDDEN_ERROR",
                "This request is forbidden for security reasons",
                "You are not authorized to access reports for this vendor number.",
            )
        return None
