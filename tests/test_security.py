"""Security: user SQL cannot write, secrets never leak, /probe never dials the request, TLS and basic auth.

Everything runs against a real PostgreSQL and a real HTTP(S) server; leaks are found by grepping
every output pgvigil produces for the password itself.
"""
from __future__ import annotations

import base64
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
from conftest import config_for, parse_exposition, sample
from tls_support import make_certificates

from exporter.scrape.assembly import scrape_once
from exporter.server import start_server
from exporter.dev.throwaway import ThrowawayCluster, free_port
from exporter.webconfig import hash_password, parse_web_config

# -- user SQL cannot write ---------------------------------------------------------------------------

SETUP = """
CREATE TABLE precious (id int PRIMARY KEY, v text);
INSERT INTO precious SELECT g, 'row ' || g FROM generate_series(1, 5) g;
CREATE SEQUENCE precious_seq;
CREATE FUNCTION wipe() RETURNS int LANGUAGE sql AS $$ DELETE FROM precious; SELECT 1 $$;
CREATE FUNCTION sneaky() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  PERFORM set_config('transaction_read_only', 'off', true);
  UPDATE precious SET v = 'pwned';
  RETURN 1;
END $$;
CREATE FUNCTION escalate() RETURNS int LANGUAGE plpgsql AS $$
BEGIN
  SET TRANSACTION READ WRITE;
  DROP TABLE precious;
  RETURN 1;
END $$;
"""

WRITES = {
    "delete": "DELETE FROM precious RETURNING id AS n",
    "update": "UPDATE precious SET v = 'pwned' RETURNING id AS n",
    "drop": "DROP TABLE precious",
    "insert_cte": "WITH w AS (INSERT INTO precious VALUES (99, 'x') RETURNING id) SELECT id AS n FROM w",
    "smuggled_statement": "SELECT 1 AS n; DELETE FROM precious",
    "commit_then_write": "SELECT 1 AS n; COMMIT; TRUNCATE precious",
    "function_with_delete": "SELECT wipe() AS n",
    "function_turning_off_read_only": "SELECT sneaky() AS n",
    "function_set_transaction_read_write": "SELECT escalate() AS n",
    "nextval": "SELECT nextval('precious_seq') AS n",
    "select_into": "SELECT 1 AS n INTO copy_of_precious",
}


@pytest.fixture(scope="module")
def victim_db(cluster):
    name = "sec_" + uuid.uuid4().hex[:8]
    dsn = cluster.create_database(name)
    cluster.execute(SETUP, name)
    yield name, dsn
    cluster.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    cluster.execute(f'DROP DATABASE "{name}"')


@pytest.mark.parametrize("sql", WRITES.values(), ids=WRITES.keys())
def test_user_sql_cannot_write(cluster, victim_db, sql):
    name, dsn = victim_db
    quoted = sql.replace("'", "''")
    config = config_for(dsn, f"  - {{name: attempt, sql: '{quoted}', metrics: {{n: {{}}}}}}\n")
    samples = parse_exposition(scrape_once(config))
    assert sample(samples, "pgvigil_query_success", query="attempt") == 0
    assert sample(samples, "pgvigil_query_errors_total", query="attempt", reason="error") == 1
    assert sample(samples, "attempt_n") is None
    # The data is intact: same rows, same values, the sequence untouched, nothing created.
    assert cluster.execute("SELECT count(*), count(*) FILTER (WHERE v LIKE 'row %') FROM precious", name) == [(5, 5)]
    assert cluster.execute("SELECT last_value, is_called FROM precious_seq", name) == [(1, False)]
    assert cluster.execute("SELECT to_regclass('copy_of_precious') IS NULL", name) == [(True,)]


def test_read_only_session_leaves_no_transaction_open(cluster, victim_db):
    name, dsn = victim_db
    config = config_for(dsn, "  - {name: ok, sql: 'SELECT count(*) AS n FROM precious', metrics: {n: {}}}\n")
    handle = start_server(config)
    try:
        urllib.request.urlopen(handle.url + "/metrics", timeout=30).read()
        states = cluster.execute(f"SELECT state FROM pg_stat_activity WHERE datname = '{name}' "
                                 "AND application_name = 'pgvigil'")
        assert states == [("idle",)]  # never "idle in transaction": every run is rolled back
    finally:
        handle.stop()


