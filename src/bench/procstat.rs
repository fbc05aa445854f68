//! CPU and memory of other processes, from /proc (Linux).

use std::path::Path;

/// Nanoseconds on CPU of every live thread of `pid` (first field of
/// `/proc/PID/task/*/schedstat`). Threads that ended are not counted: the relays measured
/// keep their threads for the whole run.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for e in dir.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// user + system time of `pid` in clock ticks (`/proc/PID/stat` fields 14 and 15), which
/// includes threads that ended.
pub fn stat_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Resident set size of `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

fn status_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(Path::new(path)).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_itself() {
        let me = std::process::id();
        assert!(super::cpu_ns(me).is_some_and(|n| n > 0));
        assert!(super::rss_kib(me).is_some_and(|k| k > 0));
        assert!(super::stat_ticks(me).is_some());
        assert_eq!(super::cpu_ns(u32::MAX), None);
    }
}
