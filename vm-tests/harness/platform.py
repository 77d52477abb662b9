"""What scenarios of an installed pgaas share: running `pgaas install`, reading its report, the
admin key it prints once, the CA it made, tenants created through the API."""

import re
import time
import uuid

from . import client

STEP = re.compile(r"^\[\s*(\d+)/(\d+)\] (.+?) \.\.\. ?(ok|changed|FAILED)?\s*$")
SUMMARY = re.compile(r"summary: ok=(\d+) changed=(\d+) failed=(\d+)")
PUBLIC_HOST = "pgaas-vm.test"


class InstallReport:
    def __init__(self, output):
        self.output = output
        self.steps = []  # (name, status)
        pending = None
        for line in output.splitlines():
            m = STEP.match(line)
            if m:
                pending = m.group(3)
                if m.group(4):
                    self.steps.append((pending, m.group(4)))
                    pending = None
            elif pending and line.strip() in ("ok", "changed") or (pending and line.startswith("FAILED")):
                self.steps.append((pending, line.strip().split()[0]))
                pending = None
        s = SUMMARY.search(output)
        if not s:
            raise AssertionError("no `summary: ok=.. changed=.. failed=..` line in the output:\n"
                                 + output[-3000:])
        self.ok, self.changed, self.failed = (int(x) for x in s.groups())

    def with_status(self, status):
        return [n for n, st in self.steps if st == status]


def seed_settings(machine, public_host=PUBLIC_HOST):
    """What an operator writes before installing a host without a public DNS name: the name its
    clients use. `pgaas install` keeps values already in the file (and reads no environment)."""
    machine.write_file("/etc/pgaas/pgaas.yaml", f"public_host: {public_host}\n")


def install_from_package(machine):
    """apt installs the .deb that vm-tests/run built (its dependencies come from the mirror), and
    the scenario runs the package's binary from then on, as an operator would."""
    assert machine.deb, "vm-tests/run built no package"
    out = machine.succeed(f"apt-get install -y -q {machine.deb_in_guest} 2>&1", timeout=600)
    machine.succeed("test -x /usr/bin/pgaas && /usr/bin/pgaas --version")
    machine.pgaas = "/usr/bin/pgaas"
    return out


def install(machine, args="--self-signed --yes", env="", timeout=1200, expect_success=True):
    """Run the binary under test's `install` (the first time it copies itself into place)."""
    cmd = f"{env} {machine.pgaas} install {args} 2>&1"
    rc, out, err = machine.execute(cmd, timeout=timeout)
    if expect_success and rc != 0:
        raise AssertionError(f"`pgaas install {args}` exited {rc}:\n{out[-6000:]}{err[-2000:]}")
    return rc, InstallReport(out) if "summary:" in out else out


def first_api_key(output):
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if "First admin API key" in line:
            return lines[i + 1].strip()
    raise AssertionError("install did not print the first admin API key:\n" + output[-3000:])


def fetch_ca(t, machine, path="/etc/pgaas/tls/ca.crt"):
    """The installed local CA, copied to the host (clients use it as sslrootcert)."""
    pem = machine.read_file(path)
    assert "BEGIN CERTIFICATE" in pem, pem
    local = t.workdir / "installed-ca.crt"
    local.write_text(pem)
    return local


def create_tenant(api, label="vm-tests"):
    status, doc = api.call("POST", "/api/databases",
                           {"friendlyName": f"{label} {uuid.uuid4().hex[:6]}",
                            "ownerEmail": "owner@pgaas-vm.test"}, expect=201)
    assert doc["success"] is True, doc
    return doc["data"]


def wait_connects(url, timeout=30):
    """Allow-list and pooler changes apply within a moment; poll until psql gets in."""
    deadline = time.monotonic() + timeout
    while True:
        rc, out, err = client.psql(url, "select 1")
        if rc == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"could not connect within {timeout}s: {err}")
        time.sleep(1)


def wait_refused(url, timeout=30):
    """Poll until a connection is refused by pg_hba (the rejection, not some other error)."""
    deadline = time.monotonic() + timeout
    while True:
        rc, out, err = client.psql(url, "select 1")
        if rc != 0 and refused_by_hba(err):
            return err
        if time.monotonic() > deadline:
            raise AssertionError(f"still not refused by pg_hba after {timeout}s: rc={rc} {out}{err}")
        time.sleep(1)


def refused_by_hba(err):
    """PostgreSQL says `no pg_hba.conf entry` / `rejects connection`; PgBouncer says the same
    through its own hba, or closes with `login rejected`."""
    e = err.lower()
    return "pg_hba.conf" in e or "rejects connection" in e or "login rejected" in e


def timer_calendar(machine, timer):
    out = machine.succeed(f"systemctl show -P TimersCalendar {timer}")
    m = re.search(r"OnCalendar=(.*?) ;", out)
    assert m, f"{timer} has no OnCalendar: {out}"
    return m.group(1).strip()


def times_of_day(machine, calendar, n=4):
    """The times of day of the next `n` elapses of a calendar expression."""
    out = machine.succeed(f"systemd-analyze calendar --iterations={n} '{calendar}'")
    return sorted({m.group(1) for m in re.finditer(r"(\d\d:\d\d:\d\d)", out.split("Next elapse")[1])})


def main_pid(machine, unit):
    return machine.unit_property(unit, "MainPID")


def postmaster_pid(machine, pg_version):
    return machine.succeed(f"head -1 /var/lib/postgresql/{pg_version}/main/postmaster.pid").strip()
