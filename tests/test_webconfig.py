"""The --web-config file: exporter-toolkit format, every error located, files tried at load time."""
from __future__ import annotations

import base64
import subprocess
import sys

import pytest
from tls_support import make_certificates

from exporter.webconfig import BasicAuth, WebConfigError, hash_password, load_web_config, parse_web_config

HASH = "$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


def errors_of(text: str, base_dir=None) -> list[str]:
    with pytest.raises(WebConfigError) as raised:
        parse_web_config(text, source="web.yml", base_dir=base_dir)
    return raised.value.errors


@pytest.mark.parametrize("text, expected", [
    ("- a\n", ["web.yml:1: (top level): expected a mapping, got a list"]),
    ("tls_server_config: {}\nbasic_auth: {}\n",
     ["web.yml:2: basic_auth: unknown key 'basic_auth'; did you mean 'basic_auth_users'?"]),
    ("tls_server_config: {}\nbasic_oath: {}\nlisten: x\n",
     ["web.yml:2: basic_oath: unknown key 'basic_oath'; did you mean 'basic_auth_users'?",
      "web.yml:3: listen: unknown key 'listen'; expected one of: tls_server_config, http_server_config, "
      "basic_auth_users"]),
    ("rate_limit: {interval: 1s}\n",
     ["web.yml:1: rate_limit: 'rate_limit' is not supported by pgvigil: put a reverse proxy in front of pgvigil to "
      "rate-limit"]),
    ("http_server_config:\n  http2: yes please\n  headers: {X-Frame-Options: deny}\n",
     ["web.yml:2: http_server_config.http2: expected true or false, got the string 'yes please'",
      "web.yml:3: http_server_config.headers: 'headers' is not supported by pgvigil: extra response headers are not "
      "supported; set them in a reverse proxy"]),
    ("basic_auth_users:\n  prometheus: hunter2\n  'a:b': " + HASH + "\n",
     ["web.yml:2: basic_auth_users.prometheus: expected a bcrypt hash such as $2y$10$... (generate one with "
      "htpasswd -nBC 10 \"\" | tr -d ':\\n'); plain passwords are not accepted",
      "web.yml:3: basic_auth_users.a:b: expected a user name without ':'"]),
    ("tls_server_config:\n  key_file: k.pem\n",
     ["web.yml:1: tls_server_config: missing required key 'cert_file'",
      "web.yml:2: tls_server_config.key_file: cannot read k.pem: no such file"]),
    ("tls_server_config:\n  cert_file: 7\n  key_file: ''\n  cert: inline\n",
     ["web.yml:2: tls_server_config.cert_file: expected a non-empty string, got the number 7",
      "web.yml:3: tls_server_config.key_file: expected a non-empty string, got the string ''",
      "web.yml:4: tls_server_config.cert: 'cert' is not supported by pgvigil: inline PEM is not supported; "
      "use cert_file"]),
])
def test_errors_are_listed_with_their_location(text, expected):
    assert errors_of(text) == expected


def tls_text(certs, **extra: str) -> str:
    lines = [f"  cert_file: {certs.server_cert}", f"  key_file: {certs.server_key}"]
    lines += [f"  {key}: {value}" for key, value in extra.items()]
    return "tls_server_config:\n" + "\n".join(lines) + "\n"


@pytest.mark.parametrize("extra, expected", [
    ({"client_auth_type": "RequireAnyClientCert"},
     "tls_server_config.client_auth_type: RequireAnyClientCert accepts client certificates without verifying them; "
     "use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) with client_ca_file"),
    ({"client_auth_type": "RequireAndVerifyClientCert"},
     "tls_server_config.client_auth_type: RequireAndVerifyClientCert needs client_ca_file to verify clients"),
    ({"client_auth_type": "Strict"},
     "tls_server_config.client_auth_type: expected one of NoClientCert, VerifyClientCertIfGiven, "
     "RequireAndVerifyClientCert, got the string 'Strict'"),
    ({"client_ca_file": "SERVER_CERT"},
     "tls_server_config.client_ca_file: a client CA is set but client_auth_type is NoClientCert; set "
     "client_auth_type: RequireAndVerifyClientCert"),
    ({"min_version": "TLS13", "max_version": "TLS12"},
     "tls_server_config.min_version: min_version TLS13 is above max_version TLS12"),
    ({"min_version": "SSL3"},
     "tls_server_config.min_version: expected one of TLS10, TLS11, TLS12, TLS13, got the string 'SSL3'"),
    ({"cipher_suites": "[TLS_AES_128_GCM_SHA256]"},
     "tls_server_config.cipher_suites: 'cipher_suites' is not supported by pgvigil: pgvigil uses OpenSSL's default "
     "cipher suites; restrict them with min_version: TLS13"),
])
def test_tls_settings_are_checked(certs, extra, expected):
    extra = {k: v.replace("SERVER_CERT", str(certs.server_cert)) for k, v in extra.items()}
    (error,) = errors_of(tls_text(certs, **extra))
    assert error.split(": ", 1)[1] == expected


def test_a_key_that_does_not_match_the_certificate_fails_at_load(certs):
    text = f"tls_server_config:\n  cert_file: {certs.server_cert}\n  key_file: {certs.client_key}\n"
    assert errors_of(text) == ["web.yml:1: tls_server_config: cannot use the certificate, key or client CA: "
                               "key values mismatch"]


def test_relative_paths_are_relative_to_the_web_config(certs):
    path = certs.server_cert.parent / "web.yml"
    path.write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    config = load_web_config(path)
    assert config.tls.cert_file == certs.server_cert
    assert config.wrap_socket() is not None and config.authorizer() is None


def test_no_tls_and_no_users_means_plain_http():
    config = parse_web_config("tls_server_config: {}\nbasic_auth_users: {}\n")
    assert config.wrap_socket() is None and config.authorizer() is None


def test_basic_auth_accepts_toolkit_hashes_and_caches_successes():
    auth = BasicAuth({"prom": hash_password("secret", cost=4).replace("$2b$", "$2y$", 1)})

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert auth(header("prom", "secret")) and auth(header("prom", "secret"))
    assert len(auth._verified) == 1
    assert not auth(header("prom", "Secret")) and not auth(header("Prom", "secret"))
    assert not auth(None) and not auth("") and not auth("Basic") and not auth("Basic ===")


def test_serve_rejects_an_invalid_web_config(tmp_path):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prom: plaintext\n")
    result = subprocess.run([sys.executable, "-m", "exporter", "serve", "--dsn", "postgresql://127.0.0.1:1/x",
                             "--web-config", str(web)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == "invalid web config (1 error):"
    assert result.stderr.splitlines()[1].startswith(f"  {web}:2: basic_auth_users.prom: expected a bcrypt hash")
    assert "plaintext" not in result.stderr and "Traceback" not in result.stderr
