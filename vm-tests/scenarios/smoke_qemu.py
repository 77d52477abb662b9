"""QEMU machine boots to ssh with its own kernel, runs the binary, reaches the mirror."""

import os
import socket

TIER = "qemu"
SUITES = ("bookworm",)


def test(t, machine):
    with t.subtest("the machine runs its own kernel, not the host's"):
        guest = machine.succeed("uname -r").strip()
        assert guest != os.uname().release, guest
        t.log(f"guest kernel {guest}")

    with t.subtest("the release binary runs in the machine"):
        assert machine.succeed(f"{machine.pgaas} --version").startswith("pgaas ")
        machine.succeed(f"{machine.pgaas} render --root /tmp/x >/dev/null 2>&1 && test -s /tmp/x/etc/pgbouncer/pgbouncer.ini")

    with t.subtest("the machine reaches the Debian mirror and installs from it"):
        machine.succeed("apt-get update -q", timeout=600)
        machine.succeed("apt-get install -y -q hello && hello", timeout=600)

    with t.subtest("the host's connections arrive from 10.0.2.2 (a real network hop)"):
        machine.succeed("systemctl is-active --quiet ssh")
        host, port = machine.endpoint(22)
        with socket.create_connection((host, port), timeout=10) as s:
            s.recv(64)
            out = machine.succeed("ss -tnH state established '( sport = :22 )'")
        assert "10.0.2.2:" in out, out
