"""Machine images, built with mmdebstrap and cached under /var/cache/pgaas-vm/.

Two kinds, for Debian 12 (bookworm) and Debian 13 (trixie):

* ``rootfs``: a directory tree for systemd-nspawn. Bare on purpose (no PostgreSQL): the nspawn
  scenarios run the real ``apt-get install`` from the mirror, as ``pgaas install`` does on a server.
* ``disk``: a bootable ext4 raw image for QEMU (kernel and initrd copied out, no bootloader: QEMU
  boots them with -kernel/-initrd), with openssh-server and a generated ed25519 key. PostgreSQL and
  the extensions the distribution has (PostGIS; pgvector from Debian 13) are preinstalled, because apt under TCG costs minutes; the
  nspawn tier is where installs from the mirror are proven.

An image's cache key is the hash of its kind, suite, package list and recipe (mmdebstrap options,
apt sources, the customize hook, the disk size), so changing any of them rebuilds that image and
nothing else. Builds go to a temporary name and are renamed when complete,
so a killed build never looks cached.
"""

import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

CACHE = Path(os.environ.get("PGAAS_VM_CACHE", "/var/cache/pgaas-vm"))
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
SUITES = {"bookworm": "Debian 12", "trixie": "Debian 13"}
PG_VERSION = {"bookworm": 15, "trixie": 17}

# What a small fresh Debian server has: systemd as init, D-Bus, ip, TLS roots, ps, curl, sudo.
BASE = ["systemd", "systemd-sysv", "dbus", "iproute2", "ca-certificates", "procps", "curl", "sudo"]
BOOT = ["udev", "linux-image-amd64", "initramfs-tools", "openssh-server"]


def preinstalled_postgres(suite):
    v = PG_VERSION[suite]
    extras = [f"postgresql-{v}-postgis-3"] + ([f"postgresql-{v}-pgvector"] if v >= 17 else [])
    return ["postgresql", "postgresql-contrib", "pgbouncer", "pgbackrest"] + extras


MMDEBSTRAP_OPTS = ["--variant=minbase", "--dpkgopt=force-unsafe-io", "--aptopt=Acquire::Retries=3"]
DISK_SIZE = "6G"


def sources(suite):
    return [f"deb {MIRROR} {suite} main", f"deb {MIRROR} {suite}-updates main",
            f"deb {SECURITY} {suite}-security main"]


def packages(kind, suite):
    if kind == "rootfs":
        return BASE
    return BASE + BOOT + preinstalled_postgres(suite)


# Runs inside mmdebstrap's customize phase with the new root as $1 and the kind as $2.
HOOK = r"""#!/bin/sh
set -eu
root="$1"; kind="$2"
echo pgaas-vm > "$root/etc/hostname"
# mmdebstrap leaves localhost out of /etc/hosts; PostgreSQL then fails to start.
cat > "$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 pgaas-vm
::1 localhost ip6-localhost ip6-loopback
ff02::1 ip6-allnodes
ff02::2 ip6-allrouters
EOF
# Faster dpkg, and no man-db rebuild after each install.
echo force-unsafe-io > "$root/etc/dpkg/dpkg.cfg.d/pgaas-vm-unsafe-io"
if [ -x "$root/usr/bin/debconf-set-selections" ]; then
    echo "man-db man-db/auto-update boolean false" | chroot "$root" debconf-set-selections
fi
rm -f "$root/var/lib/man-db/auto-update"
# The apt timers and e2scrub take the dpkg lock at first boot, under the installer's feet.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service e2scrub_all.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$u"
done
if [ "$kind" = rootfs ]; then
    : > "$root/etc/fstab"
    exit 0
fi
echo "LABEL=root / ext4 defaults 0 1" > "$root/etc/fstab"
mkdir -p "$root/etc/systemd/network"
cat > "$root/etc/systemd/network/20-dhcp.network" <<'EOF'
[Match]
Name=eth0

[Network]
DHCP=ipv4
EOF
chroot "$root" systemctl enable systemd-networkd.service
echo "nameserver 10.0.2.3" > "$root/etc/resolv.conf"
mkdir -p -m 0700 "$root/root/.ssh"
cp "$PGAAS_VM_PUBKEY" "$root/root/.ssh/authorized_keys"
chmod 0600 "$root/root/.ssh/authorized_keys"
sed -i 's/^MODULES=.*/MODULES=list/' "$root/etc/initramfs-tools/initramfs.conf"
printf 'virtio_pci\nvirtio_blk\nvirtio_net\next4\n' >> "$root/etc/initramfs-tools/modules"
chroot "$root" update-initramfs -u -k all
"""


class Image:
    def __init__(self, kind, suite):
        assert kind in ("rootfs", "disk") and suite in SUITES, (kind, suite)
        self.kind, self.suite = kind, suite
        self.packages = packages(kind, suite)
        recipe = (kind, suite, self.packages, MMDEBSTRAP_OPTS, sources(suite), HOOK, DISK_SIZE)
        key = hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]
        self.dir = CACHE / f"{kind}-{suite}-{key}"

    # Paths inside a built image directory.
    @property
    def rootfs(self):
        return self.dir / "rootfs"

    @property
    def raw(self):
        return self.dir / "base.raw"

    @property
    def kernel(self):
        return self.dir / "vmlinuz"

    @property
    def initrd(self):
        return self.dir / "initrd.img"

    @property
    def ssh_key(self):
        return self.dir / "id_ed25519"

    def cached(self):
        return (self.dir / "complete").exists()

    def ensure(self, log):
        """Return self once built, building it first when it is not in the cache."""
        if self.cached():
            return self
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = self.dir.with_name(self.dir.name + ".building")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        start = time.monotonic()
        log(f"building {self.kind} image for {self.suite} into {self.dir} (cache miss)")
        hook = tmp / "hook.sh"
        hook.write_text(HOOK)
        env = dict(os.environ)
        if self.kind == "disk":
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "pgaas-vm",
                            "-f", str(tmp / "id_ed25519")], check=True)
            env["PGAAS_VM_PUBKEY"] = str(tmp / "id_ed25519.pub")
        root = tmp / "rootfs"
        cmd = (["mmdebstrap", "--include=" + ",".join(self.packages)] + MMDEBSTRAP_OPTS
               + [f"--customize-hook=sh {hook} \"$1\" {self.kind}", self.suite, str(root)]
               + sources(self.suite))
        with open(tmp / "build.log", "w") as out:
            r = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"mmdebstrap failed; see {tmp / 'build.log'}:\n"
                               + (tmp / "build.log").read_text()[-4000:])
        if self.kind == "disk":
            boot = root / "boot"
            shutil.copy(sorted(boot.glob("vmlinuz-*"))[-1], tmp / "vmlinuz")
            shutil.copy(sorted(boot.glob("initrd.img-*"))[-1], tmp / "initrd.img")
            subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(root),
                            str(tmp / "base.raw"), DISK_SIZE], check=True)
            shutil.rmtree(root)
        (tmp / "complete").write_text(f"{time.monotonic() - start:.0f}s\n")
        os.rename(tmp, self.dir)
        # Older builds of the same kind and suite are dead weight once this one exists.
        for old in CACHE.glob(f"{self.kind}-{self.suite}-*"):
            if old != self.dir:
                shutil.rmtree(old, ignore_errors=True)
        log(f"built {self.kind} image for {self.suite} in {time.monotonic() - start:.0f}s")
        return self
