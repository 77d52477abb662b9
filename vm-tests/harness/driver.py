"""Runs scenarios: boots the machine each declares, runs its named subtests, reports, cleans up.

A scenario is a module in ``vm-tests/scenarios/`` with ``TIER`` ("nspawn" or "qemu"), ``SUITES``
(Debian suites it runs on, one run each, named ``scenario@suite``) and ``test(t, machine)``, whose
body is a sequence of ``with t.subtest("what must hold"):`` blocks. A scenario with ``MACHINES``
(names) gets that many nspawn machines on one private LAN (``harness.lan``) instead, as
``test(t, machines)`` with a dict by name. As in NixOS tests, the first
failing subtest ends its scenario: later ones build on it. A failed scenario prints the guest's
journal and console. Whatever happens, every machine, mount, namespace and process the scenario
started is removed, and the runner checks that nothing of it is left.
"""

import contextlib
import importlib
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

from . import images
from .lan import Lan
from .nspawn import NETNS_PREFIX, NspawnMachine
from .pebble import Pebble
from .qemu import QemuMachine

RUNS = Path(os.environ.get("PGAAS_VM_RUNS", "/var/tmp/pgaas-vm-runs"))


def say(msg=""):
    print(msg, flush=True)


class SubtestFailed(Exception):
    pass


class Test:
    """What a scenario's test function gets as `t`."""

    keep_going = False  # --keep-going: record a failed subtest and run the next ones anyway

    def __init__(self, name, suite, workdir, binary):
        self.name, self.suite, self.workdir, self.binary = name, suite, workdir, binary
        self.pg_version = images.PG_VERSION[suite]
        self.results = []  # (subtest, ok, seconds)
        self.cleanups = []
        self.machine = None
        self.machines = []

    @contextlib.contextmanager
    def subtest(self, name):
        start = time.monotonic()
        say(f"  -- {name}")
        try:
            yield
        except Exception as e:
            secs = time.monotonic() - start
            self.results.append((name, False, secs))
            say(f"  [FAIL] {name} ({secs:.1f}s)")
            if isinstance(e, AssertionError):
                # Name the failing line of the scenario, then the assertion's own message.
                frames = [f for f in traceback.extract_tb(e.__traceback__) if "scenarios" in f.filename]
                where = f"at {Path(frames[-1].filename).name}:{frames[-1].lineno}: {frames[-1].line}\n" \
                    if frames else ""
                detail = where + str(e)
            else:
                detail = traceback.format_exc()
            say("\n".join("         " + line for line in detail.rstrip().splitlines()[-80:]))
            if not self.keep_going:
                raise SubtestFailed(name) from e
            return
        secs = time.monotonic() - start
        self.results.append((name, True, secs))
        say(f"  [ok]   {name} ({secs:.1f}s)")

    def log(self, msg):
        say(f"         {msg}")

    def pebble(self, machine):
        """Pebble on the host, answering `machine` on the host side of its link."""
        p = Pebble(self.workdir, machine.host_address, machine.address)
        self.cleanups.append(p.stop)
        return p.start()

    def start_lan_machines(self, names):
        """nspawn machines on one LAN, the i-th at 10.88.N.(i+1); started together."""
        image = images.Image("rootfs", self.suite).ensure(self.log)
        lan = Lan()
        self.cleanups.append(lan.close)
        out = {}
        for i, name in enumerate(names, start=1):
            m = NspawnMachine(image, self.workdir, f"{self.name}-{name}".replace("_", "-"),
                              self.binary, lan=lan, lan_index=i)
            self.cleanups.append(m.stop)
            self.machines.append(m)
            m.start()
            out[name] = m
        self.machine = self.machines[0]
        return out

    def start_machine(self, tier):
        kind = "rootfs" if tier == "nspawn" else "disk"
        image = images.Image(kind, self.suite).ensure(self.log)
        cls = NspawnMachine if tier == "nspawn" else QemuMachine
        m = cls(image, self.workdir, f"{self.name}-{self.suite}".replace("_", "-"), self.binary)
        self.cleanups.append(m.stop)
        self.machine = m
        m.start()
        if tier == "qemu":
            m.copy_binary()
        return m


def load(name):
    return importlib.import_module("scenarios." + name.replace("-", "_"))


