//! `device-sim run`: resolve the scenario, split the fleet across processes, start them
//! together once every subscriber is subscribed, merge their snapshots into one live view and
//! one report, and turn the thresholds into the exit code.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::cli::RunArgs;
use crate::context::now_us;
use crate::progress::Progress;
use crate::report::{expected_deliveries, Report};
use crate::scenario::Settings;
use crate::stats::Snapshot;
use crate::tls::TlsClient;
use crate::workers::{subscribe_window, Fleet, Message, WorkerPlan};
use crate::{metrics, plan};

/// Slack past the planned end before the coordinator stops waiting for processes.
const OVERRUN: Duration = Duration::from_secs(30);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = Settings::resolve(&args)?;
    if let Some(tls) = &settings.tls {
        // Unreadable TLS files are the user's to fix before any worker starts.
        TlsClient::new(tls, 1)?;
    }
    let capacity = plan::per_process_capacity(args.max_per_process);
    let slices = plan::split(&settings, capacity)?;
    let run_start_us = now_us();
    let mut exporter = match args.http_listen {
        Some(addr) => Some(
            metrics::install(addr, &settings)
                .with_context(|| format!("cannot serve metrics on {addr}"))?,
        ),
        None => None,
    };
    eprintln!(
        "device-sim: {} devices and {} subscribers on {} target(s), {} process(es) of at most {capacity} connections",
        settings.devices,
        settings.subscribers,
        settings.targets.len(),
        slices.len(),
    );
    let plans: Vec<WorkerPlan> = slices
        .into_iter()
        .map(|slice| WorkerPlan {
            settings: settings.clone(),
            slice,
            run_start_us,
        })
        .collect();
    let mut fleet = if plans.len() == 1 {
        let mut plans = plans;
        Fleet::local(plans.remove(0))?
    } else {
        Fleet::spawn(plans).await?
    };
    let processes = fleet.len();
    let mut latest: Vec<Option<Snapshot>> = vec![None; processes];

    // Nobody publishes before every subscriber of every process is subscribed.
    let mut ready = 0;
    let ready_by = Instant::now() + subscribe_window(&settings) + Duration::from_secs(10);
    while ready < processes {
        match tokio::time::timeout_at(ready_by, fleet.recv()).await {
            Ok(Some((_, Message::Ready { ok }))) => {
                ready += 1;
                if !ok {
                    eprintln!("device-sim: some subscribers did not get a SUBACK in time; starting anyway");
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => anyhow::bail!("a worker process exited before it was ready"),
            Err(_) => anyhow::bail!("worker processes were not ready in time"),
        }
    }
    fleet.go().await;
    let started = Instant::now();
    let give_up = started + settings.duration + settings.drain + OVERRUN;
    let mut progress = Progress::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut finals = 0;
    let mut stopped_at: Option<Duration> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            message = fleet.recv() => match message {
                Some((i, Message::Progress { snapshot })) => latest[i] = Some(*snapshot),
                Some((i, Message::Final { snapshot })) => {
                    latest[i] = Some(*snapshot);
                    finals += 1;
                    if finals == processes {
                        break;
                    }
                }
                Some((_, Message::Ready { .. })) => {}
                None => break,
            },
            _ = ticker.tick() => {
                let merged = merge(&settings, &latest);
                progress.show(&settings, &merged, started.elapsed());
                if let Some(exporter) = exporter.as_mut() {
                    let missing = expected_deliveries(&settings, &merged)
                        .saturating_sub(merged.received.saturating_sub(merged.duplicates));
                    exporter.update(&settings, &merged, missing);
                }
            }
            _ = &mut ctrl_c, if stopped_at.is_none() => {
                eprintln!("\ndevice-sim: interrupted; draining and reporting");
                stopped_at = Some(started.elapsed());
                fleet.stop().await;
            }
            _ = tokio::time::sleep_until(give_up) => {
                eprintln!("\ndevice-sim: processes overran the run by {OVERRUN:?}; reporting what arrived");
                break;
            }
        }
    }
    progress.finish();
    fleet.finish(Duration::from_secs(10)).await;
    if finals < processes {
        eprintln!("device-sim: only {finals} of {processes} process(es) sent final figures");
    }

    let merged = merge(&settings, &latest);
    let window = stopped_at
        .unwrap_or(settings.duration)
        .min(settings.duration);
    let report = Report::build(&settings, &merged, processes, window);
    if let Some(exporter) = exporter.as_mut() {
        exporter.update(&settings, &merged, report.lost);
        exporter.finish(report.lost);
    }
    println!("{}", report.table());
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write report {}", path.display()))?;
    }
    // A `[disconnect]` event may leave devices or subscribers offline at the end on purpose.
    let violations = report.violations(args.max_loss, args.max_p99, settings.disconnect.is_none());
    for v in &violations {
        eprintln!("device-sim: FAILED: {v}");
    }
    Ok(if violations.is_empty() && finals == processes {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn merge(settings: &Settings, latest: &[Option<Snapshot>]) -> Snapshot {
    let mut merged = Snapshot::empty(settings.targets.len());
    for snapshot in latest.iter().flatten() {
        merged.merge(snapshot);
    }
    merged
}
