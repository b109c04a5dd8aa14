//! The processes of a run. The coordinator holds a `Fleet`: either one in-process engine or
//! worker processes of this same binary (`device-sim worker`), each reading its plan as one
//! JSON line on stdin, then `go`; each writes JSON lines of snapshots to stdout. A worker stops
//! early on any further stdin line or on EOF, so workers never outlive their coordinator.

use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{Engine, Slice};
use crate::scenario::Settings;
use crate::stats::Snapshot;
use crate::tls::TlsError;

/// How long each process gives its subscribers to get their SUBACK before publishing anyway.
pub fn subscribe_window(settings: &Settings) -> Duration {
    settings.connect_timeout + Duration::from_secs(5)
}

/// Everything a worker needs; the first line on its stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerPlan {
    pub settings: Settings,
    pub slice: Slice,
    pub run_start_us: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// Subscribers are subscribed (`ok`), or gave up waiting.
    Ready {
        ok: bool,
    },
    Progress {
        snapshot: Box<Snapshot>,
    },
    Final {
        snapshot: Box<Snapshot>,
    },
}

enum Control {
    Local {
        go: Option<oneshot::Sender<()>>,
        stop: Option<oneshot::Sender<()>>,
    },
    Child {
        child: Child,
        stdin: Option<ChildStdin>,
    },
}

pub struct Fleet {
    messages: mpsc::UnboundedReceiver<(usize, Message)>,
    controls: Vec<Control>,
}

impl Fleet {
    pub fn len(&self) -> usize {
        self.controls.len()
    }

    /// The whole run in this process.
    pub fn local(plan: WorkerPlan) -> Result<Fleet, TlsError> {
        let (tx, messages) = mpsc::unbounded_channel();
        let (go, go_rx) = oneshot::channel();
        let (stop, stop_rx) = oneshot::channel::<()>();
        let window = subscribe_window(&plan.settings);
        let engine = Engine::new(plan.settings, plan.slice, plan.run_start_us)?;
        tokio::spawn(async move {
            let ok = engine.connect_subscribers(window).await;
            let _ = tx.send((0, Message::Ready { ok }));
            if go_rx.await.is_err() {
                return;
            }
            let last = engine
                .run(
                    async move {
                        let _ = stop_rx.await;
                    },
                    |snapshot| {
                        let _ = tx.send((
                            0,
                            Message::Progress {
                                snapshot: Box::new(snapshot),
                            },
                        ));
                    },
                )
                .await;
            let _ = tx.send((
                0,
                Message::Final {
                    snapshot: Box::new(last),
                },
            ));
        });
        Ok(Fleet {
            messages,
            controls: vec![Control::Local {
                go: Some(go),
                stop: Some(stop),
            }],
        })
    }

    /// One worker process per plan.
    pub async fn spawn(plans: Vec<WorkerPlan>) -> anyhow::Result<Fleet> {
        let exe = std::env::current_exe().context("cannot find the device-sim executable")?;
        let (tx, messages) = mpsc::unbounded_channel();
        let mut controls = Vec::with_capacity(plans.len());
        for (index, plan) in plans.into_iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start worker {index}"))?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let mut line = serde_json::to_string(&plan)?;
            line.push('\n');
            stdin.write_all(line.as_bytes()).await?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    match serde_json::from_str::<Message>(&line) {
                        Ok(message) => {
                            if tx.send((index, message)).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            eprintln!("device-sim: worker {index} sent an unreadable line: {e}")
                        }
                    }
                }
            });
            controls.push(Control::Child {
                child,
                stdin: Some(stdin),
            });
        }
        Ok(Fleet { messages, controls })
    }

    /// The next message of any process; `None` once every process has gone.
    pub async fn recv(&mut self) -> Option<(usize, Message)> {
        self.messages.recv().await
    }

    pub async fn go(&mut self) {
        for control in &mut self.controls {
            match control {
                Control::Local { go, .. } => {
                    if let Some(go) = go.take() {
                        let _ = go.send(());
                    }
                }
                Control::Child {
                    stdin: Some(stdin), ..
                } => {
                    let _ = stdin.write_all(b"go\n").await;
                }
                Control::Child { stdin: None, .. } => {}
            }
        }
    }

    /// Ends publishing early everywhere (drain and report still follow).
    pub async fn stop(&mut self) {
        for control in &mut self.controls {
            match control {
                Control::Local { stop, .. } => {
                    if let Some(stop) = stop.take() {
                        let _ = stop.send(());
                    }
                }
                Control::Child {
                    stdin: Some(stdin), ..
                } => {
                    let _ = stdin.write_all(b"stop\n").await;
                }
                Control::Child { stdin: None, .. } => {}
            }
        }
    }

    /// Waits for worker processes to exit, killing (by their own PID) any that do not.
    pub async fn finish(&mut self, within: Duration) {
        for control in &mut self.controls {
            if let Control::Child { child, stdin } = control {
                stdin.take();
                if tokio::time::timeout(within, child.wait()).await.is_err() {
                    eprintln!(
                        "device-sim: worker {:?} did not exit; killing it",
                        child.id()
                    );
                    let _ = child.kill().await;
                }
            }
        }
    }
}

fn emit(message: &Message) {
    use std::io::Write;
    // Serializing plain data cannot fail; a closed stdout means the coordinator is gone.
    if let Ok(mut line) = serde_json::to_string(message) {
        line.push('\n');
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
}

/// `device-sim worker`: run one slice as told on stdin, report on stdout.
pub async fn worker_main() -> anyhow::Result<()> {
    crate::plan::raise_open_file_limit();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let plan_line = lines
        .next_line()
        .await?
        .context("worker: no plan on stdin")?;
    let plan: WorkerPlan = serde_json::from_str(&plan_line).context("worker: unreadable plan")?;
    let window = subscribe_window(&plan.settings);
    let engine = Engine::new(plan.settings, plan.slice, plan.run_start_us)?;
    let ok = engine.connect_subscribers(window).await;
    emit(&Message::Ready { ok });
    match lines.next_line().await? {
        Some(line) if line.trim() == "go" => {}
        // The coordinator gave up or went away before the start.
        _ => return Ok(()),
    }
    let stop = async move {
        let _ = lines.next_line().await;
    };
    let last = engine
        .run(stop, |snapshot| {
            emit(&Message::Progress {
                snapshot: Box::new(snapshot),
            })
        })
        .await;
    emit(&Message::Final {
        snapshot: Box::new(last),
    });
    Ok(())
}
