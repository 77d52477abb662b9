"""`pgaas install` on a fresh machine: install, converge, README flow, isolation, backup, uninstall."""

from harness import client
from harness.platform import (PUBLIC_HOST, create_tenant, fetch_ca, first_api_key, install,
                              install_from_package, main_pid, refused_by_hba, seed_settings, timer_calendar,
                              times_of_day)

TIER = "nspawn"
SUITES = ("bookworm", "trixie")

# Steps a fresh machine legitimately finds done by the time they run: the postgresql package
# creates the main cluster and the pgbouncer package enables and starts PgBouncer (both in the
# install's own apt step); the runner creates the state directory to save the manifest after
# the first changed step; the settings directory holds the operator's public_host (below).
OK_ON_FRESH_INSTALL = {"the Debian cluster", "PgBouncer running", "state directory",
                       "settings directory", "pgBackRest local repository",
                       "pgBackRest spool directory", "pgBackRest log directory",
                       # Installed from the .deb: the binary and its pages are the package's.
                       "the pgaas binary", "man pages and shell completions"}
# Kept data: uninstall leaves these unless --purge-data (the state directory holds the manifest).
KEPT = ("/var/lib/postgresql", "/var/backups/pgaas", "/var/lib/pgaas", "/var/lib/pgbackrest",
        "/var/spool/pgbackrest")
# Churn of any running Debian system, not something install added.
NOISE = ("/var/log/", "/var/cache/", "/var/lib/apt/", "/var/lib/dpkg/", "/var/lib/systemd/",
         "/var/lib/ucf/", "/var/lib/dbus/", "/var/tmp/", "/tmp/", "/run/", "/root/",
         "/etc/ld.so.cache", "/etc/ssl/certs/", "/var/lib/pam/", "/var/lib/private/")
ACCOUNTS = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/subuid", "/etc/subgid")
# Where install puts its own things: anything new here after uninstall is a leftover.
PGAAS_PLACES = ("/etc/pgaas", "/var/lib/pgaas", "/usr/local/bin/", "/etc/systemd/system/pgaas",
                "/etc/pgbouncer/pgbouncer_hba", "/etc/postgresql-common/pgaas")
# Made by the packages' maintainer scripts during the install's apt step (packages stay).
MAINTAINER_SCRIPT_OUTPUT = (
    "/etc/postgresql", "/etc/pgbouncer/", "/etc/alternatives/", "/etc/systemd/system/",
    "/etc/apt/apt.conf.d/02autoremove-postgresql", "/etc/fonts/", "/etc/locale.gen",
    "/etc/mysql/", "/etc/networks", "/etc/odbcinst.ini", "/etc/inputrc", "/etc/ssl/private",
    "/etc/rc", "/etc/init.d/", "/etc/logrotate.d/", "/etc/default/", "/etc/sysctl.d/",
    "/usr/share/man/", "/usr/local/share/fonts", "/var/run/postgresql", "/etc/locale.conf",
    "/etc/systemd/user/")
SNAPSHOT = ("find / -xdev \\( -path /proc -o -path /sys -o -path /dev -o -path /run \\) -prune "
            "-o -print | sort")


# What the package holds besides the binary; anything else it added would be a surprise.
PACKAGE_PLACES = ("/usr/bin/pgaas", "/usr/share/man/man1/pgaas", "/usr/share/doc/pgaas",
                  "/usr/share/bash-completion/completions/pgaas", "/usr/share/zsh/vendor-completions/_pgaas",
                  "/usr/share/fish/vendor_completions.d/pgaas.fish")


def install_package(t, m):
    """apt installs the .deb (resolving its dependencies from the mirror); the binary, its man
    pages and completions arrive; no unit, user or setting does (that is `pgaas install`)."""
    with t.subtest("the .deb installs the binary, man pages and completions, and nothing else"):
        pristine = set(m.succeed(SNAPSHOT).splitlines())
        out = install_from_package(m)
        assert "sudo pgaas install" in out, f"postinst said nothing about what to run:\n{out[-2000:]}"
        added = sorted(p for p in set(m.succeed(SNAPSHOT).splitlines()) - pristine
                       if not p.startswith(NOISE))
        surprises = [p for p in added if not p.startswith(PACKAGE_PLACES)
                     and p not in ("/usr/share/man/man1", "/usr/share/zsh", "/usr/share/fish",
                                   "/usr/share/bash-completion", "/usr/share/zsh/vendor-completions",
                                   "/usr/share/fish/vendor_completions.d",
                                   "/usr/share/bash-completion/completions")]
        assert not surprises, f"the package added {surprises}"
        m.succeed("test -x /usr/bin/pgaas && ! test -e /etc/pgaas/pgaas.yaml && "
                  "! systemctl list-unit-files --no-legend 'pgaas*' | grep -q pgaas")
        page = m.succeed("zcat /usr/share/man/man1/pgaas-db-create.1.gz")
        assert "friendly" in page and ".TH pgaas-db-create" in page, page[:500]
        done = m.succeed("bash -c 'source /usr/share/bash-completion/completions/pgaas; "
                         "COMP_WORDS=(pgaas db cr); COMP_CWORD=2; _pgaas pgaas cr db; "
                         "echo \"${COMPREPLY[@]}\"'")
        assert done.strip() == "create", done
        m.succeed("grep -q 'License: MIT' /usr/share/doc/pgaas/copyright")
        t.log(f"{len(added)} paths, {len([p for p in added if 'man1/' in p])} man pages")


