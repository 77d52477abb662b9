"""High availability on three machines: two PostgreSQL nodes under Patroni and a witness, etcd on
all three, installed by `pgaas install` from the package. A tenant writes through its multi-host
URL while the primary's machine dies; every acknowledged write is on the new primary, the rules
hold there, and the dead machine comes back as a standby."""

import re
import threading
import time

from harness import client
from harness.platform import (create_tenant, fetch_ca, first_api_key, install, install_from_package,
                              refused_by_hba, wait_connects, wait_refused)

TIER = "nspawn"
SUITES = ("bookworm",)
MACHINES = ("db1", "db2", "witness")
SECRETS = "/etc/pgaas/secrets/cluster"


def settings(machines, me):
    nodes = "\n".join(
        f"    - {{ name: {name}, address: {m.lan_address}{', witness: true' if name == 'witness' else ''} }}"
        for name, m in machines.items())
    # A failover within about 20 s (Patroni's defaults give 30 s of leader-key lifetime).
    return (f"public_host: pgaas-vm.test\n"
            f"archive:\n  enabled: false\n"
            f"cluster:\n  name: pgaas_vm\n  node: {me}\n  ttl_secs: 20\n  loop_wait_secs: 2\n"
            f"  retry_timeout_secs: 5\n  nodes:\n{nodes}\n")


def role(m):
    rc, out, _ = m.execute("curl -s -m 3 http://$(ip -4 -o addr show eth1 | awk '{print $4}' "
                           "| cut -d/ -f1):8008/patroni")
    if rc != 0:
        return None
    return "primary" if '"role": "master"' in out or '"role": "primary"' in out else \
        ("standby" if '"role": "replica"' in out else None)


def wait_roles(machines, timeout=180):
    """(primary, standby) once Patroni names one of each among the data nodes."""
    deadline = time.monotonic() + timeout
    while True:
        roles = {name: role(m) for name, m in machines.items() if name != "witness"}
        primaries = [n for n, r in roles.items() if r == "primary"]
        standbys = [n for n, r in roles.items() if r == "standby"]
        if len(primaries) == 1 and len(standbys) == 1:
            return primaries[0], standbys[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no primary and standby within {timeout}s: {roles}")
        time.sleep(1)


class Writer:
    """Inserts through the tenant's URL as fast as psql allows, recording what was acknowledged."""

    def __init__(self, url):
        self.url, self.acked, self.stop = url, [], False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 1
        while not self.stop:
            rc, _, _ = client.psql(self.url, f"insert into acked values ({i})", timeout=30)
            if rc == 0:
                self.acked.append((i, time.monotonic()))
            else:
                time.sleep(0.2)
            i += 1

    def wait(self, n, since, timeout=180):
        deadline = time.monotonic() + timeout
        while sum(1 for _, t in self.acked if t > since) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {sum(1 for _, t in self.acked if t > since)} writes "
                                     f"acknowledged within {timeout}s")
            time.sleep(0.2)

    def finish(self):
        self.stop = True
        self.thread.join(timeout=60)


