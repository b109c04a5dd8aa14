//! Process metrics (memory, CPU, open file descriptors) read from /proc/self when scraped.
//!
//! They are read at scrape time rather than sampled by a timer, so they cost nothing between
//! scrapes and are never stale. The names are the standard ones every Prometheus client library
//! exports (`process_*`), so stock dashboards and alerts work on them unchanged; the `job`
//! label tells the gateway's apart. On a system without /proc the metrics are simply absent.

use std::fmt::Write as _;

/// Values of /proc/self used for the exposition; `None` where a file could not be read.
#[derive(Debug, Default, PartialEq)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    virtual_bytes: Option<u64>,
    start_time_seconds: Option<f64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

/// Appends the process metrics to a Prometheus text exposition.
pub(crate) fn render(out: &mut String) {
    let stats = read();
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<String>| {
        if let Some(v) = value {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n\n"
            );
        }
    };
    metric(
        "process_cpu_seconds_total",
        "counter",
        "User and system CPU time spent, in seconds.",
        stats.cpu_seconds.map(|v| v.to_string()),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size, in bytes.",
        stats.resident_bytes.map(|v| v.to_string()),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size, in bytes.",
        stats.virtual_bytes.map(|v| v.to_string()),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since the Unix epoch, in seconds.",
        stats.start_time_seconds.map(|v| v.to_string()),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Open file descriptors.",
        stats.open_fds.map(|v| v.to_string()),
    );
    metric(
        "process_max_fds",
        "gauge",
        "Limit on open file descriptors (soft RLIMIT_NOFILE).",
        stats.max_fds.map(|v| v.to_string()),
    );
}

fn read() -> ProcessStats {
    // SAFETY: sysconf only reads a configuration value.
    let (ticks, page) = unsafe {
        (
            libc::sysconf(libc::_SC_CLK_TCK),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let boot_time = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| parse_boot_time(&s));
    let mut stats = stat
        .as_deref()
        .map(|s| parse_stat(s, ticks as f64, page.max(0) as u64, boot_time))
        .unwrap_or_default();
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    stats.max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| parse_max_fds(&s));
    stats
}

/// Fields of /proc/self/stat after the command name, which is in parentheses and may itself
/// contain spaces and parentheses: the fields start after the last ')'.
fn parse_stat(stat: &str, ticks: f64, page: u64, boot_time: Option<u64>) -> ProcessStats {
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // Indices are the proc(5) field numbers minus 3 (pid and comm come before the slice).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let valid_ticks = (ticks > 0.0).then_some(ticks);
    ProcessStats {
        cpu_seconds: valid_ticks.and_then(|t| Some((field(14)? + field(15)?) as f64 / t)),
        virtual_bytes: field(23),
        resident_bytes: field(24).map(|pages| pages * page),
        start_time_seconds: valid_ticks
            .and_then(|t| Some(boot_time? as f64 + field(22)? as f64 / t)),
        open_fds: None,
        max_fds: None,
    }
}

fn parse_boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn parse_max_fds(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_found_after_a_command_name_with_spaces_and_parens() {
        let stat = "4242 (my (odd) cmd) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 1000 \
                    123456789 300 18446744073709551615";
        let s = parse_stat(stat, 100.0, 4096, Some(1_700_000_000));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.virtual_bytes, Some(123_456_789));
        assert_eq!(s.resident_bytes, Some(300 * 4096));
        assert_eq!(s.start_time_seconds, Some(1_700_000_010.0));
    }

    #[test]
    fn garbage_yields_nothing_rather_than_a_panic() {
        assert_eq!(parse_stat("", 100.0, 4096, None), ProcessStats::default());
        assert_eq!(
            parse_stat("1 (x) S", 0.0, 4096, None),
            ProcessStats::default()
        );
        assert_eq!(parse_max_fds("Max open files  soft"), None);
        assert_eq!(parse_boot_time("cpu 1 2 3"), None);
    }

    #[test]
    fn limits_and_boot_time_parse() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        assert_eq!(
            parse_boot_time("cpu 1\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn this_process_renders_every_metric() {
        let mut out = String::new();
        render(&mut out);
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                out.contains(&format!("\n{name} ")),
                "{name} missing in {out}"
            );
        }
    }
}