# -- secrets never leak --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scram_cluster():
    """A cluster that really checks passwords (scram) for TCP logins other than the superuser's."""
    pg = ThrowawayCluster(preload=())
    pg.init()
    (pg.datadir / "pg_hba.conf").write_text(
        "local all all trust\n"
        "host all postgres 127.0.0.1/32 trust\n"
        "host all all 127.0.0.1/32 scram-sha-256\n")
    pg.start()
    try:
        yield pg
    finally:
        pg.cleanup()


def _secret() -> str:
    # Unique and URL-safe, so a grep hit can only be a leak of this exact password.
    return "pw-" + uuid.uuid4().hex


def _dsn_with(pg: ThrowawayCluster, user: str, password: str, dbname: str = "postgres") -> str:
    return f"postgresql://{user}:{password}@127.0.0.1:{pg.port}/{dbname}"


def test_dsn_password_never_leaks(scram_cluster, tmp_path):
    pg = scram_cluster
    inline, via_env, in_file, wrong = _secret(), _secret(), _secret(), _secret()
    for role, password in (("inline_user", inline), ("env_user", via_env), ("file_user", in_file)):
        pg.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE pg_monitor")
    dsn_file = tmp_path / "file.dsn"
    dsn_file.write_text(_dsn_with(pg, "file_user", in_file) + "\n")
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"""\
collectors: [default]
targets:
  inline: {{dsn: "{_dsn_with(pg, 'inline_user', inline)}"}}
  from_env: {{dsn: "postgresql://env_user:${{PGVIGIL_TEST_PASSWORD}}@127.0.0.1:{pg.port}/postgres"}}
  from_file: {{dsn_file: {dsn_file}}}
  wrong_password: {{dsn: "{_dsn_with(pg, 'inline_user', wrong)}"}}
  missing_db: {{dsn: "{_dsn_with(pg, 'inline_user', inline, 'no_such_db')}"}}
  unreachable: {{dsn: "postgresql://inline_user:{inline}@127.0.0.1:{free_port()}/postgres"}}
queries:
  - {{name: failing, sql: "SELECT 1/0 AS x", metrics: {{x: {{}}}}}}
  - {{name: bad_value, sql: "SELECT 'text' AS x", metrics: {{x: {{}}}}}}
""")
    secrets = (inline, via_env, in_file, wrong)
    port = free_port()
    web_config = tmp_path / "web.yml"
    web_config.write_text("basic_auth_users:\n  prom: " + hash_password("scrape-pass", cost=4) + "\n")
    env = {**os.environ, "PGVIGIL_TEST_PASSWORD": via_env}
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "serve", "--config", str(config),
                             "--listen", f"127.0.0.1:{port}", "--log-level", "debug",
                             "--web-config", str(web_config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = []
    try:
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": "Basic " + base64.b64encode(b"prom:scrape-pass").decode()}
        metrics = _wait_for(base + "/metrics", auth)
        samples = parse_exposition(metrics)
        assert sample(samples, "pg_up", target="inline") == 1
        assert sample(samples, "pg_up", target="from_env") == 1
        assert sample(samples, "pg_up", target="from_file") == 1
        assert sample(samples, "pg_up", target="wrong_password") == 0
        assert sample(samples, "pg_up", target="missing_db") == 0
        outputs.append(metrics)
        for path in ("/metrics", "/health", "/", "/probe?target=inline", "/probe?target=wrong_password",
                     "/probe?target=" + urllib.parse.quote(_dsn_with(pg, "inline_user", inline)), "/nope"):
            outputs.append(_get(base + path, auth)[1])
        outputs.append(_get(base + "/metrics", {})[1])  # the 401 page
        os.kill(proc.pid, signal.SIGHUP)  # a reload logs the config summary again
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    outputs += [stdout, stderr]
    assert "password authentication failed" in stderr  # the failures were logged...
    assert "no_such_db" in stderr
    check = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(config), "--connect"],
                           env=env, capture_output=True, text=True, timeout=120)
    outputs += [check.stdout, check.stderr]
    assert "password authentication failed" in check.stdout
    for secret in secrets:
        for text in outputs:
            assert secret not in text  # ...but never with a password