def test(t, machines):
    db1, db2, witness = machines["db1"], machines["db2"], machines["witness"]
    data = {"db1": db1, "db2": db2}

    with t.subtest("the package on every machine; the cluster's secrets made once and copied"):
        for name, m in machines.items():
            install_from_package(m)
            m.write_file("/etc/pgaas/pgaas.yaml", settings(machines, name))
        out = db1.succeed("pgaas cluster secrets 2>&1")
        assert "Copy it to" in out, out
        for other in (db2, witness):
            other.succeed("mkdir -p -m 0700 /etc/pgaas/secrets")
            other.write_file(SECRETS, db1.read_file(SECRETS), mode="0600")
        # Asking again changes nothing.
        again = db1.succeed("pgaas cluster secrets 2>&1")
        assert "left as it is" in again, again

    with t.subtest("pgaas install on the three machines at once: etcd, Patroni, one primary"):
        reports = {}

        def run(name, m):
            try:
                reports[name] = install(m, timeout=1500)
            except AssertionError as e:
                reports[name] = e

        threads = [threading.Thread(target=run, args=(n, m)) for n, m in machines.items()]
        start = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        failed = {n: r for n, r in reports.items() if isinstance(r, AssertionError)}
        assert not failed, "\n\n".join(f"{n}: {e}" for n, e in failed.items())
        t.log(f"three installs in {time.monotonic() - start:.0f}s")
        primary, standby = wait_roles(machines)
        t.log(f"primary {primary}, standby {standby}")
        keys = [first_api_key(r[1].output) for n, r in reports.items()
                if "First admin API key" in r[1].output]
        assert len(keys) == 1, "exactly one node made the first admin key"
        key = keys[0]
        for name in ("witness",):
            rc, _, _ = machines[name].execute("systemctl is-active --quiet patroni || "
                                              "systemctl is-active --quiet postgresql")
            assert rc != 0, "the witness runs PostgreSQL"

    with t.subtest("pgaas status on each node shows the members and etcd"):
        out = data[standby].succeed("pgaas status")
        assert " leader " in out and " sync_standby " in out, out
        assert "db1 healthy, db2 healthy, witness healthy" in out, out
        assert "WARNING" not in out, out

    with t.subtest("a tenant gets a multi-host URL; it writes through it from the host"):
        api = client.Api(data[primary], key)
        api.wait_ready()
        ca = fetch_ca(t, data[primary])
        tenant = create_tenant(api, "ha")
        url = tenant["connection_string"]
        assert f"@{db1.lan_address}:5432,{db2.lan_address}:5432/" in url \
            and "target_session_attrs=read-write" in url, url
        url = url.replace("sslmode=require", f"sslmode=verify-full&sslrootcert={ca}") \
            + "&connect_timeout=3"
        client.psql_ok(url, "create table acked (id bigint primary key)")
        writer = Writer(url)
        writer.wait(20, 0)
        # The standby's API answers reads and refuses writes with a retry hint.
        sapi = client.Api(data[standby], key)
        sapi.wait_ready()
        sapi.call("GET", f"/api/databases/{tenant['id']}", expect=200)
        status, doc = sapi.call("POST", "/api/databases",
                                {"friendlyName": "on the standby", "ownerEmail": "x@pgaas-vm.test"})
        assert status == 503, (status, doc)

    with t.subtest("an allow-list change through the primary holds on the standby"):
        wl = f"/api/databases/{tenant['id']}/whitelist"
        # The host reaches the LAN from its uplink address; list something else.
        api.call("POST", wl, {"ipAddress": "192.0.2.0/24", "description": "not the host"}, expect=201)
        standby_only = url.replace(f"{db1.lan_address}:5432,{db2.lan_address}:5432",
                                   f"{data[standby].lan_address}:5432") \
            .replace("target_session_attrs=read-write", "target_session_attrs=any")
        err = wait_refused(standby_only, timeout=10)
        assert refused_by_hba(err), err
        api.call("DELETE", f"{wl}/{api.call('GET', wl, expect=200)[1]['data'][0]['id']}", expect=200)
        wait_connects(standby_only, timeout=10)

    with t.subtest("the primary's machine dies: the standby takes over, nothing acknowledged lost"):
        killed = time.monotonic()
        data[primary].crash()
        writer.wait(20, killed, timeout=240)
        times = [killed] + [ts for _, ts in writer.acked if ts > killed]
        outage = max(b - a for a, b in zip(times, times[1:]))
        t.log(f"writes stopped for {outage:.1f}s when the primary's machine died")
        new_primary, old = standby, primary
        survivor_url = url.replace(f"{db1.lan_address}:5432,{db2.lan_address}:5432",
                                   f"{data[new_primary].lan_address}:5432")
        have = set(int(x) for x in client.psql_ok(survivor_url, "select id from acked").split())
        lost = [i for i, _ in writer.acked if i not in have]
        assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:20]}"
        t.log(f"{len(writer.acked)} acknowledged writes, none lost")
        out = data[new_primary].succeed("pgaas status")
        assert re.search(rf"{new_primary}\s+leader", out), out

    with t.subtest("the dead machine boots again and rejoins as a standby"):
        data[old].boot_again()
        data[old].wait_until_running()
        deadline = time.monotonic() + 240
        while role(data[old]) != "standby":
            assert time.monotonic() < deadline, data[old].succeed(
                "journalctl -u patroni --no-pager | tail -n 60")
            time.sleep(2)
        writer.finish()
        deadline = time.monotonic() + 120
        while True:
            out = data[new_primary].succeed("pgaas status")
            if " sync_standby " in out:
                break
            assert time.monotonic() < deadline, out
            time.sleep(2)
        old_url = survivor_url.replace(data[new_primary].lan_address, data[old].lan_address)
        old_url = old_url.replace("target_session_attrs=read-write", "target_session_attrs=any")
        deadline = time.monotonic() + 60
        while True:
            have = set(int(x) for x in client.psql_ok(old_url, "select id from acked").split())
            if all(i in have for i, _ in writer.acked):
                break
            assert time.monotonic() < deadline, "the rejoined node misses acknowledged writes"
            time.sleep(1)
        assert client.psql_ok(old_url, "show transaction_read_only") == "on"
