//! Resource use read from /proc (Linux): a server's peak RSS and this process's CPU.

/// Peak resident set size of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_hwm(&status)
}

/// The `VmHWM` line of a /proc status file, in bytes.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    parse_kb_line(status, "VmHWM:")
}

/// Resident set size of process `pid` now (`VmRSS`), in bytes.
pub fn current_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kb_line(&status, "VmRSS:")
}

fn parse_kb_line(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU seconds (user + system) this process has used.
pub fn own_cpu_seconds() -> Option<f64> {
    stat_cpu_seconds("/proc/self/stat")
}

/// CPU seconds (user + system) process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

fn stat_cpu_seconds(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Linux reports in clock ticks, 100 per second on every mainstream configuration.
    Some((utime + stime) / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VmHWM is read in kB and reported in bytes; a missing line is None.
    #[test]
    fn parses_vm_hwm() {
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmHWM:\t   98304 kB\nVmRSS:\t1 kB\n"),
            Some(98304 * 1024)
        );
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
        assert!(peak_rss_bytes(std::process::id()).unwrap() > 0);
        assert!(current_rss_bytes(std::process::id()).unwrap() > 0);
        assert!(own_cpu_seconds().is_some());
    }
}
