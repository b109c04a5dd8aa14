//! How a fleet is split across processes: one process holds at most what its open-file limit
//! allows (minus a reserve), so a larger fleet becomes several worker processes, each with a
//! contiguous range of device and subscriber numbers and its share of the connect rate.

use crate::engine::Slice;
use crate::scenario::Settings;

/// Descriptors kept back for stdio, the metrics listener, pipes to workers and the runtime.
pub const FD_RESERVE: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("a process may hold {0} connections; at least 1 is needed")]
    NoRoom(u64),
    #[error(
        "window at QoS 0 completes messages through the subscribers of the devices' process, \
         but {0} devices and subscribers need {1} processes"
    )]
    WindowAcrossProcesses(u64, u64),
}

/// Raises the soft open-file limit to the hard one and returns the limit now in force.
pub fn raise_open_file_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to an rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// Connections one process may hold: the override, or the open-file limit minus the reserve.
pub fn per_process_capacity(override_cap: Option<u64>) -> u64 {
    override_cap.unwrap_or_else(|| raise_open_file_limit().saturating_sub(FD_RESERVE))
}

/// Splits devices and subscribers evenly into as few processes as the capacity allows.
pub fn split(settings: &Settings, capacity: u64) -> Result<Vec<Slice>, PlanError> {
    if capacity == 0 {
        return Err(PlanError::NoRoom(capacity));
    }
    let devices = settings.devices;
    let subscribers = u64::from(settings.subscribers);
    let processes = (devices + subscribers).div_ceil(capacity).max(1);
    if settings.window > 0 && settings.qos == 0 && processes > 1 {
        return Err(PlanError::WindowAcrossProcesses(
            devices + subscribers,
            processes,
        ));
    }
    let share = |total: u64, i: u64| total * i / processes;
    Ok((0..processes)
        .map(|i| Slice {
            devices: share(devices, i)..share(devices, i + 1),
            // Subscriber counts fit u32 by construction (the setting is a u32).
            subscribers: share(subscribers, i) as u32..share(subscribers, i + 1) as u32,
            connect_rate: settings.connect_rate / processes as f64,
            connect_window: settings.connect_window.div_ceil(processes as u32),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::RunArgs;

    #[test]
    fn splits_by_capacity_and_covers_everything() {
        let args = RunArgs {
            devices: Some(300),
            subscribers: Some(2),
            ..RunArgs::default()
        };
        let settings = Settings::resolve(&args).expect("valid");
        let slices = split(&settings, 101).expect("fits");
        assert_eq!(slices.len(), 3);
        assert_eq!(slices[0].devices.start, 0);
        assert_eq!(slices[2].devices.end, 300);
        for pair in slices.windows(2) {
            assert_eq!(pair[0].devices.end, pair[1].devices.start);
            assert_eq!(pair[0].subscribers.end, pair[1].subscribers.start);
        }
        let subs: u32 = slices
            .iter()
            .map(|s| s.subscribers.end - s.subscribers.start)
            .sum();
        assert_eq!(subs, 2);
        assert!(slices.iter().all(|s| (s.devices.end - s.devices.start)
            + u64::from(s.subscribers.end - s.subscribers.start)
            <= 101));
        assert_eq!(split(&settings, 1_000).expect("fits").len(), 1);
        assert!(split(&settings, 0).is_err());
    }
}
