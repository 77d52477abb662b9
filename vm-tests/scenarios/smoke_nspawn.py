"""nspawn machine boots, runs the binary, installs PostgreSQL from the mirror."""

import subprocess

TIER = "nspawn"
SUITES = ("bookworm", "trixie")


def test(t, machine):
    with t.subtest("the release binary runs in the machine"):
        out = machine.succeed(f"{machine.pgaas} --version")
        assert out.startswith("pgaas "), out
        # No PostgreSQL on the machine yet: the version comes from the settings (environment layer).
        out = machine.succeed(f"PGAAS_POSTGRES__VERSION={t.pg_version} {machine.pgaas} render --root /tmp/x 2>&1")
        machine.succeed("test -s /tmp/x/etc/pgbouncer/pgbouncer.ini")
        machine.succeed("test -s /tmp/x/etc/systemd/system/pgaas-api.service")
        assert "changed" in out, out

    with t.subtest("the machine reaches nothing but the mirror, through the host's proxy"):
        # No route anywhere but the host side of the link: no packet leaves for the internet.
        routes = machine.succeed("ip -4 route")
        assert "default" not in routes and routes.count("\n") == 1, routes
        machine.fail("curl -sS -m 5 --noproxy '*' http://151.101.2.132/debian/")
        machine.succeed("apt-get -q update", timeout=300)
        machine.fail(f"curl -sS -m 5 -x http://{machine.host_address}:3142 https://crates.io/")

    with t.subtest("apt-get install postgresql works from the Debian mirror"):
        machine.succeed("apt-get install -y -q postgresql", timeout=600)
        machine.wait_for_unit(f"postgresql@{t.pg_version}-main.service")
        out = machine.succeed("su postgres -c \"psql -XAtc 'show server_version_num'\"")
        assert out.strip().startswith(str(t.pg_version)), out

    with t.subtest("the guest's PostgreSQL is in the guest's network, not the host's"):
        machine.succeed("ss -ltn | grep -q '127.0.0.1:5432'")
        host = subprocess.run(["ss", "-ltnH", "sport", "= :5432"], capture_output=True, text=True)
        assert "5432" not in host.stdout, f"something listens on the host's 5432: {host.stdout}"
