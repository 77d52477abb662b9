//! Facts about the machine pgaas runs on that rendering needs.

/// Total RAM in MB, from /proc/meminfo (exact, not floored to whole GB).
pub fn memory_mb() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo(&text).ok_or_else(|| std::io::Error::other("no MemTotal line in /proc/meminfo"))
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn meminfo_is_read_in_megabytes() {
        assert_eq!(
            super::parse_meminfo("MemTotal:        1012344 kB\nMemFree: 1 kB\n"),
            Some(988)
        );
        assert_eq!(super::parse_meminfo("nothing"), None);
        assert!(super::memory_mb().unwrap() > 0);
    }
}
