//! Live progress: one line rewritten in place on a terminal, plain periodic lines otherwise.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use crate::report::expected_deliveries;
use crate::scenario::Settings;
use crate::stats::Snapshot;

/// Plain lines (not a terminal) come at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct Progress {
    tty: bool,
    previous: Option<(Duration, u64, u64)>,
    last_plain: Option<Duration>,
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            previous: None,
            last_plain: None,
        }
    }

    pub fn show(&mut self, settings: &Settings, s: &Snapshot, elapsed: Duration) {
        let (published, received) = (s.published_total(), s.received);
        let (rate_out, rate_in) = match self.previous {
            Some((at, p, r)) if elapsed > at => {
                let secs = (elapsed - at).as_secs_f64();
                (
                    (published - p.min(published)) as f64 / secs,
                    (received - r.min(received)) as f64 / secs,
                )
            }
            _ => (0.0, 0.0),
        };
        self.previous = Some((elapsed, published, received));
        let in_flight =
            expected_deliveries(settings, s).saturating_sub(received.saturating_sub(s.duplicates));
        let p99 = if s.latency.is_empty() {
            0.0
        } else {
            s.latency.value_at_quantile(0.99) as f64 / 1000.0
        };
        let line = format!(
            "[{:>5.0}s] connected {}/{}  subs {}/{}  out {:.0}/s  in {:.0}/s  p99 {:.1} ms  not yet received {}  gaps {}  dup {}  ooo {}  errors {}",
            elapsed.as_secs_f64(),
            s.devices_connected,
            settings.devices,
            s.subscribers_connected,
            settings.subscribers,
            rate_out,
            rate_in,
            p99,
            in_flight,
            s.open_gaps,
            s.duplicates,
            s.out_of_order,
            s.connect_failures_total() + s.disconnects.values().sum::<u64>(),
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if self
            .last_plain
            .map_or(true, |at| elapsed >= at + PLAIN_EVERY)
        {
            self.last_plain = Some(elapsed);
            let _ = writeln!(err, "{line}");
        }
    }

    /// Leaves the terminal on a fresh line.
    pub fn finish(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}
