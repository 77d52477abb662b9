"""QEMU end to end: the host is a distinct client across a real network hop (10.0.2.2)."""

import time

from harness import client
from harness.platform import (create_tenant, fetch_ca, first_api_key, install, install_from_package,
                              refused_by_hba, seed_settings, wait_connects, wait_refused)

TIER = "qemu"
SUITES = ("bookworm",)
HOST_SEEN_AS = "10.0.2.2"


def test(t, m):
    v = t.pg_version
    units = [f"postgresql@{v}-main.service", "pgbouncer.service", "pgaas-api.service"]

    with t.subtest("install --self-signed --yes on a machine with its own kernel and network"):
        install_from_package(m)
        seed_settings(m)
        _, report = install(m, timeout=1800)
        key = first_api_key(report.output)
        for unit in units:
            m.wait_for_unit(unit, timeout=120)
        api = client.Api(m, key)
        api.wait_ready()
        ca = fetch_ca(t, m)
        tenant = create_tenant(api, "net")
        direct = client.tenant_url(tenant["connection_string"], m, ca)
        pooled = client.tenant_url(tenant["DATABASE_URL"], m, ca)
        wl = f"/api/databases/{tenant['id']}/whitelist"

    with t.subtest("an allow-list entry not covering the host: refused directly and via PgBouncer"):
        api.call("POST", wl, {"ipAddress": "192.0.2.0/24", "description": "not the host"}, expect=201)
        for url in (direct, pooled):
            err = wait_refused(url)
            t.log(err.strip().splitlines()[-1])

    with t.subtest("an entry covering the host's address (10.0.2.2): it connects, both ways"):
        _, doc = api.call("POST", wl, {"ipAddress": f"{HOST_SEEN_AS}/32", "description": "the host"},
                          expect=201)
        entry = doc["data"]["id"]
        for url in (direct, pooled):
            wait_connects(url)
        rc, out, err = client.psql(direct, "select inet_client_addr()")
        assert out.strip() == HOST_SEEN_AS, f"the server saw {out.strip()!r} {err}"

    with t.subtest("superuser over TCP refused across the network; plaintext refused"):
        host, port = m.endpoint(5432)
        su = f"host={host} port={port} user=postgres dbname=postgres sslmode=require connect_timeout=10"
        rc, _, err = client.psql(su, "select 1")
        assert rc != 0 and refused_by_hba(err), f"superuser over TCP: rc={rc} {err}"
        rc, _, err = client.psql(client.tenant_url(tenant["connection_string"], m, None, "disable"),
                                 "select 1")
        assert rc != 0, "plaintext accepted"

    with t.subtest("across the hop: the pooler's console, server roles and neighbours are refused "
                   "before any password, on both ports"):
        other = create_tenant(api, "net-other")
        # The tenant's list covers the host, so its own database asks for a password; the
        # other tenant (no list) is probed under every name it should not reach.
        problems = client.probe_access(m, tenant, other)
        assert not problems, "\n".join(problems)

    with t.subtest("reboot: PostgreSQL, PgBouncer, the API and the timers come back; tenant reachable"):
        rc, _, err = client.psql(direct, "create table r (x int); insert into r values (42)")
        assert rc == 0, err
        m.reboot()
        m.wait_until_running(timeout=300)
        for unit in units + ["pgaas-backup.timer", "pgaas-cert-renew.timer"]:
            m.wait_for_unit(unit, timeout=120)
        api = client.Api(m, key)
        api.wait_ready()
        api.call("GET", f"/api/databases/{tenant['id']}", expect=200)
        for url in (direct, pooled):
            wait_connects(url, timeout=60)
        rc, out, err = client.psql(direct, "select x from r")
        assert rc == 0 and out.strip() == "42", err

    with t.subtest("removing the host's entry refuses it again"):
        api.call("DELETE", f"{wl}/{entry}", expect=200)
        for url in (direct, pooled):
            wait_refused(url)

    with t.subtest("continuous archiving: crash the machine hard, restore one tenant to before "
                   "a DROP TABLE (in place, through the API and the worker)"):
        for unit in ("pgaas-worker.service", "pgaas-base-backup-full.timer",
                     "pgaas-base-backup-diff.timer", "pgaas-drill.timer"):
            m.wait_for_unit(unit, timeout=120)
        api.call("POST", wl, {"ipAddress": f"{HOST_SEEN_AS}/32", "description": "the host"},
                 expect=201)
        wait_connects(direct)
        # A backup that holds the tenant (it is younger than the installer's first one).
        m.succeed("systemctl start pgaas-base-backup@incr.service", timeout=600)
        assert m.unit_property("pgaas-base-backup@incr.service", "Result") == "success"
        time.sleep(2)
        rc, _, err = client.psql(direct, "create table p (id int); "
                                         "insert into p select generate_series(1, 1000)")
        assert rc == 0, err
        rc, when, err = client.psql(direct, "select to_char(clock_timestamp() at time zone 'UTC', "
                                            "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        assert rc == 0, err
        time.sleep(1)
        rc, _, err = client.psql(direct, "drop table p")
        assert rc == 0, err
        m.crash_and_boot()
        m.wait_until_running(timeout=300)
        for unit in units + ["pgaas-worker.service"]:
            m.wait_for_unit(unit, timeout=180)
        api = client.Api(m, key)
        api.wait_ready()
        wait_connects(direct, timeout=120)
        rc, _, _ = client.psql(direct, "select count(*) from p")
        assert rc != 0, "the DROP TABLE committed before the crash must survive it"
        _, doc = api.call("POST", f"/api/databases/{tenant['id']}/restore",
                          {"targetTime": when.strip()}, expect=202)
        job = doc["data"]["id"]
        deadline = time.monotonic() + 600
        while True:
            _, doc = api.call("GET", f"/api/databases/{tenant['id']}/restore/{job}", expect=200)
            if doc["data"]["status"] in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, doc
            time.sleep(2)
        assert doc["data"]["status"] == "succeeded", doc
        wait_connects(direct, timeout=60)
        rc, out, err = client.psql(direct, "select count(*) from p")
        assert rc == 0 and out.strip() == "1000", (out, err)
        rc, out, err = client.psql(direct, "select x from r")
        assert rc == 0 and out.strip() == "42", (out, err)
        status = m.succeed("pgaas backup status")
        t.log(status.strip().splitlines()[-1])