def run_one(module_name, suite, binary):
    mod = load(module_name)
    label = f"{module_name}@{suite}"
    workdir = RUNS / f"{os.getpid()}" / label
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    t = Test(module_name, suite, workdir, binary)
    say(f"=== {label} ({mod.TIER}, {images.SUITES[suite]})")
    start = time.monotonic()
    ok = True
    try:
        if getattr(mod, "MACHINES", None):
            with t.subtest(f"{len(mod.MACHINES)} nspawn machines on one LAN boot "
                           f"({images.SUITES[suite]})"):
                machines = t.start_lan_machines(mod.MACHINES)
                for name, m in machines.items():
                    t.log(f"{name}: systemd is {m.wait_until_running()}, LAN {m.lan_address}")
            mod.test(t, machines)
        else:
            with t.subtest(f"{mod.TIER} machine boots ({images.SUITES[suite]})"):
                m = t.start_machine(mod.TIER)
                state = m.wait_until_running()
                t.log(f"systemd is {state}")
            mod.test(t, m)
        ok = all(good for _, good, _ in t.results)
    except SubtestFailed:
        ok = False
    except BaseException as e:
        ok = False
        say(f"  [ABORT] {type(e).__name__}: {e}")
        if not isinstance(e, Exception):
            _report_failure(t)
            _cleanup(t, workdir)
            raise
    if not ok:
        _report_failure(t)
    leftovers = _cleanup(t, workdir)
    if leftovers:
        ok = False
        say("  [FAIL] cleanup: " + "; ".join(leftovers))
    else:
        say("  [ok]   cleanup: no machine, mount, namespace, link or process left")
    secs = time.monotonic() - start
    say(f"=== {label} {'passed' if ok else 'FAILED'} in {secs:.1f}s\n")
    return label, ok, secs, t.results


def _report_failure(t):
    for m in t.machines or ([t.machine] if t.machine else []):
        _report_machine(m)


def _report_machine(m):
    try:
        say(f"--- journalctl -b of {m.name} (last 400 lines)")
        say(m.journal())
    except Exception as e:
        say(f"(no journal: {e})")
    rc, units, _ = m.execute("journalctl -b --no-pager -o short-monotonic -u 'pgaas*' | tail -n 80",
                             timeout=60)
    if units.strip():
        say(f"--- journal of the pgaas units of {m.name} (last 80 lines)")
        say(units)
    rc, logs, _ = m.execute("tail -n 60 /var/log/postgresql/*.log 2>/dev/null", timeout=60)
    if logs.strip():
        say(f"--- PostgreSQL and PgBouncer logs of {m.name} (last 60 lines each)")
        say(logs)
    say(f"--- console of {m.name} (last 150 lines)")
    say("\n".join(m.console_text().splitlines()[-150:]))
    say("--- end of machine output")


def _cleanup(t, workdir):
    """Undo everything the scenario started; return what is still there afterwards."""
    errors = []
    for fn in reversed(t.cleanups):
        try:
            errors += fn() or []
        except Exception as e:
            errors.append(f"{fn}: {e!r}")
    left = errors + leftovers(str(workdir))
    if not left:
        shutil.rmtree(workdir, ignore_errors=True)
    return left


def leftovers(workdir=None):
    """Mounts under `workdir`, this run's network namespaces and links, and live child processes."""
    found = []
    if workdir:
        with open("/proc/self/mounts") as f:
            found += [f"mount {line.split()[1]}" for line in f if workdir in line.split()[1]]
    me = f"{NETNS_PREFIX}{os.getpid()}-"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [f"netns {line.split()[0]}" for line in netns.splitlines() if line.startswith(me)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
              if f" pv{os.getpid():x}n" in line]
    for pid in _children(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(f"process {pid} {cmd[:80]}")
    return found


def _children(pid):
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def sweep_dead_runs():
    """Remove what runs killed with SIGKILL left behind (their pid is in every name)."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in netns.splitlines():
        name = line.split()[0]
        if name.startswith(NETNS_PREFIX):
            pid = name[len(NETNS_PREFIX):].split("-")[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                subprocess.run(["ip", "netns", "del", name], capture_output=True)
                say(f"removed leftover network namespace {name}")
    if not RUNS.exists():
        return
    for run_dir in RUNS.iterdir():
        if run_dir.name.isdigit() and not Path(f"/proc/{run_dir.name}").exists():
            # A container whose nspawn died with the runner: its processes' root is in the run.
            for proc in Path("/proc").iterdir():
                try:
                    if proc.name.isdigit() and os.readlink(proc / "root").startswith(str(run_dir)):
                        os.kill(int(proc.name), 9)
                        say(f"killed leftover process {proc.name} of a dead run")
                except OSError:
                    pass
            with open("/proc/self/mounts") as f:
                mounts = [line.split()[1] for line in f if str(run_dir) in line.split()[1]]
            for mnt in sorted(mounts, reverse=True):
                subprocess.run(["umount", "-l", mnt], capture_output=True)
                say(f"unmounted leftover {mnt}")
            links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
            for line in links.splitlines():
                dev = line.split(":")[1].strip().split("@")[0]
                if dev.startswith(f"pv{int(run_dir.name):x}n"):
                    subprocess.run(["ip", "link", "del", dev], capture_output=True)
            shutil.rmtree(run_dir, ignore_errors=True)
