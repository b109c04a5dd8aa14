//! The client side of the integration tests: everything a test uses to talk to the broker, in one
//! folder (`mod clients;` in a test file). `v3` and `v5`: real clients (rumqttc 3.1.1 and 5.0)
//! whose event loops run in their own task and report into a channel (so a test awaits events
//! with a deadline instead of driving the loop). `raw`: sockets with packets encoded by hand and
//! a reader that splits the broker's answers into packets, for what a well-behaved library will
//! not do (malformed input, withheld acknowledgements, silence, a dropped socket). This file keeps
//! what they share: the deadlines (`WAIT`, `QUIET`, `within`), `unique_id`, the event channel
//! behind `v3` and `v5` (`Events`), and `Healthy`, a well-behaved client that proves the broker
//! keeps serving others while one connection misbehaves.

#![allow(dead_code, unused_imports)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub mod raw;
pub mod v3;
pub mod v5;

/// Default bound for "this should happen promptly".
pub const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
pub const QUIET: Duration = Duration::from_millis(500);

/// Awaits `fut` for at most `within`, failing the test with `what` if it does not finish.
pub async fn within<T>(within: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(within, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {within:?} waiting for {what}"),
    }
}

/// A client id unique within the test process.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------------------------
// What the rumqttc 3.1.1 and 5.0 clients share
// ---------------------------------------------------------------------------------------------

/// How a client's event loop ended.
enum Ended {
    /// The server sent DISCONNECT with this reason code (5.0).
    ServerDisconnect(u8),
    Other(String),
}

/// The receiving side of a client: what its event loop task reports (the loop stops at the first
/// error, so a dropped connection is reported, not silently re-established), the events set aside
/// while waiting for a particular one, and why the connection ended once it has. The loop task is
/// aborted when this is dropped.
struct Events<E> {
    rx: mpsc::UnboundedReceiver<Result<E, Ended>>,
    backlog: VecDeque<E>,
    task: JoinHandle<()>,
    closed: Option<String>,
    closed_code: Option<u8>,
}

impl<E> Events<E> {
    /// Waits (within `WAIT`) for the first event `connack` accepts, dropping any before it.
    async fn start<C>(
        rx: mpsc::UnboundedReceiver<Result<E, Ended>>,
        task: JoinHandle<()>,
        what: &str,
        mut connack: impl FnMut(E) -> Option<C>,
    ) -> Result<(Events<E>, C), String> {
        let mut events = Events {
            rx,
            backlog: VecDeque::new(),
            task,
            closed: None,
            closed_code: None,
        };
        let ack = within(WAIT, what, async {
            loop {
                match events.rx.recv().await {
                    Some(Ok(e)) => {
                        if let Some(c) = connack(e) {
                            break Ok(c);
                        }
                    }
                    Some(Err(Ended::ServerDisconnect(c))) => {
                        break Err(format!("DISCONNECT 0x{c:02x} before CONNACK"))
                    }
                    Some(Err(Ended::Other(e))) => break Err(e),
                    None => break Err("event loop ended before CONNACK".to_owned()),
                }
            }
        })
        .await?;
        Ok((events, ack))
    }

    fn note_end(&mut self, e: Option<Ended>) {
        match e {
            Some(Ended::ServerDisconnect(c)) => {
                self.closed_code = Some(c);
                self.closed = Some(format!("server DISCONNECT 0x{c:02x}"));
            }
            Some(Ended::Other(e)) => self.closed = Some(e),
            None => self.closed = Some("event loop ended".to_owned()),
        }
    }

    /// The next event, backlog first; Err with the reason once the connection has ended.
    async fn next(&mut self) -> Result<E, String> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        if let Some(why) = &self.closed {
            return Err(why.clone());
        }
        match self.rx.recv().await {
            Some(Ok(e)) => return Ok(e),
            Some(Err(e)) => self.note_end(Some(e)),
            None => self.note_end(None),
        }
        Err(self.closed.clone().unwrap_or_default())
    }

    /// Waits (within `WAIT`) for an event `pick` accepts, keeping the others for later.
    async fn wait_for<T>(&mut self, what: &str, pick: impl FnMut(&E) -> Option<T>) -> T {
        self.wait_for_within(WAIT, what, pick).await
    }

    /// `wait_for`, within `d`.
    async fn wait_for_within<T>(
        &mut self,
        d: Duration,
        what: &str,
        mut pick: impl FnMut(&E) -> Option<T>,
    ) -> T {
        within(d, what, async {
            loop {
                if let Some(why) = &self.closed {
                    panic!("connection ended while waiting for {what}: {why}");
                }
                match self.rx.recv().await {
                    Some(Ok(e)) => {
                        if let Some(v) = pick(&e) {
                            return v;
                        }
                        self.backlog.push_back(e);
                    }
                    Some(Err(e)) => self.note_end(Some(e)),
                    None => self.note_end(None),
                }
            }
        })
        .await
    }

    /// The next PUBLISH (`publish` picks it out of an event) within `d`, dropping other events;
    /// None on timeout. Panics if the connection ended.
    async fn try_next_publish<P>(
        &mut self,
        d: Duration,
        mut publish: impl FnMut(E) -> Option<P>,
    ) -> Option<P> {
        tokio::time::timeout(d, async {
            loop {
                match self.next().await {
                    Ok(e) => {
                        if let Some(p) = publish(e) {
                            return p;
                        }
                    }
                    Err(e) => panic!("connection ended while waiting for a PUBLISH: {e}"),
                }
            }
        })
        .await
        .ok()
    }

    /// Waits for the connection to end; returns why.
    async fn ended(&mut self, d: Duration) -> String {
        within(d, "the connection to close", async {
            loop {
                if let Err(e) = self.next().await {
                    return e;
                }
            }
        })
        .await
    }

    /// After a DISCONNECT was requested: lets the loop run to its end, then stops it.
    async fn finish(&mut self) {
        let _ = tokio::time::timeout(WAIT, async { while self.next().await.is_ok() {} }).await;
        self.task.abort();
    }

    /// Stops the loop task, which closes the socket without DISCONNECT.
    async fn abort(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl<E> Drop for Events<E> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A well-behaved 3.1.1 client subscribed to a topic of its own: its round trips prove that the
/// broker keeps serving other sessions while one misbehaves.
pub struct Healthy {
    client: v3::Client,
    topic: String,
    round: u32,
}

impl Healthy {
    pub async fn start(addr: SocketAddr, id: &str) -> Healthy {
        let mut client = v3::connect(addr, id).await;
        let topic = format!("healthy/{id}");
        client.subscribe(&topic, v3::QoS::AtLeastOnce).await;
        let mut healthy = Healthy {
            client,
            topic,
            round: 0,
        };
        healthy.round_trip().await;
        healthy
    }

    /// Publishes to its own topic and waits for the message to come back.
    pub async fn round_trip(&mut self) {
        self.round += 1;
        let payload = format!("round {}", self.round).into_bytes();
        let what = format!(
            "healthy client on {}: message {:?}",
            self.topic,
            String::from_utf8_lossy(&payload)
        );
        self.client
            .publish(&self.topic, v3::QoS::AtLeastOnce, false, payload.clone())
            .await;
        within(WAIT, &what, async {
            loop {
                let p = self.client.try_next_publish(WAIT).await;
                if p.is_some_and(|p| p.payload[..] == payload[..]) {
                    return;
                }
            }
        })
        .await
    }
}
