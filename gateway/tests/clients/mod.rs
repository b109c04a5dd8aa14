//! Client-side plumbing shared by the integration tests. Real clients: rumqttc 3.1.1 (`v3`) and
//! 5.0 (`v5`) whose event loops run in their own task and report into a channel (so a test awaits
//! events with a deadline instead of driving the loop), and `Healthy`, a well-behaved client that
//! proves the broker keeps serving others while one connection misbehaves. Raw sockets (`raw`):
//! packets encoded by hand and a reader that splits the broker's answers into packets, for what a
//! well-behaved library will not do (malformed input, withheld acknowledgements, silence, a
//! dropped socket).

#![allow(dead_code, unused_imports)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&E) -> Option<T>) -> T {
        within(WAIT, what, async {
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

// ---------------------------------------------------------------------------------------------
// MQTT 3.1.1 through rumqttc
// ---------------------------------------------------------------------------------------------

pub mod v3 {
    use super::*;
    pub use rumqttc::{AsyncClient, ConnAck, Event, MqttOptions, Packet, Publish, QoS};

    /// A connected rumqttc 3.1.1 client. Its event loop stops at the first error (no reconnect).
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: Events<Event>,
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        o
    }

    /// Connects with a clean session.
    pub async fn connect(addr: SocketAddr, id: &str) -> Client {
        Client::connect(options(addr, id)).await
    }

    fn incoming(e: &Event) -> Option<&Packet> {
        match e {
            Event::Incoming(p) => Some(p),
            Event::Outgoing(_) => None,
        }
    }

    impl Client {
        pub async fn connect(options: MqttOptions) -> Client {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let event = eventloop
                        .poll()
                        .await
                        .map_err(|e| Ended::Other(e.to_string()));
                    let last = event.is_err();
                    if tx.send(event).is_err() || last {
                        return;
                    }
                }
            });
            let started = Events::start(rx, task, "CONNACK (3.1.1)", |e| match e {
                Event::Incoming(Packet::ConnAck(c)) => Some(c),
                _ => None,
            });
            let (events, connack) = started
                .await
                .unwrap_or_else(|e| panic!("3.1.1 connect failed: {e}"));
            Client {
                client,
                connack,
                events,
            }
        }

        /// The next event (PUBLISH or other); Err with the reason once the connection ended.
        pub async fn next_event(&mut self) -> Result<Event, String> {
            self.events.next().await
        }

        /// Subscribes and waits for the SUBACK; returns its return codes.
        pub async fn subscribe(
            &mut self,
            filter: &str,
            qos: QoS,
        ) -> Vec<rumqttc::SubscribeReasonCode> {
            self.client
                .subscribe(filter, qos)
                .await
                .expect("subscribe request");
            let what = format!("SUBACK for {filter}");
            self.events
                .wait_for(&what, |e| match incoming(e) {
                    Some(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                    _ => None,
                })
                .await
        }

        pub async fn publish(
            &self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, qos, retain, payload.into())
                .await
                .expect("publish request");
        }

        /// Publishes at QoS 1 or 2 and waits for the broker's PUBACK / PUBCOMP, so that the
        /// message has been routed when this returns. Assumes no other publish of this client is
        /// awaiting its acknowledgement.
        pub async fn publish_confirmed(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            assert_ne!(qos, QoS::AtMostOnce, "QoS 0 has no acknowledgement");
            self.publish(topic, qos, retain, payload).await;
            let what = format!("acknowledgement of a publish to {topic}");
            self.events
                .wait_for(&what, |e| match incoming(e) {
                    Some(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => Some(()),
                    Some(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => Some(()),
                    _ => None,
                })
                .await
        }

        /// Waits for the next PUBLISH.
        pub async fn next_publish(&mut self, d: Duration) -> Publish {
            match self.try_next_publish(d).await {
                Some(p) => p,
                None => panic!("no PUBLISH arrived within {d:?}"),
            }
        }

        /// The next PUBLISH within `d`, or None on timeout. Panics if the connection ended.
        pub async fn try_next_publish(&mut self, d: Duration) -> Option<Publish> {
            self.events
                .try_next_publish(d, |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p),
                    _ => None,
                })
                .await
        }

        /// Asserts that no PUBLISH arrives for `d`.
        pub async fn expect_no_publish(&mut self, d: Duration) {
            if let Some(p) = self.try_next_publish(d).await {
                panic!("unexpected PUBLISH on {}: {:?}", p.topic, p);
            }
        }

        /// Waits for the event loop to report that the connection ended; returns the reason.
        pub async fn closed(&mut self, d: Duration) -> String {
            self.events.ended(d).await
        }

        /// Sends DISCONNECT and waits for the loop to end.
        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            self.events.finish().await;
        }

        /// Drops the connection without DISCONNECT (the socket is closed as the task is dropped).
        pub async fn abort(mut self) {
            self.events.abort().await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// MQTT 5.0 through rumqttc::v5
// ---------------------------------------------------------------------------------------------

pub mod v5 {
    use super::*;
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, ConnectProperties, Filter, LastWill, LastWillProperties, Packet, Publish,
        PublishProperties, RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    /// A connected rumqttc 5.0 client. Its event loop stops at the first error (no reconnect).
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: Events<Event>,
    }

    pub fn options(addr: SocketAddr, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(1 << 20));
        o
    }

    /// Options with clean start off and the given session expiry.
    pub fn persistent(addr: SocketAddr, id: &str, expiry: u32) -> MqttOptions {
        let mut o = options(addr, id);
        o.set_clean_start(false);
        let mut props = o.connect_properties().unwrap_or_default();
        props.session_expiry_interval = Some(expiry);
        o.set_connect_properties(props);
        o
    }

    pub async fn connect(addr: SocketAddr, id: &str) -> Client {
        Client::connect(options(addr, id)).await
    }

    fn incoming(e: &Event) -> Option<&Packet> {
        match e {
            Event::Incoming(p) => Some(p),
            Event::Outgoing(_) => None,
        }
    }

    impl Client {
        pub async fn connect(options: MqttOptions) -> Client {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (tx, rx) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    let event = eventloop.poll().await.map_err(|e| match e {
                        ConnectionError::MqttState(StateError::ServerDisconnect {
                            reason_code,
                            ..
                        }) => Ended::ServerDisconnect(reason_code as u8),
                        e => Ended::Other(e.to_string()),
                    });
                    let last = event.is_err();
                    if tx.send(event).is_err() || last {
                        return;
                    }
                }
            });
            let started = Events::start(rx, task, "CONNACK (5.0)", |e| match e {
                Event::Incoming(Packet::ConnAck(c)) => Some(c),
                _ => None,
            });
            let (events, connack) = started
                .await
                .unwrap_or_else(|e| panic!("5.0 connect failed: {e}"));
            Client {
                client,
                connack,
                events,
            }
        }

        pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<SubscribeReasonCode> {
            self.subscribe_with(Filter::new(filter, qos), None).await
        }

        /// Subscribes with full options and an optional subscription identifier.
        pub async fn subscribe_with(
            &mut self,
            filter: Filter,
            id: Option<usize>,
        ) -> Vec<SubscribeReasonCode> {
            let what = format!("SUBACK for {}", filter.path);
            match id {
                Some(id) => {
                    let props = SubscribeProperties {
                        id: Some(id),
                        user_properties: Vec::new(),
                    };
                    self.client
                        .subscribe_many_with_properties(vec![filter], props)
                        .await
                        .expect("subscribe request");
                }
                None => self
                    .client
                    .subscribe_many(vec![filter])
                    .await
                    .expect("subscribe request"),
            }
            self.events
                .wait_for(&what, |e| match incoming(e) {
                    Some(Packet::SubAck(s)) => Some(s.return_codes.clone()),
                    _ => None,
                })
                .await
        }

        pub async fn publish(
            &self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, qos, retain, payload.into())
                .await
                .expect("publish request");
        }

        pub async fn publish_with(
            &self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: PublishProperties,
        ) {
            self.client
                .publish_with_properties(topic, qos, retain, payload.into(), props)
                .await
                .expect("publish request");
        }

        /// Publishes at QoS 1 or 2 and waits for the PUBACK / PUBCOMP, so that the message has
        /// been routed when this returns.
        pub async fn publish_confirmed_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: Option<PublishProperties>,
        ) {
            assert_ne!(qos, QoS::AtMostOnce, "QoS 0 has no acknowledgement");
            match props {
                Some(p) => self.publish_with(topic, qos, retain, payload, p).await,
                None => self.publish(topic, qos, retain, payload).await,
            }
            let what = format!("acknowledgement of a publish to {topic}");
            self.events
                .wait_for(&what, |e| match incoming(e) {
                    Some(Packet::PubAck(_)) if qos == QoS::AtLeastOnce => Some(()),
                    Some(Packet::PubComp(_)) if qos == QoS::ExactlyOnce => Some(()),
                    _ => None,
                })
                .await
        }

        pub async fn publish_confirmed(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.publish_confirmed_with(topic, qos, retain, payload, None)
                .await
        }

        pub async fn next_publish(&mut self, d: Duration) -> Publish {
            match self.try_next_publish(d).await {
                Some(p) => p,
                None => panic!("no PUBLISH arrived within {d:?}"),
            }
        }

        pub async fn try_next_publish(&mut self, d: Duration) -> Option<Publish> {
            self.events
                .try_next_publish(d, |e| match e {
                    Event::Incoming(Packet::Publish(p)) => Some(p),
                    _ => None,
                })
                .await
        }

        pub async fn expect_no_publish(&mut self, d: Duration) {
            if let Some(p) = self.try_next_publish(d).await {
                panic!("unexpected PUBLISH: {p:?}");
            }
        }

        /// Waits for the connection to end; returns the server's DISCONNECT reason code if any.
        pub async fn closed(&mut self, d: Duration) -> Option<u8> {
            self.events.ended(d).await;
            self.events.closed_code
        }

        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            self.events.finish().await;
        }

        pub async fn abort(mut self) {
            self.events.abort().await;
        }
    }

    pub fn topic_of(p: &Publish) -> String {
        String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic")
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

// ---------------------------------------------------------------------------------------------
// Raw sockets with hand-encoded packets
// ---------------------------------------------------------------------------------------------

pub mod raw {
    use super::*;
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// First bytes (packet type, flags 0) of what the broker sends.
    pub const CONNACK: u8 = 0x20;
    pub const PUBLISH: u8 = 0x30;
    pub const PUBACK: u8 = 0x40;
    pub const SUBACK: u8 = 0x90;
    pub const PINGRESP: u8 = 0xD0;
    pub const DISCONNECT: u8 = 0xE0;

    /// A variable byte integer (remaining length, property length).
    pub fn varint(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut byte = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if n == 0 {
                return out;
            }
        }
    }

    /// Decodes the variable byte integer at the start of `b`: (value, bytes used), or None when
    /// `b` ends first. Panics past four bytes, which no valid packet has.
    fn decode_varint(b: &[u8]) -> Option<(usize, usize)> {
        let mut n = 0usize;
        for (i, &byte) in b.iter().enumerate() {
            assert!(i < 4, "variable byte integer over 4 bytes: {b:02X?}");
            n |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((n, i + 1));
            }
        }
        None
    }

    /// A whole packet: first byte, remaining length, body.
    pub fn packet(first: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![first];
        out.extend(varint(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A two-byte length followed by the bytes.
    pub fn string(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(s);
        out
    }

    /// A CONNECT with protocol `name`/`level`, `flags`, keep alive 60 s, `props` (v5 only: the
    /// property bytes without their length) and `payload` (client id and what follows it).
    pub fn connect_raw(
        name: &[u8],
        level: u8,
        flags: u8,
        props: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        connect_packet(name, level, flags, 60, props, payload)
    }

    fn connect_packet(
        name: &[u8],
        level: u8,
        flags: u8,
        keep_alive: u16,
        props: Option<&[u8]>,
        payload: &[u8],
    ) -> Vec<u8> {
        let mut body = string(name);
        body.push(level);
        body.push(flags);
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if let Some(props) = props {
            body.extend(varint(props.len()));
            body.extend_from_slice(props);
        }
        body.extend_from_slice(payload);
        packet(0x10, &body)
    }

    /// A v5 four-byte-integer property.
    pub fn prop_u32(id: u8, v: u32) -> Vec<u8> {
        let mut p = vec![id];
        p.extend_from_slice(&v.to_be_bytes());
        p
    }

    /// The two protocol versions the raw tests speak.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum V {
        V311,
        V5,
    }

    impl V {
        pub const BOTH: [V; 2] = [V::V311, V::V5];

        pub fn is_v5(self) -> bool {
            self == V::V5
        }

        /// Clean-session CONNECT for `client_id` (keep alive 60 s).
        pub fn connect(self, client_id: &str) -> Vec<u8> {
            encode_connect(&Connect::plain(self, client_id))
        }

        /// The property length byte(s) a v5 packet needs where 3.1.1 has nothing.
        pub fn no_props(self) -> &'static [u8] {
            match self {
                V::V311 => &[],
                V::V5 => &[0],
            }
        }

        /// A PUBLISH with the given first byte, topic bytes, packet id (QoS > 0), v5 property
        /// bytes (without their length; ignored for 3.1.1) and payload.
        pub fn publish(
            self,
            first: u8,
            topic: &[u8],
            packet_id: Option<u16>,
            props: &[u8],
            payload: &[u8],
        ) -> Vec<u8> {
            let mut body = string(topic);
            if let Some(id) = packet_id {
                body.extend_from_slice(&id.to_be_bytes());
            }
            if self.is_v5() {
                body.extend(varint(props.len()));
                body.extend_from_slice(props);
            }
            body.extend_from_slice(payload);
            packet(first, &body)
        }

        /// A SUBSCRIBE for one filter with subscription `options` (QoS in the low bits),
        /// packet id 1.
        pub fn subscribe(self, filter: &str, options: u8) -> Vec<u8> {
            let mut body = vec![0, 1];
            body.extend_from_slice(self.no_props());
            body.extend(string(filter.as_bytes()));
            body.push(options);
            packet(0x82, &body)
        }
    }

    /// A will to put in a raw CONNECT.
    pub struct Will<'a> {
        pub topic: &'a str,
        pub payload: &'a [u8],
        pub qos: u8,
        pub retain: bool,
        /// v5 only: encoded will properties (without the length prefix).
        pub properties: Vec<u8>,
    }

    /// What a raw CONNECT carries.
    pub struct Connect<'a> {
        /// 4 for 3.1.1, 5 for 5.0.
        pub level: u8,
        pub client_id: &'a str,
        pub clean: bool,
        pub keep_alive: u16,
        pub will: Option<Will<'a>>,
        /// v5 only: encoded CONNECT properties (without the length prefix).
        pub properties: Vec<u8>,
    }

    impl<'a> Connect<'a> {
        pub fn v311(client_id: &'a str, clean: bool, keep_alive: u16) -> Connect<'a> {
            Connect {
                level: 4,
                client_id,
                clean,
                keep_alive,
                will: None,
                properties: Vec::new(),
            }
        }

        pub fn v5(client_id: &'a str, clean: bool, keep_alive: u16) -> Connect<'a> {
            Connect {
                level: 5,
                ..Connect::v311(client_id, clean, keep_alive)
            }
        }

        /// Clean session, keep alive 60 s, nothing else.
        pub fn plain(v: V, client_id: &'a str) -> Connect<'a> {
            match v {
                V::V311 => Connect::v311(client_id, true, 60),
                V::V5 => Connect::v5(client_id, true, 60),
            }
        }
    }

    pub fn encode_connect(c: &Connect) -> Vec<u8> {
        let v5 = c.level == 5;
        let mut flags = 0u8;
        if c.clean {
            flags |= 0x02;
        }
        let mut payload = string(c.client_id.as_bytes());
        if let Some(w) = &c.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
            if v5 {
                payload.extend(varint(w.properties.len()));
                payload.extend_from_slice(&w.properties);
            }
            payload.extend(string(w.topic.as_bytes()));
            payload.extend(string(w.payload));
        }
        let props = v5.then_some(&c.properties[..]);
        connect_packet(b"MQTT", c.level, flags, c.keep_alive, props, &payload)
    }

    pub fn encode_puback(packet_id: u16) -> Vec<u8> {
        packet(0x40, &packet_id.to_be_bytes())
    }

    pub fn encode_pingreq() -> Vec<u8> {
        packet(0xC0, &[])
    }

    /// 3.1.1 DISCONNECT, or v5 DISCONNECT with a reason code.
    pub fn encode_disconnect(v5_reason: Option<u8>) -> Vec<u8> {
        match v5_reason {
            Some(r) => packet(0xE0, &[r, 0]),
            None => packet(0xE0, &[]),
        }
    }

    /// One packet read from the broker: its first byte and what follows the remaining length.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Frame {
        pub first: u8,
        pub body: Vec<u8>,
    }

    impl Frame {
        /// The packet type in the high nibble, flags cleared (compare with `PUBLISH` etc.).
        pub fn kind(&self) -> u8 {
            self.first & 0xF0
        }
    }

    /// A decoded PUBLISH.
    #[derive(Debug, Clone)]
    pub struct Pub {
        pub dup: bool,
        pub qos: u8,
        pub retain: bool,
        pub topic: String,
        pub packet_id: u16,
        pub payload: Vec<u8>,
    }

    pub fn publish_of(f: &Frame, v: V) -> Pub {
        assert_eq!(f.kind(), PUBLISH, "not a PUBLISH: {f:?}");
        let mut body = &f.body[..];
        let qos = (f.first >> 1) & 3;
        let len = usize::from(body.get_u16());
        let topic = String::from_utf8(body[..len].to_vec()).expect("UTF-8 topic");
        body.advance(len);
        let packet_id = if qos > 0 { body.get_u16() } else { 0 };
        if v.is_v5() {
            let (plen, used) = decode_varint(body).expect("property length");
            body.advance(used + plen);
        }
        Pub {
            dup: f.first & 0x08 != 0,
            qos,
            retain: f.first & 0x01 != 0,
            topic,
            packet_id,
            payload: body.to_vec(),
        }
    }

    /// How reading a packet ended when no packet came.
    #[derive(Debug, PartialEq, Eq)]
    pub enum End {
        /// Orderly close or reset by the broker.
        Closed,
        /// Nothing within the wait.
        Silent,
    }

    /// A client on a raw socket.
    pub struct Raw {
        pub stream: TcpStream,
        buf: BytesMut,
        eof: bool,
    }

    impl Raw {
        pub async fn open(addr: SocketAddr) -> Raw {
            let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
                .await
                .unwrap_or_else(|_| panic!("TCP connect to {addr} timed out"))
                .unwrap_or_else(|e| panic!("TCP connect to {addr} failed: {e}"));
            stream.set_nodelay(true).expect("nodelay");
            Raw {
                stream,
                buf: BytesMut::with_capacity(64 * 1024),
                eof: false,
            }
        }

        /// Opens a socket and sends `first` (a CONNECT to be judged, or something else).
        pub async fn open_with(addr: SocketAddr, first: &[u8]) -> Raw {
            let mut raw = Raw::open(addr).await;
            raw.send(first).await;
            raw
        }

        /// Opens a socket, sends CONNECT and expects a successful CONNACK; returns session present.
        pub async fn connect(addr: SocketAddr, c: &Connect<'_>) -> (Raw, bool) {
            let mut raw = Raw::open_with(addr, &encode_connect(c)).await;
            let ack = raw.expect_packet("CONNACK").await;
            assert_eq!(ack.first, CONNACK, "expected CONNACK, got {ack:?}");
            assert_eq!(ack.body.get(1), Some(&0), "CONNACK not successful: {ack:?}");
            (raw, ack.body[0] & 1 == 1)
        }

        /// Opens a connection and completes a clean-session CONNECT/CONNACK exchange.
        pub async fn connected(addr: SocketAddr, v: V, client_id: &str) -> Raw {
            Raw::connect(addr, &Connect::plain(v, client_id)).await.0
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            tokio::time::timeout(WAIT, self.stream.write_all(bytes))
                .await
                .expect("write to the broker timed out")
                .expect("write to the broker failed");
        }

        /// Like `send`, but a broker that already closed the socket is not an error.
        pub async fn send_lenient(&mut self, bytes: &[u8]) {
            let _ = tokio::time::timeout(WAIT, self.stream.write_all(bytes)).await;
        }

        /// Writes without a deadline of its own (for bulk writes the caller bounds).
        pub async fn stream_write(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("socket write");
        }

        fn split_frame(&mut self) -> Option<Frame> {
            let (len, used) = decode_varint(self.buf.get(1..)?)?;
            if self.buf.len() < 1 + used + len {
                return None;
            }
            let first = self.buf[0];
            self.buf.advance(1 + used);
            let body = self.buf.split_to(len).to_vec();
            Some(Frame { first, body })
        }

        /// Reads the next packet; None once the connection has closed (EOF, or a reset, which is
        /// how a close may look), whatever part of a packet is left unread.
        pub async fn read_frame(&mut self) -> Option<Frame> {
            loop {
                if let Some(frame) = self.split_frame() {
                    return Some(frame);
                }
                if self.eof {
                    return None;
                }
                self.buf.reserve(64 * 1024);
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => self.eof = true,
                    Ok(_) => {}
                }
            }
        }

        /// The next packet within `within`, or why there is none. A close in the middle of a
        /// packet fails the test.
        pub async fn read_packet_within(&mut self, within: Duration) -> Result<Frame, End> {
            match tokio::time::timeout(within, self.read_frame()).await {
                Err(_) => Err(End::Silent),
                Ok(Some(frame)) => Ok(frame),
                Ok(None) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection closed in the middle of a packet: {:02X?}",
                        &self.buf[..]
                    );
                    Err(End::Closed)
                }
            }
        }

        pub async fn read_packet(&mut self) -> Result<Frame, End> {
            self.read_packet_within(WAIT).await
        }

        /// The next packet; fails the test if the connection closes or stays silent.
        pub async fn expect_packet(&mut self, what: &str) -> Frame {
            match self.read_packet().await {
                Ok(frame) => frame,
                Err(End::Closed) => panic!("expected {what}, but the broker closed the connection"),
                Err(End::Silent) => panic!("expected {what}, but nothing came within {WAIT:?}"),
            }
        }

        /// Next frame of kind `kind`, skipping others.
        pub async fn expect_kind(&mut self, kind: u8, d: Duration) -> Frame {
            within(d, &format!("a packet of type 0x{kind:02x}"), async {
                loop {
                    match self.read_frame().await {
                        Some(f) if f.kind() == kind => return f,
                        Some(_) => {}
                        None => {
                            panic!("connection closed while waiting for packet type 0x{kind:02x}")
                        }
                    }
                }
            })
            .await
        }

        /// Subscribes to one filter (packet id 1) and expects a successful SUBACK.
        pub async fn subscribe(&mut self, v: V, filter: &str, options: u8) {
            self.send(&v.subscribe(filter, options)).await;
            let f = self.expect_kind(SUBACK, WAIT).await;
            let code = *f.body.last().expect("SUBACK code");
            assert!(
                code < 0x80,
                "subscription to {filter} refused: 0x{code:02x}"
            );
        }

        /// A PINGREQ answered by PINGRESP: the connection is alive and in sync.
        pub async fn ping(&mut self) {
            self.send(&encode_pingreq()).await;
            let frame = self.expect_packet("PINGRESP").await;
            assert_eq!(frame.first, PINGRESP, "expected PINGRESP, got {frame:?}");
        }

        /// Waits until the broker closes the connection, skipping any packets; returns them.
        pub async fn until_closed(&mut self, d: Duration) -> Vec<Frame> {
            within(d, "the broker to close the connection", async {
                let mut seen = Vec::new();
                while let Some(f) = self.read_frame().await {
                    seen.push(f);
                }
                seen
            })
            .await
        }

        /// Asserts that the broker sends nothing more and closes the connection within `WAIT`.
        pub async fn expect_closed(&mut self, context: &str) {
            match self.read_packet().await {
                Err(End::Closed) => {}
                Err(End::Silent) => panic!("{context}: connection still open after {WAIT:?}"),
                Ok(frame) => panic!("{context}: expected the connection to close, got {frame:?}"),
            }
        }

        /// Asserts a v5 DISCONNECT with `code`, then the close.
        pub async fn expect_disconnect(&mut self, code: u8, context: &str) {
            let frame = self
                .expect_packet(&format!("DISCONNECT 0x{code:02X} ({context})"))
                .await;
            assert_eq!(
                frame.first, DISCONNECT,
                "{context}: expected DISCONNECT, got {frame:?}"
            );
            assert_eq!(
                frame.body.first(),
                Some(&code),
                "{context}: DISCONNECT reason 0x{:02X?} instead of 0x{code:02X}",
                frame.body.first()
            );
            self.expect_closed(context).await;
        }

        /// The answer bad input deserves: v5 DISCONNECT with `code` then close; 3.1.1 close alone.
        pub async fn expect_rejected(&mut self, v: V, code: u8, context: &str) {
            match v {
                V::V5 => self.expect_disconnect(code, context).await,
                V::V311 => self.expect_closed(context).await,
            }
        }

        /// Asserts a CONNACK whose return/reason code (second body byte) is `code`, then the close.
        pub async fn expect_connack_refusal(&mut self, code: u8, context: &str) {
            let frame = self
                .expect_packet(&format!("CONNACK 0x{code:02X} ({context})"))
                .await;
            assert_eq!(
                frame.first, CONNACK,
                "{context}: expected CONNACK, got {frame:?}"
            );
            assert_eq!(
                frame.body.get(1),
                Some(&code),
                "{context}: CONNACK code {:02X?} instead of 0x{code:02X} ({frame:?})",
                frame.body.get(1)
            );
            self.expect_closed(context).await;
        }
    }
}