def test(t, m):
    v = t.pg_version
    units = [f"postgresql@{v}-main.service", "pgbouncer.service", "pgaas-api.service"]

    install_package(t, m)
    seed_settings(m)
    before = set(m.succeed(SNAPSHOT).splitlines())
    etc_before = m.succeed("find /etc /usr/local -type f -exec sha256sum {} + | sort")

    with t.subtest("fresh install --self-signed --yes: every step changed"):
        _, report = install(m)
        assert report.failed == 0 and report.changed > 0, report.output[-3000:]
        unexpected = [s for s in report.with_status("ok")
                      if not any(s.startswith(p) for p in OK_ON_FRESH_INSTALL)]
        assert not unexpected, f"steps already ok on a fresh machine: {unexpected}"
        key = first_api_key(report.output)
        t.log(f"{report.changed} steps changed, {report.ok} ok")

    with t.subtest("PostgreSQL, PgBouncer and the API are active; pgaas is on PATH"):
        for unit in units:
            m.wait_for_unit(unit, timeout=60)
        m.succeed("command -v pgaas && pgaas --version && command -v pg-status pg-list-databases pg-backup-control")
        m.succeed("pgaas status")
        api = client.Api(m, key)
        api.wait_ready(timeout=30)

    with t.subtest("timers listed: backups daily at 02:00, certificate renewal twice a day"):
        listed = m.succeed("systemctl list-timers --all --no-pager")
        assert "pgaas-backup.timer" in listed and "pgaas-cert-renew.timer" in listed, listed
        for timer in ("pgaas-backup.timer", "pgaas-cert-renew.timer"):
            m.succeed(f"systemctl is-active --quiet {timer} && systemctl is-enabled --quiet {timer}")
        assert times_of_day(m, timer_calendar(m, "pgaas-backup.timer")) == ["02:00:00"]
        renew = times_of_day(m, timer_calendar(m, "pgaas-cert-renew.timer"))
        assert len(renew) == 2, f"renewal runs at {renew}, not twice a day"

    with t.subtest("converge: a second install reports 0 changes and restarts nothing"):
        pids = {u: main_pid(m, u) for u in units}
        _, report = install(m)
        if report.changed or report.failed:
            plan = m.execute("pgaas install --dry-run 2>&1")[1]
            raise AssertionError(f"second run changed {report.with_status('changed')}\n"
                                 f"--- its output\n{report.output[-2500:]}\n"
                                 f"--- pgaas install --dry-run now\n{plan[-2500:]}")
        assert "First admin API key" not in report.output, "a second run printed a new admin key"
        assert {u: main_pid(m, u) for u in units} == pids

    with t.subtest("converge: a PgBouncer setting re-renders pgbouncer.ini only, and reloads"):
        managed = ("find /etc/pgaas /etc/pgbouncer /etc/postgresql /etc/systemd/system "
                   "-type f -name '*' ! -name '*.pgaas-prev' -printf '%p %T@\\n' | sort")
        pids = {u: main_pid(m, u) for u in units}
        pool = m.succeed("grep -E '^\\s*default_pool_size' /etc/pgbouncer/pgbouncer.ini")
        m.succeed("sed -i -E 's/^(\\s*default_pool_size:).*/\\1 31/' /etc/pgaas/pgaas.yaml "
                  "&& grep -q 'default_pool_size: 31' /etc/pgaas/pgaas.yaml")
        files_before = dict(line.rsplit(" ", 1) for line in m.succeed(managed).splitlines())
        _, report = install(m)
        changed = report.with_status("changed")
        assert len(changed) == 1 and "configuration" in changed[0], f"changed: {changed}"
        files_after = dict(line.rsplit(" ", 1) for line in m.succeed(managed).splitlines())
        touched = sorted(p for p in files_after if files_after[p] != files_before.get(p))
        assert touched == ["/etc/pgbouncer/pgbouncer.ini"], f"rewritten: {touched}"
        m.succeed("grep -Eq '^\\s*default_pool_size\\s*=\\s*31' /etc/pgbouncer/pgbouncer.ini")
        assert {u: main_pid(m, u) for u in units} == pids, "a service was restarted, not reloaded"
        m.succeed("journalctl -u pgbouncer --no-pager | grep -Ei 'reload'")
        t.log(f"was: {pool.strip()}")

    ca = fetch_ca(t, m)

    with t.subtest("README flow from the host: create, TLS connect, write, read, stats, delete"):
        tenant = create_tenant(api, "readme")
        url = client.tenant_url(tenant["connection_string"], m, ca)
        assert f"@{PUBLIC_HOST}:" in tenant["connection_string"], tenant["connection_string"]
        out = client.psql_ok(url, "create table t (id int primary key, v text); "
                                  "insert into t values (1, 'hello'), (2, 'world'); "
                                  "select string_agg(v, ' ' order by id) from t")
        assert out == "hello world", out
        out = client.psql_ok(url, "select ssl from pg_stat_ssl where pid = pg_backend_pid()")
        assert out == "t", f"not TLS: {out}"
        pooled = tenant.get("DATABASE_URL")
        assert pooled, f"no DATABASE_URL (PgBouncer) in {sorted(tenant)}"
        out = client.psql_ok(client.tenant_url(pooled, m, ca), "select count(*) from t")
        assert out == "2", out
        status, stats = api.call("GET", f"/api/databases/{tenant['id']}/stats", expect=200)
        assert stats["data"]["database_name"] == tenant["database_name"], stats
        assert stats["data"]["size_bytes"] > 0, stats
        api.call("DELETE", f"/api/databases/{tenant['id']}", expect=200)
        api.call("GET", f"/api/databases/{tenant['id']}", expect=404)
        rc, out, err = client.psql(url, "select 1")
        assert rc != 0, "the deleted tenant still connects"

    with t.subtest("superuser over TCP refused, plaintext refused, tenant A cannot reach B"):
        a, b = create_tenant(api, "a"), create_tenant(api, "b")
        url_a = client.tenant_url(a["connection_string"], m, ca)
        url_b = client.tenant_url(b["connection_string"], m, ca)
        rc, _, err = client.psql(url_a, "select 1")
        assert rc == 0, err
        host, port = m.endpoint(5432)
        su = f"host={host} port={port} user=postgres dbname=postgres sslmode=require " \
             f"connect_timeout=10"
        rc, _, err = client.psql(su, "select 1")
        assert rc != 0 and refused_by_hba(err), f"superuser over TCP: rc={rc} {err}"
        for port_name, u in (("direct", a["connection_string"]), ("pgbouncer", a["DATABASE_URL"])):
            plain = client.tenant_url(u, m, None, sslmode="disable")
            rc, _, err = client.psql(plain, "select 1")
            assert rc != 0, f"plaintext connection accepted ({port_name})"
            t.log(f"plaintext, {port_name}: {err.strip().splitlines()[-1]}")
        a_to_b = url_b.replace(b["username"], a["username"], 1).replace(b["password"], a["password"], 1)
        rc, _, err = client.psql(a_to_b, "select 1")
        assert rc != 0, "tenant A logged into tenant B's database"
        rc, out, err = client.psql(url_a, f"select has_database_privilege('{b['database_name']}', 'connect')")
        assert out.strip() == "f", (out, err)

    with t.subtest("from outside: the pooler's console, server roles and neighbours are refused "
                   "before any password, on both ports"):
        problems = client.probe_access(m, a, b)
        assert not problems, "\n".join(problems)
        text = m.succeed("cat /etc/pgaas/pgbouncer/userlist.txt")
        entries = [line.split('"') for line in text.splitlines() if line.startswith('"')]
        empty = [e[1] for e in entries if e[3] == ""]
        assert not empty, f"empty secrets in the pooler's auth file: {empty}"
        assert all(e[3].startswith("SCRAM-SHA-256$") for e in entries), text

    with t.subtest("backup service run by hand; restore into a new database; data identical"):
        rc, _, err = client.psql(url_a, "create table k (id int, v text); "
                                        "insert into k select g, md5(g::text) from generate_series(1, 5000) g")
        assert rc == 0, err
        digest = "select md5(string_agg(id || ':' || v, ',' order by id)) from k"
        rc, want, err = client.psql(url_a, digest)
        assert rc == 0, err
        m.succeed("systemctl start pgaas-backup.service", timeout=600)
        assert m.unit_property("pgaas-backup.service", "Result") == "success"
        dumps = m.succeed(f"ls /var/backups/pgaas/{a['database_name']}/")
        assert ".dump" in dumps and ".sha256" in dumps, dumps
        m.succeed(f"pgaas backup list")
        restored = f"{a['database_name']}_restored"
        m.succeed(f"pgaas restore {a['database_name']} --into {restored}", timeout=600)
        got = m.succeed(f"su postgres -c \"psql -XAt -d {restored} -c \\\"{digest}\\\"\"")
        assert got.strip() == want.strip(), f"restored data differs: {got} != {want}"

    with t.subtest("uninstall leaves none of what install added, apart from the data"):
        # Every check runs and every problem is reported at once.
        problems = []
        rc, out, _ = m.execute("pgaas uninstall --yes 2>&1", timeout=600)
        if rc != 0:
            problems.append(f"`pgaas uninstall --yes` exited {rc}:\n{out[-2500:]}")
        for check, what in (
                ("systemctl list-unit-files --no-legend 'pgaas*' | grep pgaas", "pgaas units"),
                ("pgrep -af '[p]gaas serve'", "a running API"),
                ("getent passwd pgaas", "the pgaas user"),
                ("find /etc/systemd /usr/local/bin -name 'pgaas*' -o -name 'pg-status' | grep .",
                 "units, links or commands")):
            rc, found, _ = m.execute(check)
            if rc == 0:
                problems.append(f"{what} left: {found.strip()}")
        after = set(m.succeed(SNAPSHOT).splitlines())
        added = sorted(p for p in after - before if not p.startswith(KEPT + NOISE))
        listed = set(m.succeed("cat /var/lib/dpkg/info/*.list | sort -u").splitlines())
        # update-alternatives links (pinentry, libblas, PostGIS's control files, ...) are dpkg's.
        listed |= set(m.succeed("find / -xdev -lname '/etc/alternatives/*'").splitlines())
        strays = [p for p in added if not _packaged(p, listed)
                  and (p.startswith(PGAAS_PLACES) or not p.startswith(MAINTAINER_SCRIPT_OUTPUT))]
        if strays:
            problems.append(f"left behind by install: {strays[:40]}")
        # (pgaas-vm is the machine's host name; *- files are the shadow tools' own backups.)
        mentions = [p for p in m.execute("grep -rIlP 'pgaas(?!-vm)' /etc /usr/local")[1].split()
                    if not p.endswith("-") and p not in ("/etc/pgaas/pgaas.yaml",)]
        if mentions:
            problems.append(f"files still mention pgaas: {mentions}")
        etc_after = m.succeed("find /etc /usr/local -type f -exec sha256sum {} + | sort")
        differ = [c.split()[-1] for c in sorted(set(etc_before.splitlines()) - set(etc_after.splitlines()))]
        differ = [p for p in differ if not p.startswith(NOISE + ACCOUNTS)]
        if differ:
            problems.append(f"files that existed before install differ: {differ}")
        if m.execute(f"test -d /var/lib/postgresql/{v}/main && ls /var/backups/pgaas/{a['database_name']}")[0]:
            problems.append("the cluster or the backups are gone")
        for unit in (f"postgresql@{v}-main.service", "pgbouncer.service"):
            if m.execute(f"systemctl is-active --quiet {unit}")[0]:
                status = m.execute(f"systemctl status --no-pager -n 5 {unit}")[1]
                problems.append(f"{unit} is not running on Debian's configuration:\n{status}")
        rc, n, err = m.execute(f"su postgres -c \"psql -XAt -d {a['database_name']} -c 'select count(*) from k'\"")
        if rc != 0 or n.strip() != "5000":
            problems.append(f"tenant data not kept: {n}{err}")
        assert not problems, "\n".join(problems)
        t.log(f"cluster config kept in /etc/postgresql/{v}/main; packages stay installed, as documented")

    with t.subtest("apt-get purge pgaas removes the binary, its pages and completions"):
        m.succeed("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q pgaas 2>&1", timeout=300)
        left = m.execute("ls -d /usr/bin/pgaas /usr/share/man/man1/pgaas* /usr/share/doc/pgaas "
                         "/usr/share/bash-completion/completions/pgaas 2>/dev/null")[1].split()
        assert not left, f"left by the package: {left}"


def _packaged(path, listed):
    """Listed by dpkg (which names /lib, /bin, /sbin where merged-/usr systems have /usr/...)."""
    for usr in ("/usr/lib/", "/usr/bin/", "/usr/sbin/"):
        if path.startswith(usr) and path[len("/usr"):] in listed:
            return True
    return path in listed