def test_config_errors_never_echo_the_dsn(tmp_path):
    secret = _secret()
    config = tmp_path / "pgvigil.yaml"
    config.write_text(f"""\
targets:
  a: {{dsn: "postgresql://u:{secret}@h/db", dns_typo: "postgresql://u:{secret}@h/db", pool_size: 0}}
  b: {{dsn: "postgresql://u:{secret}@h/db", dsn_file: /nonexistent}}
  "c d": "postgresql://u:{secret}@h/db"
  e: {{dsn: ["postgresql://u:{secret}@h/db"]}}
""")
    result = subprocess.run([sys.executable, "-m", "exporter", "check", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "unknown key 'dns_typo'" in result.stderr
    assert secret not in result.stdout + result.stderr


MALFORMED_DSNS = {
    # libpq's parse errors quote pieces of the DSN: a password must not be one of them.
    "unquoted_space": "host=127.0.0.1 port=1 password=first SECRET dbname=x",
    "bad_port_keyword": "host=127.0.0.1 port=SECRET password=SECRET",
    "bad_port_uri": "postgresql://u:SECRET@127.0.0.1:SECRET/db",
    "bad_percent_encoding": "postgresql://u:SECRET%zz@127.0.0.1:1/db",
    "unterminated_quote": "host=127.0.0.1 port=1 password='first SECRET",
    "space_in_uri": "postgresql://u:first SECRET@127.0.0.1:1/db",
    "bad_query_parameter": "postgresql://u:SECRET@127.0.0.1:1/db?SECRET",
}


@pytest.mark.parametrize("dsn", MALFORMED_DSNS.values(), ids=MALFORMED_DSNS.keys())
def test_malformed_dsns_do_not_leak_their_password(dsn, caplog):
    from exporter.config import parse_config
    from exporter.server import Exporter, render_landing

    secret = _secret()
    config = parse_config(f'collectors: []\ntargets:\n  a: {{dsn: "{dsn.replace("SECRET", secret)}"}}\n')
    exporter = Exporter(config)
    try:
        with caplog.at_level("DEBUG"):  # raw records, before the log handler's own scrubbing
            outputs = [exporter.metrics(5.0), str(exporter.runner.health()), render_landing(exporter)]
    finally:
        exporter.close()
    assert sample(parse_exposition(outputs[0]), "pg_up", target="a") == 0
    outputs += [record.getMessage() for record in caplog.records]
    assert all(secret not in text for text in outputs)


def _get(url: str, headers: dict, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _wait_for(url: str, headers: dict, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = _get(url, headers)
            assert status == 200, (status, body)
            return body
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# -- /probe never dials an address from the request -----------------------------------------------------

def test_probe_never_connects_to_an_address_from_the_request(fresh_db):
    trap = socket.socket()
    trap.bind(("127.0.0.1", 0))
    trap.listen(16)
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    handle = start_server(config_for(fresh_db, "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n"))
    try:
        for target in (f"127.0.0.1:{port}", f"postgresql://postgres@127.0.0.1:{port}/postgres",
                       f"host=127.0.0.1 port={port} dbname=postgres", "db ", "DB", "../db", ""):
            status, body = _get(handle.url + "/probe?target=" + urllib.parse.quote(target), {})
            assert status == 400
            assert body == "unknown target; configured targets: db\n"
        with pytest.raises(socket.timeout):
            trap.accept()  # nobody dialled the trap
        status, body = _get(handle.url + "/probe?target=db", {})
        assert status == 200
        assert sample(parse_exposition(body), "q_x", target="db") == 1
    finally:
        handle.stop()
        trap.close()


# -- TLS and basic auth ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _client_context(certs, cert=None, key=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if cert:
        context.load_cert_chain(str(cert), str(key))
    return context


@pytest.fixture(scope="module")
def tls_server(cluster, certificates, tmp_path_factory):
    web = parse_web_config(f"""\
tls_server_config:
  cert_file: {certificates.server_cert}
  key_file: {certificates.server_key}
basic_auth_users:
  prometheus: {hash_password("right-pass", cost=4)}
  other: {hash_password("other-pass", cost=4)}
""", source="web.yml")
    config = config_for(cluster.dsn(), "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    handle = start_server(config, wrap_socket=web.wrap_socket(), authorize=web.authorizer())
    yield handle
    handle.stop()


@pytest.mark.parametrize("headers, expected", [
    (_basic("prometheus", "right-pass"), 200),
    (_basic("other", "other-pass"), 200),
    (_basic("prometheus", "wrong-pass"), 401),
    (_basic("prometheus", "other-pass"), 401),  # another user's password
    (_basic("nobody", "right-pass"), 401),
    (_basic("prometheus", ""), 401),
    (_basic("prometheus", "right-pass" + "x" * 80), 401),  # beyond bcrypt's 72 bytes
    ({"Authorization": "Bearer right-pass"}, 401),
    ({"Authorization": "Basic not-base64!"}, 401),
    ({"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()}, 401),
    ({}, 401),
], ids=["right", "second-user", "wrong-password", "other-users-password", "unknown-user", "empty-password",
        "too-long", "bearer", "garbage", "no-colon", "none"])
def test_tls_scrape_with_basic_auth(tls_server, certificates, headers, expected):
    assert tls_server.url.startswith("https://")
    for path in ("/metrics", "/health", "/", "/probe?target=db"):
        status, body = _get(tls_server.url + path, headers, _client_context(certificates))
        assert status == expected, path
        if expected == 401:
            assert body == "unauthorized\n"
    if expected == 200:
        _, body = _get(tls_server.url + "/metrics", headers, _client_context(certificates))
        assert sample(parse_exposition(body), "q_x", target="db") == 1


def test_a_401_asks_for_basic_auth(tls_server, certificates):
    request = urllib.request.Request(tls_server.url + "/metrics")
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(request, timeout=30, context=_client_context(certificates))
    assert raised.value.code == 401
    assert raised.value.headers["WWW-Authenticate"] == 'Basic realm="pgvigil", charset="UTF-8"'


def test_tls_port_refuses_plain_http_and_untrusted_clients_refuse_it(tls_server, certificates):
    plain = tls_server.url.replace("https://", "http://")
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain + "/metrics", timeout=10).read()
    with pytest.raises(urllib.error.URLError) as raised:  # a client that does not trust our CA
        urllib.request.urlopen(tls_server.url + "/metrics", timeout=10, context=ssl.create_default_context())
    assert isinstance(raised.value.reason, ssl.SSLCertVerificationError)
    # The server is unharmed by both.
    status, _ = _get(tls_server.url + "/health", _basic("prometheus", "right-pass"), _client_context(certificates))
    assert status == 200


def test_a_silent_client_does_not_block_other_scrapes(tls_server, certificates):
    host, port = urllib.parse.urlsplit(tls_server.url).netloc.rsplit(":", 1)
    with socket.create_connection((host, int(port))):  # connects, never starts the handshake
        status, _ = _get(tls_server.url + "/metrics", _basic("prometheus", "right-pass"), _client_context(certificates))
    assert status == 200


def test_client_certificates_are_required_and_verified(cluster, certificates):
    web = parse_web_config(f"""\
tls_server_config:
  cert_file: {certificates.server_cert}
  key_file: {certificates.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {certificates.ca}
  min_version: TLS13
""")
    config = config_for(cluster.dsn(), "  - {name: q, sql: 'SELECT 1 AS x', metrics: {x: {}}}\n")
    handle = start_server(config, wrap_socket=web.wrap_socket(), authorize=web.authorizer())
    try:
        good = _client_context(certificates, certificates.client_cert, certificates.client_key)
        status, body = _get(handle.url + "/metrics", {}, good)
        assert status == 200 and "q_x{" in body
        for context in (_client_context(certificates),  # no certificate
                        _client_context(certificates, certificates.other_client_cert, certificates.other_client_key)):
            with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
                _get(handle.url + "/metrics", {}, context)
        old = _client_context(certificates, certificates.client_cert, certificates.client_key)
        old.maximum_version = ssl.TLSVersion.TLSv1_2  # below min_version TLS13
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _get(handle.url + "/metrics", {}, old)
    finally:
        handle.stop()
