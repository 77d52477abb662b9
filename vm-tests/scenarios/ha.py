"""High availability on three machines: two PostgreSQL nodes under Patroni and a witness, etcd on
all three, installed by `pgaas install` from the package. A tenant writes through its multi-host
URL, directly and through PgBouncer, while etcd loses one member and then two, while the
primary's postmaster is killed, and while the primary's machine dies; every acknowledged write is
on the primary afterwards, the rules hold there, and the dead machine comes back as a standby.
Both data nodes archive into one S3 repository (moto on the host): the primary's install makes the
stanza and first backup, and after the machine's death the promoted node takes the next one."""

import re
import threading
import time

from harness import client
from harness.s3 import S3
from harness.platform import (create_tenant, fetch_ca, first_api_key, install, install_from_package,
                              refused_by_hba, wait_connects, wait_refused)

TIER = "nspawn"
SUITES = ("bookworm",)
MACHINES = ("db1", "db2", "witness")
SECRETS = "/etc/pgaas/secrets/cluster"
S3_CA = "/etc/pgaas/tls/s3-ca.crt"
TTL = 20


def settings(machines, me, s3):
    nodes = "\n".join(
        f"    - {{ name: {name}, address: {m.lan_address}{', witness: true' if name == 'witness' else ''} }}"
        for name, m in machines.items())
    # A failover within about 20 s (Patroni's defaults give 30 s of leader-key lifetime).
    return (f"public_host: pgaas-vm.test\n"
            f"archive:\n  archive_timeout_secs: 15\n{s3.settings_yaml(S3_CA)}"
            f"cluster:\n  name: pgaas_vm\n  node: {me}\n  ttl_secs: {TTL}\n  loop_wait_secs: 2\n"
            f"  retry_timeout_secs: 5\n  nodes:\n{nodes}\n")


def patroni(m):
    """This node's Patroni REST answer (`GET /patroni`), or None when it does not answer."""
    rc, out, _ = m.execute("curl -s -m 3 http://$(ip -4 -o addr show eth1 | awk '{print $4}' "
                           "| cut -d/ -f1):8008/patroni")
    return out if rc == 0 else None


def role(m):
    out = patroni(m)
    if out is None:
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


def wait_sync_standby(m, timeout=120):
    """`pgaas status` on the primary `m` until it names a synchronous standby, and its
    PostgreSQL streams to that standby synchronously (Patroni's key can name the standby a
    moment before or after PostgreSQL does: a crash in between loses commits acknowledged
    locally, as non-strict synchronous mode allows); `pgaas status`'s output."""
    deadline = time.monotonic() + timeout
    while True:
        out = m.succeed("pgaas status")
        if " sync_standby " in out and re.search(r"streams to: \S+ \(streaming, sync\)", out):
            return out
        assert time.monotonic() < deadline, f"{out}\n{patroni(m)}"
        time.sleep(2)


class Writer:
    """Inserts through a tenant's URL as fast as psql allows, recording what was acknowledged."""

    def __init__(self, url, table):
        self.url, self.table, self.acked, self.stop = url, table, [], False
        self.last_error = ""
        # id -> "server address|WAL position after the insert", for a failure message.
        self.where = {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        i = 1
        while not self.stop:
            rc, out, err = client.psql(
                self.url, f"insert into {self.table} values ({i}) "
                          "returning inet_server_addr(), pg_current_wal_lsn()", timeout=30)
            if rc == 0:
                self.acked.append((i, time.monotonic()))
                self.where[i] = out.strip()
            else:
                self.last_error = err.strip()
                time.sleep(0.2)
            i += 1

    def since(self, t):
        return [ts for _, ts in self.acked if ts > t]

    def wait(self, n, since, timeout=180):
        deadline = time.monotonic() + timeout
        while len(self.since(since)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.table}: only {len(self.since(since))} writes acknowledged within "
                    f"{timeout:.0f}s; last error: {self.last_error}")
            time.sleep(0.2)

    def resumed(self, t):
        """Seconds from `t` to the first write acknowledged after it."""
        return self.since(t)[0] - t

    def outage(self, t):
        """The longest stretch without an acknowledged write from `t` on."""
        times = [t] + self.since(t)
        return max(b - a for a, b in zip(times, times[1:]))

    def assert_none_lost(self, url):
        """Every acknowledged write is in the table as `url` (a primary, or a standby) reads it."""
        # The acknowledged list first, then the table: the writer may still run, and a write
        # acknowledged after the SELECT's snapshot is not in what it returns.
        acked = list(self.acked)
        have = self._ids(url)
        lost = [i for i, _ in acked if i not in have]
        if not lost:
            return
        # Read again: a write there now was there before (the check would be wrong), one still
        # missing is lost.
        there_now = self._ids(url)
        late = [i for i in lost if i in there_now]
        # Where each lost write and its acknowledged neighbours went (server, WAL position), and
        # when (monotonic seconds), so that a loss can be placed against the step's events.
        when = dict(acked)
        around = sorted({j for i in lost[:3] for j in when if abs(j - i) <= 2})
        detail = "; ".join(f"{j}{' LOST' if j in lost else ''} at {when[j]:.2f} on {self.where.get(j)}"
                           for j in around)
        raise AssertionError(
            f"{self.table}: {len(lost)} acknowledged writes missing from the first read: {lost[:20]}; "
            f"a second read has {len(late)} of them: {late[:20]} ({detail})")

    def _ids(self, url):
        return set(int(x) for x in client.psql_ok(url, f"select id from {self.table}").split())

    def finish(self):
        self.stop = True
        self.thread.join(timeout=60)


