//! PostgreSQL's minor release, as its `postgres --version` reports it, and the releases pgaas
//! must not run a synchronous cluster on: before 15.13, 16.9 and 17.5, a primary that had just
//! started could acknowledge commits without waiting for its synchronous standby, so a
//! failover right after a restart could lose commits a client was told were safe.

use std::fmt;

/// A major and minor release (`15.13`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

impl Release {
    /// The release in `postgres --version`'s answer (`postgres (PostgreSQL) 15.13 (Debian
    /// 15.13-1.pgdg120+1)`); `None` for a development build (`18beta1`) or anything else.
    pub fn parse(version_output: &str) -> Option<Self> {
        let rest = version_output.split("(PostgreSQL)").nth(1)?;
        let (major, minor) = rest.split_whitespace().next()?.split_once('.')?;
        Some(Self {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }

    /// The first release of this major version that waits for the synchronous standby from
    /// the first commit after a start, when this one does not; `None` when this one does.
    pub fn sync_wait_fixed_in(self) -> Option<Release> {
        let minor = match self.major {
            15 => 13,
            16 => 9,
            17 => 5,
            _ => return None,
        };
        let fixed = Release {
            major: self.major,
            minor,
        };
        (self < fixed).then_some(fixed)
    }
}

#[cfg(test)]
mod tests {
    use super::Release;

    fn r(s: &str) -> Release {
        Release::parse(&format!("postgres (PostgreSQL) {s} (Debian {s}-1)")).unwrap()
    }

    #[test]
    fn releases_before_the_sync_wait_fix_are_named_with_the_release_to_upgrade_to() {
        assert_eq!(
            Release::parse("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            Some(Release {
                major: 15,
                minor: 18
            })
        );
        assert_eq!(Release::parse("postgres (PostgreSQL) 18beta1"), None);
        assert_eq!(Release::parse(""), None);
        for (old, fixed) in [
            ("15.0", "15.13"),
            ("15.12", "15.13"),
            ("16.8", "16.9"),
            ("17.4", "17.5"),
        ] {
            assert_eq!(r(old).sync_wait_fixed_in(), Some(r(fixed)), "{old}");
            assert_eq!(r(old).sync_wait_fixed_in().unwrap().to_string(), fixed);
        }
        // The test machines' releases (Debian 12 and 13), the fixes themselves, and later
        // majors pass; 15.2 is older than 15.13 although "15.2" > "15.13" as text.
        for ok in ["15.13", "15.18", "16.9", "16.10", "17.5", "17.7", "18.0"] {
            assert_eq!(r(ok).sync_wait_fixed_in(), None, "{ok}");
        }
        assert!(r("15.2").sync_wait_fixed_in().is_some());
    }
}
