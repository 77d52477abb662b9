"""Tier 1: a systemd-nspawn machine on a fresh overlay of a cached rootfs, in its own network.

Each machine gets a network namespace of its own with a veth pair: 10.77.N.1 on the host side,
10.77.N.2 in the guest. The guest's PostgreSQL therefore never binds the host's ports, the host
connects to it across a real (virtual) link, and the guest reaches nothing but the host side of the
veth: apt goes through the forwarding proxy listening there, which only talks to deb.debian.org.
Commands run with ``nsenter`` into the machine's init (the child of the nspawn process) with a clean
environment. Everything set up here is undone in ``stop``, in reverse order, whatever failed.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from .aptproxy import AptProxy
from .machine import Machine, die_with_parent

GUEST_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
             "LANG=C.UTF-8", "TERM=dumb", "DEBIAN_FRONTEND=noninteractive", "USER=root",
             "LOGNAME=root"]
NETNS_PREFIX = "pgaasvm-"
_serial = iter(range(1, 10**6))


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def free_subnet():
    """The first 10.77.N.0/30 no host interface uses (one per machine)."""
    used = sh("ip", "-4", "-o", "addr", "show").stdout
    for n in range(1, 250):
        if f"10.77.{n}." not in used:
            return n
    raise RuntimeError("no free 10.77.N.0/30 subnet")


class NspawnMachine(Machine):
    def __init__(self, image, workdir, name, binary, lan=None, lan_index=None):
        self.image, self.name, self.binary = image, name, binary
        self.dir = Path(workdir) / name
        # Named after this run's pid, so a later run can tell a leftover from a live machine.
        n = next(_serial)
        self.serial = n
        # A LAN shared with other machines (harness.lan), where this one is .lan_index.
        self.lan, self.lan_index, self.lan_address = lan, lan_index, None
        self.netns = f"{NETNS_PREFIX}{os.getpid()}-{n}"
        self.veth = f"pv{os.getpid():x}n{n}"
        self.proc = None
        self.init_pid = None
        self.proxy = None
        self.undo = []

    @property
    def merged(self):
        return self.dir / "root"

    def endpoint(self, guest_port):
        return self.address, guest_port

    def start(self):
        self.dir.mkdir(parents=True)
        self._mount_overlay()
        self._make_network()
        self._prepare_root()
        self._boot()
        self.undo.append(self._stop_container)
        return self

    def crash(self):
        """The machine dies at once: SIGKILL to the container's init, which takes every process
        of its PID namespace with it (SIGKILL to systemd-nspawn alone leaves them running), then
        to systemd-nspawn."""
        os.kill(self.init_pid, signal.SIGKILL)
        self.proc.kill()
        self.proc.wait()
        deadline = time.monotonic() + 30
        while Path(f"/proc/{self.init_pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if Path(f"/proc/{self.init_pid}").exists():
            raise RuntimeError(f"{self.name}: its init {self.init_pid} outlived SIGKILL")
        self.console.close()

    def boot_again(self):
        """Power the crashed machine on again, on the same disk and network."""
        self.init_pid = None
        self._boot()
        return self

    def _boot(self):
        self.console = open(self.dir / "console.log", "a")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "-D", str(self.merged), "-b", "--register=no", "--keep-unit",
             "--console=read-only", f"--machine={self.name}", "--hostname=pgaas-vm",
             f"--network-namespace-path=/run/netns/{self.netns}"],
            stdin=subprocess.DEVNULL, stdout=self.console, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent)
        deadline = time.monotonic() + 30
        while self.init_pid is None:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids:
                self.init_pid = int(pids[0])
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd-nspawn exited or hung before init started:\n"
                                   f"{self.console_text()}")
            else:
                time.sleep(0.05)

    def loopback_client(self, port):
        """How a host program reaches a port on the guest's loopback: run it in the guest's netns."""
        return ["ip", "netns", "exec", self.netns], f"http://127.0.0.1:{port}"

    def _mount_overlay(self):
        for d in ("upper", "work", "root"):
            (self.dir / d).mkdir()
        sh("mount", "-t", "overlay", "overlay", "-o",
           f"lowerdir={self.image.rootfs},upperdir={self.dir / 'upper'},workdir={self.dir / 'work'}",
           str(self.merged))
        self.undo.append(lambda: sh("umount", "-l", str(self.merged), check=False))

    def _make_network(self):
        n = free_subnet()
        self.host_address, self.address = f"10.77.{n}.1", f"10.77.{n}.2"
        sh("ip", "netns", "add", self.netns)
        self.undo.append(lambda: sh("ip", "netns", "del", self.netns, check=False))
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0",
           "netns", self.netns)
        # Deleting the namespace deletes its end and with it the pair; this covers a half setup.
        self.undo.append(lambda: sh("ip", "link", "del", self.veth, check=False))
        sh("ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth)
        sh("ip", "link", "set", self.veth, "up")
        sh("ip", "-n", self.netns, "addr", "add", f"{self.address}/30", "dev", "eth0")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        # No default route: the guest can reach the host side of the link and nothing else,
        # even on a host that forwards packets.
        self.proxy = AptProxy(self.host_address)
        self.undo.append(self.proxy.close)
        if self.lan is not None:
            self.lan_address = self.lan.join(self.netns, self.lan_index, self.serial)

    def _prepare_root(self):
        root = self.merged
        (root / "etc/apt/apt.conf.d/01pgaas-vm-proxy").write_text(
            f'Acquire::http::Proxy "{self.proxy.address}";\n')
        # No DNS in the namespace: apt names the mirror only to the proxy. Resolve test names.
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        (root / "etc/resolv.conf").write_text("# no resolver: the machine has no way out\n")
        with open(root / "etc/hosts", "a") as f:
            f.write(f"{self.address} pgaas-vm.test\n{self.host_address} host.test\n")
        shutil.copy(self.binary, root / self.pgaas.lstrip("/"))
        os.chmod(root / self.pgaas.lstrip("/"), 0o755)
        if Machine.deb:
            shutil.copy(Machine.deb, root / self.deb_in_guest.lstrip("/"))

    def execute(self, cmd, timeout=600, stdin=None):
        if self.proc.poll() is not None:
            return 255, "", f"machine {self.name} is not running\n"
        try:
            r = subprocess.run(
                ["nsenter", "-t", str(self.init_pid), "-a", "--", "/usr/bin/env", "-i", *GUEST_ENV,
                 "/bin/sh", "-c", cmd],
                input=stdin if stdin is not None else b"", capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return 124, (e.stdout or b"").decode(errors="replace"), f"timed out after {timeout}s\n"
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def console_text(self):
        try:
            return (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def _stop_container(self):
        if self.proc is not None and self.proc.poll() is None:
            # SIGTERM asks nspawn for an orderly poweroff of the container.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # SIGKILL to the container's init takes every process of its PID namespace;
                # SIGKILL to systemd-nspawn alone would leave them running.
                try:
                    os.kill(self.init_pid, signal.SIGKILL)
                except (OSError, TypeError):
                    pass
                self.proc.kill()
                self.proc.wait()
        self.console.close()

    def stop(self):
        errors = []
        while self.undo:
            try:
                self.undo.pop()()
            except Exception as e:  # keep undoing the rest
                errors.append(repr(e))
        if not errors:
            shutil.rmtree(self.dir, ignore_errors=True)
        return errors
