"""What every machine offers a scenario, whatever boots it (NixOS test driver vocabulary).

``succeed`` runs a shell command as root in the guest and returns its stdout, failing the subtest
when it exits non-zero; ``fail`` is its mirror image; ``wait_until_succeeds`` polls. Subclasses
provide ``execute`` (run one command) and the addresses a host-side client uses.
"""

import ctypes
import shlex
import signal
import time


def die_with_parent():
    """preexec_fn for long-lived children (QEMU, nspawn, ssh, Pebble): should the runner be
    SIGKILLed, the kernel kills them too (PR_SET_PDEATHSIG), so nothing keeps running."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


class CommandFailed(AssertionError):
    pass


class Machine:
    name = "machine"
    # The binary under test, copied in at boot. Not on PATH: `pgaas install` puts its own copy
    # in /usr/local/bin, and a scenario must see that happen.
    pgaas = "/root/pgaas"
    # The Debian package of that binary (scripts/deb), copied in beside it when vm-tests/run built
    # one: the install scenario installs pgaas from it, as an operator would.
    deb = None
    deb_in_guest = "/root/pgaas.deb"
    # Where the host reaches the guest, and where the guest reaches the host.
    address = None
    host_address = None

    def execute(self, cmd, timeout=600, stdin=None):
        """Run `cmd` with /bin/sh in the guest as root; return (exit code, stdout, stderr)."""
        raise NotImplementedError

    def endpoint(self, guest_port):
        """(host, port) on which a client on the host reaches `guest_port` of the guest."""
        raise NotImplementedError

    def succeed(self, cmd, timeout=600, stdin=None):
        rc, out, err = self.execute(cmd, timeout=timeout, stdin=stdin)
        if rc != 0:
            raise CommandFailed(f"{self.name}: `{cmd}` exited {rc}\n--- stdout\n{out}--- stderr\n{err}")
        return out

    def fail(self, cmd, timeout=600):
        rc, out, err = self.execute(cmd, timeout=timeout)
        if rc == 0:
            raise CommandFailed(f"{self.name}: `{cmd}` succeeded but must fail\n{out}{err}")
        return out + err

    def wait_until_succeeds(self, cmd, timeout=120, interval=1.0, attempt_timeout=None):
        deadline = time.monotonic() + timeout
        while True:
            rc, out, err = self.execute(cmd, timeout=attempt_timeout or timeout)
            if rc == 0:
                return out
            if time.monotonic() > deadline:
                raise CommandFailed(f"{self.name}: `{cmd}` did not succeed within {timeout}s "
                                    f"(last exit {rc})\n{out}{err}")
            time.sleep(interval)

    def wait_for_unit(self, unit, timeout=120):
        self.wait_until_succeeds(f"systemctl is-active --quiet {shlex.quote(unit)}", timeout)

    def wait_until_running(self, timeout=300):
        """systemd finished starting up; 'degraded' (some unit failed) also counts as up."""
        # Polled: `is-system-running --wait` can hang for good when asked too early (Debian 13).
        out = self.wait_until_succeeds(
            "s=$(systemctl is-system-running); echo $s; [ $s = running ] || [ $s = degraded ]",
            timeout, interval=0.5, attempt_timeout=15)
        return out.strip()

    def unit_property(self, unit, prop):
        return self.succeed(f"systemctl show -P {prop} {shlex.quote(unit)}").strip()

    def write_file(self, path, content, mode="0644"):
        data = content.encode() if isinstance(content, str) else content
        self.succeed(f"mkdir -p $(dirname {shlex.quote(path)}) && cat > {shlex.quote(path)} "
                     f"&& chmod {mode} {shlex.quote(path)}", stdin=data)

    def read_file(self, path):
        return self.succeed(f"cat {shlex.quote(path)}")

    def journal(self):
        rc, out, err = self.execute("journalctl -b --no-pager -o short-monotonic | tail -n 400",
                                    timeout=60)
        return out + err