def pooler_view(pooled, nodes):
    """What each node's PgBouncer answers when asked alone, for a failure message: whether its
    server is in recovery, and whether it lets a read-write session through."""
    lines = []
    for name, m in nodes.items():
        alone = re.sub(r"@[^@/]+/", f"@{m.lan_address}:6432/", pooled, count=1)
        rc, out, err = client.psql(alone.replace("target_session_attrs=read-write",
                                                 "target_session_attrs=any"),
                                   "select pg_is_in_recovery()")
        rw, _, rw_err = client.psql(alone, "select 1")
        lines.append(f"{name} (Patroni: {role(m)}): in recovery: "
                     f"{out.strip() if rc == 0 else err.strip()}; read-write session: "
                     f"{'accepted' if rw == 0 else rw_err.strip()}")
    return "\n".join(lines)


def postmaster(m):
    """The pid of the postmaster Patroni runs on `m`, checked to be one."""
    pid = m.succeed("d=$(sed -n 's/^ *data_dir: *//p' /etc/patroni/config.yml | tr -d \"'\\\"\"); "
                    "head -1 $d/postmaster.pid").strip()
    args = m.succeed(f"ps -o args= -p {pid}")
    assert "/bin/postgres -D" in args, args
    return pid


def test(t, machines):
    writers = []
    try:
        scenario(t, machines, writers)
    finally:
        # A failed subtest leaves its writers running: stop them before the machines go.
        for w in writers:
            w.stop = True
        for w in writers:
            w.finish()


