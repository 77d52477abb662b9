"""ACME on a machine: Pebble on the host issues the guest's certificate; renewal swaps it live."""

from harness import client
from harness.pebble import HTTP_PORT
from harness.platform import install, install_from_package, main_pid, postmaster_pid, seed_settings

TIER = "nspawn"
SUITES = ("bookworm", "trixie")
DOMAIN = "db.pgaas-vm.test"


def test(t, m):
    v = t.pg_version
    with t.subtest("pgaas comes from its .deb"):
        install_from_package(m)
    pebble = t.pebble(m)
    m.write_file("/root/pebble-https-ca.pem", pebble.https_ca.read_text())
    issue = (f"pgaas cert issue --domain {DOMAIN} --email ops@pgaas-vm.test "
             f"--directory {pebble.directory} --ca-file /root/pebble-https-ca.pem "
             f"--http-listen 0.0.0.0:{HTTP_PORT}")

    # Debian 12: install with the local CA, then `pgaas cert issue` (moving a host to ACME).
    # Debian 13: the ACME path of `pgaas install` itself.
    if t.suite == "bookworm":
        with t.subtest("install --self-signed --yes"):
            seed_settings(m, DOMAIN)
            install(m)

    with t.subtest("the guest gets a certificate from Pebble on the host (HTTP-01 across the link)"):
        if t.suite == "bookworm":
            m.succeed(issue + " 2>&1", timeout=300)
        else:
            install(m, args=f"--domain {DOMAIN} --email ops@pgaas-vm.test --yes "
                            f"--acme-directory {pebble.directory} "
                            f"--acme-ca-file /root/pebble-https-ca.pem --http-listen 0.0.0.0:{HTTP_PORT}")
        root = pebble.issuing_root()
        for port in (5432, 6432):
            rc, out, err = client.verify_chain(m, port, DOMAIN, root)
            assert rc == 0 and "Verify return code: 0" in out, \
                f"port {port} does not serve a certificate valid for {DOMAIN} from Pebble:\n{out[-1500:]}{err[-500:]}"
        m.succeed("pgaas cert status")

    with t.subtest("a renewal swaps the certificate without a restart"):
        before = {p: client.cert_fields(client.served_certificate(m, p, DOMAIN)) for p in (5432, 6432)}
        pids = (postmaster_pid(m, v), main_pid(m, "pgbouncer.service"))
        m.succeed("pgaas cert renew --force 2>&1", timeout=300)
        root = pebble.issuing_root()
        for port in (5432, 6432):
            after = client.cert_fields(client.served_certificate(m, port, DOMAIN))
            assert after != before[port], f"port {port} still serves the old certificate"
            rc, out, err = client.verify_chain(m, port, DOMAIN, root)
            assert rc == 0, f"renewed certificate on {port} does not verify:\n{out[-1500:]}"
        assert (postmaster_pid(m, v), main_pid(m, "pgbouncer.service")) == pids, \
            "PostgreSQL or PgBouncer was restarted for the renewal"

    with t.subtest("the renewal timer's service runs and finds nothing due"):
        m.succeed("systemctl start pgaas-cert-renew.service", timeout=300)
        assert m.unit_property("pgaas-cert-renew.service", "Result") == "success"
