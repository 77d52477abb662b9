"""Host-side clients: the scenarios check a machine from outside with the host's own psql, curl and
openssl, across the machine's network (nspawn: the veth; QEMU: the forwarded ports, arriving in the
guest from 10.0.2.2)."""

import json
import shlex
import subprocess
import time
import urllib.parse


def run(cmd, timeout=60, env=None, stdin=None):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, input=stdin)
    return r.returncode, r.stdout, r.stderr


def tenant_url(url, machine, ca_file, sslmode="verify-full"):
    """A connection string as the API returned it, pointed at where the host reaches the machine.

    The host name in it stays (verify-full checks it against the certificate); `hostaddr` says
    which address to dial and the port is mapped to the forwarded one.
    """
    u = urllib.parse.urlsplit(url)
    addr, port = machine.endpoint(u.port or 5432)
    query = dict(urllib.parse.parse_qsl(u.query))
    query.update(sslmode=sslmode, hostaddr=addr, connect_timeout="10")
    if ca_file:
        query["sslrootcert"] = str(ca_file)
    netloc = f"{u.username}:{u.password}@{u.hostname}:{port}" if u.password else \
        f"{u.username}@{u.hostname}:{port}"
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, urllib.parse.urlencode(query), ""))


def psql(conninfo, sql, timeout=60):
    """(exit code, stdout, stderr) of the host's psql: no ~/.psqlrc, no command tags, bare rows."""
    return run(["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
               timeout=timeout, env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "10"})


def psql_ok(conninfo, sql, timeout=60):
    """stdout of a psql run that must succeed."""
    rc, out, err = psql(conninfo, sql, timeout)
    if rc != 0:
        raise AssertionError(f"psql exited {rc} for `{sql}`: {err.strip()}")
    return out.strip()


class Api:
    """The pgaas REST API of a machine, called with the host's curl.

    An nspawn machine's API listens on the guest's loopback: curl runs in the machine's network
    namespace (host binary, guest network). A QEMU machine's is reached through an ssh forward.
    """

    def __init__(self, machine, key, port=3000):
        self.machine, self.key = machine, key
        self.prefix, self.base = machine.loopback_client(port)

    def wait_ready(self, timeout=90):
        """An active pgaas-api.service may not listen yet (after a boot, say): poll /health."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.call("GET", "/health")[0] == 200:
                    return
            except AssertionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the API did not answer /health within {timeout}s")
            time.sleep(1)

    def call(self, method, path, body=None, key=None, expect=None):
        cmd = self.prefix + ["curl", "-sS", "-m", "60", "-X", method, "-w", "\n%{http_code}",
                             "-H", f"X-API-Key: {key or self.key}"]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
        rc, out, err = run(cmd + [self.base + path], timeout=90)
        if rc != 0:
            raise AssertionError(f"curl {method} {path} failed ({rc}): {err}")
        text, _, status = out.rpartition("\n")
        status = int(status)
        try:
            doc = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            doc = text
        if expect is not None and status != expect:
            raise AssertionError(f"{method} {path}: HTTP {status}, expected {expect}: {text[:2000]}")
        return status, doc


def served_certificate(machine, port, servername):
    """PEM of the leaf certificate the machine's PostgreSQL-protocol port serves (STARTTLS)."""
    addr, port = machine.endpoint(port)
    rc, out, err = run(["openssl", "s_client", "-starttls", "postgres", "-connect", f"{addr}:{port}",
                        "-servername", servername], timeout=30, stdin="")
    begin, end = out.find("-----BEGIN CERTIFICATE-----"), out.find("-----END CERTIFICATE-----")
    if begin < 0:
        raise AssertionError(f"no certificate served on {addr}:{port}: {err[-1000:]}")
    return out[begin:end + len("-----END CERTIFICATE-----")] + "\n"


def cert_fields(pem):
    rc, out, err = run(["openssl", "x509", "-noout", "-serial", "-issuer", "-subject", "-enddate",
                        "-ext", "subjectAltName"], stdin=pem)
    if rc != 0:
        raise AssertionError(f"openssl x509: {err}")
    return out


def verify_chain(machine, port, servername, ca_file):
    """openssl's verdict on the served chain against `ca_file` and `servername` (exit 0: valid)."""
    addr, port = machine.endpoint(port)
    return run(["openssl", "s_client", "-starttls", "postgres", "-connect", f"{addr}:{port}",
                "-servername", servername, "-verify_return_error", "-verify_hostname", servername,
                "-CAfile", str(ca_file)], timeout=30, stdin="")


def quote(s):
    return shlex.quote(s)


def first_answer(machine, port, user, database, timeout=15):
    """What the server answers a TLS startup as `user` on `database`, before any password.

    `("E", message)`: refused by the access rules (pg_hba.conf, PgBouncer's hba or its console
    check) before a password was asked for; `("R", code)`: it asks for authentication (code 10 is
    SASL), i.e. the rules let the name through and only the password decides. No password is
    ever sent, so this probes for paths, empty passwords included, without guessing any.
    """
    import socket
    import ssl
    import struct

    addr, port = machine.endpoint(port)
    raw = socket.create_connection((addr, port), timeout=timeout)
    try:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        if raw.recv(1) != b"S":
            return ("N", "no TLS offered")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(raw)
        body = struct.pack("!i", 196608)
        for k, v in (("user", user), ("database", database)):
            body += k.encode() + b"\0" + v.encode() + b"\0"
        body += b"\0"
        sock.sendall(struct.pack("!i", len(body) + 4) + body)
        head = b""
        while len(head) < 5:
            chunk = sock.recv(5 - len(head))
            if not chunk:
                return ("closed", "")
            head += chunk
        kind, length = head[:1].decode(), struct.unpack("!i", head[1:5])[0]
        payload = b""
        while len(payload) < length - 4:
            chunk = sock.recv(length - 4 - len(payload))
            if not chunk:
                break
            payload += chunk
        if kind == "R":
            return ("R", struct.unpack("!i", payload[:4])[0])
        if kind == "E":
            fields = dict((f[:1].decode(), f[1:].decode(errors="replace"))
                          for f in payload.split(b"\0") if f)
            return ("E", fields.get("M", ""))
        return (kind, payload[:200])
    finally:
        raw.close()


def probe_access(machine, tenant, other, ports=(5432, 6432)):
    """Every name an attacker would try, on both ports, from outside: list of problems found.

    Only `tenant` on its own database may be asked for a password; every console name, server
    role and cross-tenant pair must be refused first.
    """
    problems = []
    console = ["pgaas", "postgres", "pgbouncer", "pgaas_api", "stats", "admin", "root"]
    databases = ["pgbouncer", "postgres", "template1", "postgres_control",
                 tenant["database_name"], other["database_name"]]
    for port in ports:
        for user in console + [other["username"]]:
            for db in databases:
                if user == other["username"] and db == other["database_name"]:
                    continue
                kind, detail = first_answer(machine, port, user, db)
                if kind != "E":
                    problems.append(f"port {port}: {user} -> {db} got {kind} {detail!r}")
        for db in databases:
            kind, detail = first_answer(machine, port, tenant["username"], db)
            want = "R" if db == tenant["database_name"] else "E"
            if kind != want:
                problems.append(f"port {port}: tenant -> {db} got {kind} {detail!r}, want {want}")
    return problems