def scenario(t, machines, writers):
    db1, db2, witness = machines["db1"], machines["db2"], machines["witness"]
    data = {"db1": db1, "db2": db2}

    with t.subtest("the package on every machine; the cluster's secrets made once and copied"):
        # The repository both data nodes archive into, on the host's end of the LAN.
        s3 = S3(t.workdir, db1.lan.host_address)
        t.cleanups.append(s3.stop)
        s3.start()
        for name, m in machines.items():
            install_from_package(m)
            m.write_file("/etc/pgaas/pgaas.yaml", settings(machines, name, s3))
            m.succeed(f"echo '{s3.hosts_line.strip()}' >> /etc/hosts")
            m.write_file(S3_CA, s3.ca_pem)
            m.succeed("mkdir -p -m 0700 /etc/pgaas/secrets")
            m.write_file("/etc/pgaas/secrets/s3-credentials", s3.credentials, mode="0600")
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

    with t.subtest("archiving: the primary's install made the stanza and a backup; the standby's "
                   "timer leaves backups to the primary"):
        out = data[primary].succeed("pgaas backup status")
        assert "repository 2:  ok" in out and "repository 1" not in out, out
        out = data[standby].succeed("pgaas backup base --type full")
        assert "is a standby" in out, out
        for m in data.values():
            m.succeed("systemctl is-active pgaas-worker pgaas-base-backup-full.timer")

    with t.subtest("pgaas status on each node shows the members and etcd"):
        wait_sync_standby(data[primary])
        out = data[standby].succeed("pgaas status")
        assert " leader " in out and " sync_standby " in out, out
        assert "db1 healthy, db2 healthy, witness healthy" in out, out
        assert "WARNING" not in out, out

    with t.subtest("a cluster setting changed in pgaas.yaml reaches Patroni through install"):
        for m in data.values():
            m.succeed("sed -i -E 's/^(\\s*maximum_lag_on_failover_bytes:).*/\\1 2097152/' "
                      "/etc/pgaas/pgaas.yaml && grep -q 'maximum_lag_on_failover_bytes: 2097152' "
                      "/etc/pgaas/pgaas.yaml")
        plan = data[standby].execute("pgaas install --dry-run 2>&1")[1]
        assert "Patroni's cluster-wide setting maximum_lag_on_failover: 1048576 -> 2097152" in plan, \
            plan[-3000:]
        began = time.monotonic()
        _, report = install(data[standby], timeout=600)
        assert "Patroni's cluster-wide settings" in report.with_status("changed"), report.output[-3000:]
        config = data[primary].succeed(
            "curl -s -m 3 http://$(ip -4 -o addr show eth1 | awk '{print $4}' | cut -d/ -f1):8008/config")
        assert '"maximum_lag_on_failover": 2097152' in config, config
        plan = data[primary].execute("pgaas install --dry-run 2>&1")[1]
        assert re.search(r"Patroni's cluster-wide settings \.\.\. ok$", plan, re.M), plan[-3000:]
        t.log(f"install again on {standby}: {time.monotonic() - began:.1f}s")

    with t.subtest("a tenant gets multi-host URLs, direct and pooled; it writes through both"):
        api = client.Api(data[primary], key)
        api.wait_ready()
        ca = fetch_ca(t, data[primary])
        tenant = create_tenant(api, "ha")
        created = time.monotonic()
        tls = f"sslmode=verify-full&sslrootcert={ca}"
        url = tenant["connection_string"]
        # Both data nodes, the one that answered (the primary) first: the standby's access
        # rules learn the new tenant a moment later.
        both = f"{data[primary].lan_address}:5432,{data[standby].lan_address}:5432"
        assert f"@{both}/" in url and "target_session_attrs=read-write" in url, url
        url = url.replace("sslmode=require", tls) + "&connect_timeout=3"
        # PgBouncer runs on each data node: the pooled URL names both of them too.
        pooled = tenant.get("DATABASE_URL")
        assert pooled, f"no pooled URL in the answer: {sorted(tenant)}"
        assert f"@{both.replace(':5432', ':6432')}/" in pooled \
            and "target_session_attrs=read-write" in pooled, pooled
        pooled = pooled.replace("sslmode=require", tls) + "&connect_timeout=3"
        client.psql_ok(url, "create table acked (id bigint primary key); "
                            "create table pooled (id bigint primary key)")
        writer = Writer(url, "acked")
        writers.append(writer)
        pooled_writer = Writer(pooled, "pooled")
        writers.append(pooled_writer)
        writer.wait(20, 0)
        pooled_writer.wait(20, 0, timeout=60)
        # libpq does not try the next host after a failed authentication: were the first node
        # listed a standby whose PgBouncer has not learnt the new tenant, the pooled URL would
        # fail. The primary is listed first, and the standby's pgaas follows its tenants' secrets
        # every 250 ms (which matters once a failover has made the first host the standby).
        t.log(f"first write {writer.resumed(created):.1f}s after the tenant was created, "
              f"{pooled_writer.resumed(created):.1f}s through PgBouncer")
        assert pooled_writer.resumed(created) < 5, "the standby's PgBouncer learnt the tenant late"
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
        standby_only = url.replace(both, f"{data[standby].lan_address}:5432") \
            .replace("target_session_attrs=read-write", "target_session_attrs=any")
        err = wait_refused(standby_only, timeout=10)
        assert refused_by_hba(err), err
        api.call("DELETE", f"{wl}/{api.call('GET', wl, expect=200)[1]['data'][0]['id']}", expect=200)
        wait_connects(standby_only, timeout=10)

    with t.subtest("etcd loses one member, then two: the primary keeps taking writes throughout"):
        witness.succeed("systemctl stop etcd")
        one = time.monotonic()
        writer.wait(10, one, timeout=30)
        out = data[primary].succeed("pgaas status")
        assert "etcd has 2 of 3 members healthy" in out, out
        data[standby].succeed("systemctl stop etcd")
        two = time.monotonic()
        # Without failsafe_mode Patroni demotes the primary once it cannot renew its leader key;
        # with it, the primary keeps serving while both members answer its REST API. Held for a
        # whole leader-key lifetime, so a demotion cannot be missed.
        failsafe = False
        while time.monotonic() < two + TTL:
            answer = patroni(data[primary]) or ""
            failsafe = failsafe or '"failsafe_mode_is_active": true' in answer
            time.sleep(1)
        assert failsafe, f"Patroni on {primary} never said failsafe mode is active: " \
                         f"{patroni(data[primary])}"
        assert role(data[primary]) == "primary", patroni(data[primary])
        for w in (writer, pooled_writer):
            w.wait(1, time.monotonic() - 1, timeout=10)
            gap = w.outage(one)
            assert gap < 5, f"{w.table}: writes paused for {gap:.1f}s while etcd lost members"
        t.log(f"etcd down to one member for {time.monotonic() - two:.0f}s; longest pause in writes "
              f"{writer.outage(one):.1f}s direct, {pooled_writer.outage(one):.1f}s pooled")
        out = data[primary].succeed("pgaas status")
        # The member left has no majority either, so it does not call itself healthy.
        assert re.search(r"etcd has [01] of 3 members healthy, no majority", out), out
        for m in (witness, data[standby]):
            m.succeed("systemctl start etcd")
        back = time.monotonic()
        assert wait_roles(machines, timeout=60) == (primary, standby)
        wait_sync_standby(data[primary], timeout=60)
        out = data[primary].succeed("pgaas status")
        assert "db1 healthy, db2 healthy, witness healthy" in out and "WARNING" not in out, out
        t.log(f"etcd whole again: {primary} leader, {standby} synchronous "
              f"{time.monotonic() - back:.1f}s after etcd started")
        writer.assert_none_lost(url)

    with t.subtest("kill -9 of the primary's postmaster: writes resume, nothing acknowledged lost"):
        before = postmaster(data[primary])
        data[primary].succeed(f"kill -9 {before}")
        killed = time.monotonic()
        t.log(f"killed at {killed:.2f} (monotonic, as the writers record acknowledgements)")
        # Gone, or a zombie its parent has yet to reap.
        data[primary].wait_until_succeeds(
            f"! kill -0 {before} 2>/dev/null || ps -o stat= -p {before} | grep -q Z",
            timeout=10, interval=0.1)
        writer.wait(10, killed, timeout=120)
        now_primary, now_standby = wait_roles(machines, timeout=60)
        after = postmaster(data[now_primary])
        assert (now_primary, after) != (primary, before), "the postmaster did not die"
        how = "Patroni restarted PostgreSQL in place" if now_primary == primary else \
            f"Patroni failed over to {now_primary}"
        t.log(f"{how}; writes resumed {writer.resumed(killed):.1f}s after the kill")
        primary, standby = now_primary, now_standby
        writer.assert_none_lost(url)
        pooled_writer.wait(5, killed, timeout=60)
        t.log(f"pooled writes resumed {pooled_writer.resumed(killed):.1f}s after the kill")
        # The next failover needs a synchronous standby to promote.
        wait_sync_standby(data[primary], timeout=90)

    with t.subtest("the primary's machine dies: the standby takes over, nothing acknowledged lost"):
        # Both writers are taking writes when the machine dies.
        pooled_writer.wait(5, time.monotonic(), timeout=30)
        killed = time.monotonic()
        t.log(f"killed at {killed:.2f} (monotonic, as the writers record acknowledgements)")
        data[primary].crash()
        writer.wait(20, killed, timeout=240)
        t.log(f"writes stopped for {writer.outage(killed):.1f}s when the primary's machine died")
        new_primary, old = standby, primary
        survivor_url = url.replace(both, f"{data[new_primary].lan_address}:5432")
        writer.assert_none_lost(survivor_url)
        t.log(f"{len(writer.acked)} acknowledged writes, none lost")
        out = data[new_primary].succeed("pgaas status")
        assert re.search(rf"{new_primary}\s+leader", out), out

    with t.subtest("the promoted node archives and backs up into the same repository"):
        # Its worker takes over and starts an incremental backup at once (a segment the dead
        # primary never pushed would be a gap no replay crosses).
        data[new_primary].wait_until_succeeds(
            "journalctl -u pgaas-worker --no-pager | grep -q 'incremental backup after the promotion taken'",
            timeout=120)
        out = data[new_primary].succeed("pgaas backup status --json")
        assert '"failing": false' in out, out

    with t.subtest("the dead machine boots again and rejoins as a standby"):
        data[old].boot_again()
        data[old].wait_until_running()
        deadline = time.monotonic() + 240
        while role(data[old]) != "standby":
            assert time.monotonic() < deadline, data[old].succeed(
                "journalctl -u patroni --no-pager | tail -n 60")
            time.sleep(2)
        writer.finish()
        wait_sync_standby(data[new_primary])
        old_url = survivor_url.replace(data[new_primary].lan_address, data[old].lan_address)
        old_url = old_url.replace("target_session_attrs=read-write", "target_session_attrs=any")
        deadline = time.monotonic() + 60
        while True:
            try:
                writer.assert_none_lost(old_url)
                break
            except AssertionError:
                assert time.monotonic() < deadline, "the rejoined node misses acknowledged writes"
                time.sleep(1)
        assert client.psql_ok(old_url, "show transaction_read_only") == "on"

    # Last, so that a pooler stuck on the old roles does not hide how the rest went.
    with t.subtest("writes through the pooled URL resumed on the new primary, none lost"):
        try:
            pooled_writer.wait(20, killed, timeout=max(1, killed + 60 - time.monotonic()))
        except AssertionError as e:
            raise AssertionError(f"{e}\n{pooler_view(pooled, data)}") from None
        t.log(f"pooled writes resumed {pooled_writer.resumed(killed):.1f}s after the machine died")
        pooled_writer.finish()
        pooled_writer.assert_none_lost(survivor_url)
        t.log(f"{len(pooled_writer.acked)} acknowledged pooled writes, none lost")
