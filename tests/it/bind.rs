//! A private BIND 9 (Debian's `bind9`) per test: one primary zone that accepts RFC 2136 updates
//! signed with a TSIG key made here (`tsig-keygen`), on a free port of 127.0.0.1, run as the
//! test's user with everything under a temp dir. Killed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub struct Named {
    pub port: u16,
    /// The TSIG key allowed to update the zone (0600).
    pub key_file: PathBuf,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Named {
    /// A zone whose every listed name resolves to 127.0.0.1.
    pub fn start(zone: &str, hosts: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        assert!(
            std::path::Path::new("/usr/sbin/named").exists(),
            "BIND 9 is not installed: apt-get install bind9 bind9-dnsutils (scripts/test does it)"
        );
        let dir = tempfile::Builder::new()
            .prefix("pgaas-named-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let port = crate::pebble::free_port();
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", "pgaas-test"])
            .output()
            .expect("tsig-keygen (apt-get install bind9)");
        assert!(key.status.success());
        let key_file = d.join("tsig.key");
        std::fs::write(&key_file, &key.stdout).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut records = format!(
            "$TTL 60\n@ IN SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 60\n@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n@ IN A 127.0.0.1\n"
        );
        for h in hosts {
            records.push_str(&format!("{h} IN A 127.0.0.1\n"));
        }
        let zone_file = d.join("zone.db");
        std::fs::write(&zone_file, records).unwrap();
        let conf = d.join("named.conf");
        std::fs::write(
            &conf,
            format!(
                r#"options {{
    directory "{dir}";
    pid-file "{dir}/named.pid";
    session-keyfile "{dir}/session.key";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    allow-transfer {{ none; }};
}};
include "{key}";
zone "{zone}" {{
    type primary;
    file "{zone_file}";
    allow-update {{ key "pgaas-test"; }};
}};
"#,
                dir = d.display(),
                key = key_file.display(),
                zone_file = zone_file.display(),
            ),
        )
        .unwrap();
        let log = d.join("named.log");
        let out = std::fs::File::create(&log).unwrap();
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .unwrap()
            .unwrap()
            .name;
        let child = Command::new("/usr/sbin/named")
            .args(["-g", "-c"])
            .arg(&conf)
            .args(["-u", &user])
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("named");
        let named = Self {
            port,
            key_file,
            child,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while named.query("SOA", zone).is_empty() {
            assert!(
                Instant::now() < deadline,
                "named did not answer; log:\n{}",
                std::fs::read_to_string(&named.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        named
    }

    /// `127.0.0.1:<port>`, for Pebble's resolver and `--dns-server`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// What the server answers for `name` (`dig +short`).
    pub fn query(&self, kind: &str, name: &str) -> Vec<String> {
        let out = Command::new("dig")
            .args(["+short", "+norecurse", "+time=1", "+tries=1", "-p"])
            .arg(self.port.to_string())
            .arg("@127.0.0.1")
            .args([kind, name])
            .output()
            .expect("dig (apt-get install bind9-dnsutils)");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().trim_matches('"').to_string())
            .filter(|l| !l.is_empty() && !l.starts_with(';'))
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
