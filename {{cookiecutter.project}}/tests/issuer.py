"""A local OIDC issuer for the tests of core.auth: its discovery document, its
JWKS, and the key that signs its access tokens (the issuer fixture, conftest)."""

import base64
import functools
import json
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

AUDIENCE = "{{ cookiecutter.project }}"


def b64(number: int) -> str:
    data = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@functools.cache
def rsa_key(number: int) -> rsa.RSAPrivateKey:
    """The test run's RSA keys, made once each: a 2048-bit key takes a while."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer(ThreadingHTTPServer):
    """An OIDC issuer's discovery document and JWKS, and the private key that
    signs its tokens; counts the JWKS fetches."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), IssuerHandler)
        self.key = rsa_key(0)
        self.kid = "key-1"
        self.fetches = 0
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def jwks(self) -> dict:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": self.kid,
                    "n": b64(numbers.n),
                    "e": b64(numbers.e),
                }
            ]
        }

    def token(self, headers=None, key=None, algorithm="RS256", **claims) -> str:
        now = int(time.time())
        payload = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "client-7",
            "iat": now,
            "exp": now + 300,
        } | claims
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None},
            key if key is not None else self.key,
            algorithm=algorithm,
            headers={"kid": self.kid, **(headers or {})},
        )

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class IssuerHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        issuer = self.server
        if self.path == "/.well-known/openid-configuration":
            document = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
        elif self.path == "/jwks":
            issuer.fetches += 1
            document = issuer.jwks()
        else:
            self.send_error(404)
            return
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
