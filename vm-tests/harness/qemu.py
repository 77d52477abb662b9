"""Tier 2: a QEMU machine (TCG) with its own kernel, disk and network.

The disk is a qcow2 overlay over the cached raw image, thrown away afterwards. User networking
forwards ssh, PostgreSQL, PgBouncer and the API from free ports on the host's 127.0.0.1; the guest
sees those connections arrive from 10.0.2.2, a different machine on a real network hop, which is
what the allow-list scenarios need. Commands go over one ssh ControlMaster connection (a new ssh
connection costs over a second under TCG). QEMU and the master are children of this process, killed
in ``stop`` whatever failed. KVM does not work on these hosts (TESTING.md); VM_ACCEL=kvm opts in
elsewhere.
"""

import os
import shlex
import socket
import subprocess
import time
from pathlib import Path

from .machine import Machine, die_with_parent

FORWARDED = (22, 5432, 6432, 3000, 80)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QemuMachine(Machine):
    host_address = "10.0.2.2"
    address = "127.0.0.1"

    def __init__(self, image, workdir, name, binary, memory_mb=2048):
        self.image, self.name, self.binary, self.memory_mb = image, name, binary, memory_mb
        self.dir = Path(workdir) / name
        self.ports = {p: free_port() for p in FORWARDED}
        self.proc = None
        self.master = None
        self.forwards = {}

    def endpoint(self, guest_port):
        return "127.0.0.1", self.ports[guest_port]

    def start(self):
        self.dir.mkdir(parents=True)
        disk = self.dir / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(self.image.raw),
                        "-F", "raw", str(disk)], check=True)
        self.qemu_log = open(self.dir / "qemu.log", "w")
        self._launch(disk)
        return self

    def crash_and_boot(self, timeout=300):
        """Pull the plug: QEMU killed (the guest's memory, page cache included, is gone; what it
        had written to its disk stays), then the same disk booted again."""
        self._close_master()
        self.forwards = {}
        self.proc.kill()
        self.proc.wait()
        self._launch(self.dir / "disk.qcow2", timeout)

    def _launch(self, disk, timeout=300):
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in self.ports.items())
        accel = os.environ.get("VM_ACCEL", "tcg")
        accel_args = ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else \
            ["-accel", "tcg,thread=multi", "-cpu", "max"]
        cmd = ["qemu-system-x86_64", *accel_args, "-smp", "2", "-m", str(self.memory_mb),
               "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
               "-append", "root=LABEL=root rw console=ttyS0 net.ifnames=0 quiet",
               "-drive", f"file={disk},if=virtio,format=qcow2,cache=unsafe",
               "-netdev", f"user,id=n0,{fwd}", "-device", "virtio-net-pci,netdev=n0",
               "-display", "none", "-serial", f"file:{self.dir / 'console.log'}",
               "-monitor", "none", "-nodefaults", "-no-user-config"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.qemu_log,
                                     stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        self.wait_for_ssh(timeout)

    def _ssh_base(self):
        return ["ssh", "-i", str(self.image.ssh_key), "-p", str(self.ports[22]),
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6",
                "-o", f"ControlPath={self.dir / 'ssh.sock'}"]

    def wait_for_ssh(self, timeout=300):
        """Boot (or reboot) until sshd answers, then open the one shared connection."""
        self._close_master()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {self.proc.returncode}:\n"
                                   + (self.dir / "qemu.log").read_text()[-2000:])
            master = subprocess.Popen(self._ssh_base() + ["-M", "-N", "root@127.0.0.1"],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
            # The master is up once a client can use its socket.
            for _ in range(100):
                if master.poll() is not None:
                    break
                if (self.dir / "ssh.sock").exists() and subprocess.run(
                        self._ssh_base() + ["-O", "check", "root@127.0.0.1"],
                        capture_output=True).returncode == 0:
                    self.master = master
                    return
                time.sleep(0.2)
            if master.poll() is None:
                master.kill()
            master.wait()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no ssh within {timeout}s; console:\n{self.console_text()[-3000:]}")
            time.sleep(1)

    def _close_master(self):
        if self.master is not None:
            if self.master.poll() is None:
                self.master.kill()
            self.master.wait()
            self.master = None
        (self.dir / "ssh.sock").unlink(missing_ok=True)

    def execute(self, cmd, timeout=600, stdin=None):
        if self.proc.poll() is not None:
            return 255, "", f"machine {self.name} is not running\n"
        wrapped = "export LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive; " + cmd
        try:
            r = subprocess.run(self._ssh_base() + ["root@127.0.0.1", "--", "sh -c " + shlex.quote(wrapped)],
                               input=stdin if stdin is not None else b"", capture_output=True,
                               timeout=timeout)
        except subprocess.TimeoutExpired as e:
            return 124, (e.stdout or b"").decode(errors="replace"), f"timed out after {timeout}s\n"
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def loopback_client(self, port):
        """How a host program reaches a port on the guest's loopback: an ssh forward."""
        if (self.master, port) not in self.forwards:
            local = free_port()
            subprocess.run(self._ssh_base() + ["-O", "forward", "-L", f"127.0.0.1:{local}:127.0.0.1:{port}",
                                               "root@127.0.0.1"], check=True, capture_output=True)
            self.forwards[(self.master, port)] = local
        return [], f"http://127.0.0.1:{self.forwards[(self.master, port)]}"

    def copy_binary(self):
        self.succeed(f"cat > {self.pgaas} && chmod 0755 {self.pgaas}",
                     stdin=Path(self.binary).read_bytes())
        if self.deb:
            self.succeed(f"cat > {self.deb_in_guest}", stdin=Path(self.deb).read_bytes())

    def reboot(self, timeout=300):
        # The ssh session dies with the guest; do not wait for its answer.
        self.execute("systemctl reboot", timeout=20)
        deadline = time.monotonic() + 60
        while self.execute("true", timeout=10)[0] == 0 and time.monotonic() < deadline:
            time.sleep(1)
        self.wait_for_ssh(timeout)

    def console_text(self):
        try:
            return (self.dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self):
        errors = []
        self._close_master()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None:
            self.qemu_log.close()
        try:
            (self.dir / "disk.qcow2").unlink(missing_ok=True)
        except OSError as e:
            errors.append(repr(e))
        return errors
