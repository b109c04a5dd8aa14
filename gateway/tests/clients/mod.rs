//! Client-side plumbing shared by the capability tests: rumqttc 3.1.1 and 5.0 clients whose event
//! loops run in their own task and report into a channel (so a test awaits events with a deadline
//! instead of driving the loop), and a raw TCP client that writes hand-encoded packets, for what a
//! well-behaved library will not do (withhold acknowledgements, go silent, drop the socket).

#![allow(dead_code, unused_imports)]

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
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
// MQTT 3.1.1 through rumqttc
// ---------------------------------------------------------------------------------------------

pub mod v3 {
    use super::*;
    pub use rumqttc::{AsyncClient, ConnAck, Event, MqttOptions, Packet, Publish, QoS};

    /// A connected rumqttc 3.1.1 client. Its event loop stops at the first error (no reconnect).
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: mpsc::UnboundedReceiver<Result<Event, String>>,
        backlog: VecDeque<Event>,
        task: JoinHandle<()>,
        closed: Option<String>,
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

    impl Client {
        pub async fn connect(options: MqttOptions) -> Client {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (tx, mut events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(e) => {
                            if tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
            });
            let connack = within(WAIT, "CONNACK (3.1.1)", async {
                loop {
                    match events.recv().await {
                        Some(Ok(Event::Incoming(Packet::ConnAck(c)))) => break c,
                        Some(Ok(_)) => {}
                        Some(Err(e)) => panic!("3.1.1 connect failed: {e}"),
                        None => panic!("3.1.1 event loop ended before CONNACK"),
                    }
                }
            })
            .await;
            Client {
                client,
                connack,
                events,
                backlog: VecDeque::new(),
                task,
                closed: None,
            }
        }

        /// The next event, backlog first; Err when the connection has ended.
        async fn next_event(&mut self) -> Result<Event, String> {
            if let Some(e) = self.backlog.pop_front() {
                return Ok(e);
            }
            if let Some(why) = &self.closed {
                return Err(why.clone());
            }
            let r = match self.events.recv().await {
                Some(r) => r,
                None => Err("event loop ended".to_owned()),
            };
            if let Err(why) = &r {
                self.closed = Some(why.clone());
            }
            r
        }

        /// Waits for an incoming packet matching `pick`, keeping the others for later.
        async fn wait_incoming<T>(
            &mut self,
            what: &str,
            mut pick: impl FnMut(&Packet) -> Option<T>,
        ) -> T {
            within(WAIT, what, async {
                loop {
                    if let Some(why) = &self.closed {
                        panic!("connection ended while waiting for {what}: {why}");
                    }
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(p))) => {
                            if let Some(v) = pick(&p) {
                                return v;
                            }
                            self.backlog.push_back(Event::Incoming(p));
                        }
                        Some(Ok(e)) => self.backlog.push_back(e),
                        Some(Err(e)) => self.closed = Some(e),
                        None => self.closed = Some("event loop ended".to_owned()),
                    }
                }
            })
            .await
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
            self.wait_incoming(&format!("SUBACK for {filter}"), |p| match p {
                Packet::SubAck(s) => Some(s.return_codes.clone()),
                _ => None,
            })
            .await
        }

        pub async fn unsubscribe(&mut self, filter: &str) {
            self.client
                .unsubscribe(filter)
                .await
                .expect("unsubscribe request");
            self.wait_incoming(&format!("UNSUBACK for {filter}"), |p| match p {
                Packet::UnsubAck(_) => Some(()),
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
            self.wait_incoming(
                &format!("acknowledgement of a publish to {topic}"),
                |p| match p {
                    Packet::PubAck(_) if qos == QoS::AtLeastOnce => Some(()),
                    Packet::PubComp(_) if qos == QoS::ExactlyOnce => Some(()),
                    _ => None,
                },
            )
            .await
        }

        /// Waits for the next PUBLISH.
        pub async fn next_publish(&mut self, within_: Duration) -> Publish {
            match self.try_next_publish(within_).await {
                Some(p) => p,
                None => panic!("no PUBLISH arrived within {within_:?}"),
            }
        }

        /// The next PUBLISH within `d`, or None on timeout. Panics if the connection ended.
        pub async fn try_next_publish(&mut self, d: Duration) -> Option<Publish> {
            let r = tokio::time::timeout(d, async {
                loop {
                    match self.next_event().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => return p,
                        Ok(_) => {}
                        Err(e) => panic!("connection ended while waiting for a PUBLISH: {e}"),
                    }
                }
            })
            .await;
            r.ok()
        }

        /// Asserts that no PUBLISH arrives for `d`.
        pub async fn expect_no_publish(&mut self, d: Duration) {
            if let Some(p) = self.try_next_publish(d).await {
                panic!("unexpected PUBLISH on {}: {:?}", p.topic, p);
            }
        }

        /// Waits for the eventloop to report that the connection ended; returns the reason.
        pub async fn closed(&mut self, d: Duration) -> String {
            within(d, "the connection to close", async {
                loop {
                    if let Err(e) = self.next_event().await {
                        return e;
                    }
                }
            })
            .await
        }

        /// Sends DISCONNECT and waits for the loop to end.
        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(WAIT, async { while self.next_event().await.is_ok() {} })
                .await;
            self.task.abort();
        }

        /// Drops the connection without DISCONNECT (the socket is closed as the task is dropped).
        pub async fn abort(mut self) {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
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

    pub enum Ended {
        /// The server sent DISCONNECT with this reason code.
        ServerDisconnect(u8),
        Other(String),
    }

    /// A connected rumqttc 5.0 client. Its event loop stops at the first error (no reconnect).
    pub struct Client {
        pub client: AsyncClient,
        pub connack: ConnAck,
        events: mpsc::UnboundedReceiver<Result<Event, Ended>>,
        backlog: VecDeque<Event>,
        task: JoinHandle<()>,
        closed: Option<String>,
        closed_code: Option<u8>,
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

    fn disconnect_code(e: &ConnectionError) -> Option<u8> {
        match e {
            ConnectionError::MqttState(StateError::ServerDisconnect { reason_code, .. }) => {
                Some(*reason_code as u8)
            }
            _ => None,
        }
    }

    impl Client {
        pub async fn connect(options: MqttOptions) -> Client {
            match Client::try_connect(options).await {
                Ok(c) => c,
                Err(e) => panic!("5.0 connect failed: {e}"),
            }
        }

        pub async fn try_connect(options: MqttOptions) -> Result<Client, String> {
            let (client, mut eventloop) = AsyncClient::new(options, 1000);
            let (tx, mut events) = mpsc::unbounded_channel();
            let task = tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(e) => {
                            if tx.send(Ok(e)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            let ended = match disconnect_code(&e) {
                                Some(code) => Ended::ServerDisconnect(code),
                                None => Ended::Other(e.to_string()),
                            };
                            let _ = tx.send(Err(ended));
                            return;
                        }
                    }
                }
            });
            let connack = within(WAIT, "CONNACK (5.0)", async {
                loop {
                    match events.recv().await {
                        Some(Ok(Event::Incoming(Packet::ConnAck(c)))) => break Ok(c),
                        Some(Ok(_)) => {}
                        Some(Err(Ended::ServerDisconnect(c))) => {
                            break Err(format!("DISCONNECT 0x{c:02x} before CONNACK"))
                        }
                        Some(Err(Ended::Other(e))) => break Err(e),
                        None => break Err("event loop ended before CONNACK".to_owned()),
                    }
                }
            })
            .await?;
            Ok(Client {
                client,
                connack,
                events,
                backlog: VecDeque::new(),
                task,
                closed: None,
                closed_code: None,
            })
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

        async fn next_event(&mut self) -> Result<Event, String> {
            if let Some(e) = self.backlog.pop_front() {
                return Ok(e);
            }
            if let Some(why) = &self.closed {
                return Err(why.clone());
            }
            match self.events.recv().await {
                Some(Ok(e)) => Ok(e),
                Some(Err(e)) => {
                    self.note_end(Some(e));
                    Err(self.closed.clone().unwrap_or_default())
                }
                None => {
                    self.note_end(None);
                    Err(self.closed.clone().unwrap_or_default())
                }
            }
        }

        async fn wait_incoming<T>(
            &mut self,
            what: &str,
            mut pick: impl FnMut(&Packet) -> Option<T>,
        ) -> T {
            within(WAIT, what, async {
                loop {
                    if let Some(why) = &self.closed {
                        panic!("connection ended while waiting for {what}: {why}");
                    }
                    match self.events.recv().await {
                        Some(Ok(Event::Incoming(p))) => {
                            if let Some(v) = pick(&p) {
                                return v;
                            }
                            self.backlog.push_back(Event::Incoming(p));
                        }
                        Some(Ok(e)) => self.backlog.push_back(e),
                        Some(Err(e)) => self.note_end(Some(e)),
                        None => self.note_end(None),
                    }
                }
            })
            .await
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
            let name = filter.path.clone();
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
            self.wait_incoming(&format!("SUBACK for {name}"), |p| match p {
                Packet::SubAck(s) => Some(s.return_codes.clone()),
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

        /// Publishes at QoS 1 or 2 and waits for the PUBACK / PUBCOMP; returns its reason code.
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
            self.wait_incoming(
                &format!("acknowledgement of a publish to {topic}"),
                |p| match p {
                    Packet::PubAck(_) if qos == QoS::AtLeastOnce => Some(()),
                    Packet::PubComp(_) if qos == QoS::ExactlyOnce => Some(()),
                    _ => None,
                },
            )
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
            tokio::time::timeout(d, async {
                loop {
                    match self.next_event().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => return p,
                        Ok(_) => {}
                        Err(e) => panic!("connection ended while waiting for a PUBLISH: {e}"),
                    }
                }
            })
            .await
            .ok()
        }

        pub async fn expect_no_publish(&mut self, d: Duration) {
            if let Some(p) = self.try_next_publish(d).await {
                panic!("unexpected PUBLISH: {p:?}");
            }
        }

        /// Waits for the connection to end; returns the server's DISCONNECT reason code if any.
        pub async fn closed(&mut self, d: Duration) -> Option<u8> {
            within(d, "the connection to close", async {
                while self.next_event().await.is_ok() {}
            })
            .await;
            self.closed_code
        }

        /// Why the connection ended, once it has.
        pub fn end_reason(&self) -> Option<&str> {
            self.closed.as_deref()
        }

        /// Collects every PUBLISH until the connection ends; returns them and the server's
        /// DISCONNECT reason code, if it sent one.
        pub async fn drain_until_closed(&mut self, d: Duration) -> (Vec<Publish>, Option<u8>) {
            let mut got = Vec::new();
            within(d, "the connection to close", async {
                loop {
                    match self.next_event().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => got.push(p),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            })
            .await;
            (got, self.closed_code)
        }

        pub async fn disconnect(mut self) {
            let _ = self.client.disconnect().await;
            let _ = tokio::time::timeout(WAIT, async { while self.next_event().await.is_ok() {} })
                .await;
            self.task.abort();
        }

        pub async fn abort(mut self) {
            self.task.abort();
            let _ = (&mut self.task).await;
        }
    }

    impl Drop for Client {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    pub fn topic_of(p: &Publish) -> String {
        String::from_utf8(p.topic.to_vec()).expect("UTF-8 topic")
    }
}

/// The topic of a 3.1.1 PUBLISH as text.
pub fn topic_of(p: &rumqttc::Publish) -> String {
    p.topic.clone()
}

// ---------------------------------------------------------------------------------------------
// Raw sockets with hand-encoded packets
// ---------------------------------------------------------------------------------------------

pub mod raw {
    use super::*;

    pub const CONNACK: u8 = 0x20;
    pub const PUBLISH: u8 = 0x30;
    pub const PUBACK: u8 = 0x40;
    pub const SUBACK: u8 = 0x90;
    pub const PINGRESP: u8 = 0xD0;
    pub const DISCONNECT: u8 = 0xE0;

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
    }

    /// One packet as read: the first byte of the fixed header and the rest after the length.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub header: u8,
        pub body: Bytes,
    }

    impl Frame {
        pub fn kind(&self) -> u8 {
            self.header & 0xF0
        }
    }

    /// A decoded PUBLISH (3.1.1 layout unless `v5` is given to `publish_of`).
    #[derive(Debug, Clone)]
    pub struct Pub {
        pub dup: bool,
        pub qos: u8,
        pub retain: bool,
        pub topic: String,
        pub packet_id: u16,
        pub payload: Bytes,
    }

    pub fn put_str(out: &mut BytesMut, s: &[u8]) {
        out.put_u16(s.len() as u16);
        out.put_slice(s);
    }

    pub fn put_varint(out: &mut BytesMut, mut n: usize) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.put_u8(b);
            if n == 0 {
                break;
            }
        }
    }

    /// Wraps a variable header + payload into a packet with the given first byte.
    pub fn packet(first: u8, body: &[u8]) -> BytesMut {
        let mut out = BytesMut::with_capacity(body.len() + 5);
        out.put_u8(first);
        put_varint(&mut out, body.len());
        out.put_slice(body);
        out
    }

    /// A v5 four-byte-integer property.
    pub fn prop_u32(id: u8, v: u32) -> Vec<u8> {
        let mut p = vec![id];
        p.extend_from_slice(&v.to_be_bytes());
        p
    }

    pub fn encode_connect(c: &Connect) -> BytesMut {
        let v5 = c.level == 5;
        let mut b = BytesMut::new();
        put_str(&mut b, b"MQTT");
        b.put_u8(c.level);
        let mut flags = 0u8;
        if c.clean {
            flags |= 0x02;
        }
        if let Some(w) = &c.will {
            flags |= 0x04 | (w.qos << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        b.put_u8(flags);
        b.put_u16(c.keep_alive);
        if v5 {
            put_varint(&mut b, c.properties.len());
            b.put_slice(&c.properties);
        }
        put_str(&mut b, c.client_id.as_bytes());
        if let Some(w) = &c.will {
            if v5 {
                put_varint(&mut b, w.properties.len());
                b.put_slice(&w.properties);
            }
            put_str(&mut b, w.topic.as_bytes());
            put_str(&mut b, w.payload);
        }
        packet(0x10, &b)
    }

    pub fn encode_subscribe(v5: bool, packet_id: u16, filter: &str, options: u8) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u16(packet_id);
        if v5 {
            b.put_u8(0);
        }
        put_str(&mut b, filter.as_bytes());
        b.put_u8(options);
        packet(0x82, &b)
    }

    pub fn encode_publish(
        v5: bool,
        topic: &str,
        qos: u8,
        retain: bool,
        packet_id: u16,
        payload: &[u8],
    ) -> BytesMut {
        let mut b = BytesMut::with_capacity(topic.len() + payload.len() + 5);
        put_str(&mut b, topic.as_bytes());
        if qos > 0 {
            b.put_u16(packet_id);
        }
        if v5 {
            b.put_u8(0);
        }
        b.put_slice(payload);
        packet(0x30 | (qos << 1) | u8::from(retain), &b)
    }

    pub fn encode_puback(packet_id: u16) -> BytesMut {
        packet(0x40, &packet_id.to_be_bytes())
    }

    pub fn encode_pingreq() -> BytesMut {
        packet(0xC0, &[])
    }

    /// 3.1.1 DISCONNECT, or v5 DISCONNECT with a reason code.
    pub fn encode_disconnect(v5_reason: Option<u8>) -> BytesMut {
        match v5_reason {
            Some(r) => packet(0xE0, &[r, 0]),
            None => packet(0xE0, &[]),
        }
    }

    pub fn publish_of(f: &Frame, v5: bool) -> Pub {
        assert_eq!(f.kind(), PUBLISH, "not a PUBLISH: {f:?}");
        let mut body = f.body.clone();
        let qos = (f.header >> 1) & 3;
        let len = usize::from(body.get_u16());
        let topic = String::from_utf8(body.split_to(len).to_vec()).expect("UTF-8 topic");
        let packet_id = if qos > 0 { body.get_u16() } else { 0 };
        if v5 {
            let (plen, used) = varint(&body).expect("property length");
            body.advance(used + plen);
        }
        Pub {
            dup: f.header & 0x08 != 0,
            qos,
            retain: f.header & 0x01 != 0,
            topic,
            packet_id,
            payload: body,
        }
    }

    /// Decodes a variable byte integer; returns (value, bytes used).
    pub fn varint(b: &[u8]) -> Option<(usize, usize)> {
        let mut n = 0usize;
        for (i, byte) in b.iter().enumerate().take(4) {
            n |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((n, i + 1));
            }
        }
        None
    }

    pub struct Raw {
        pub stream: TcpStream,
        buf: BytesMut,
        eof: bool,
    }

    impl Raw {
        pub async fn open(addr: SocketAddr) -> Raw {
            let stream = within(WAIT, "TCP connect", TcpStream::connect(addr))
                .await
                .expect("TCP connect");
            stream.set_nodelay(true).expect("nodelay");
            Raw {
                stream,
                buf: BytesMut::with_capacity(64 * 1024),
                eof: false,
            }
        }

        /// Opens a socket, sends CONNECT and expects a successful CONNACK; returns session present.
        pub async fn connect(addr: SocketAddr, c: &Connect<'_>) -> (Raw, bool) {
            let mut raw = Raw::open(addr).await;
            raw.send(&encode_connect(c)).await;
            let f = raw.expect_frame(WAIT).await;
            assert_eq!(f.kind(), CONNACK, "expected CONNACK, got {f:?}");
            assert!(f.body.len() >= 2, "short CONNACK {f:?}");
            assert_eq!(
                f.body[1], 0,
                "CONNECT refused with code 0x{:02x}",
                f.body[1]
            );
            (raw, f.body[0] & 1 == 1)
        }

        pub async fn send(&mut self, bytes: &[u8]) {
            within(WAIT, "socket write", self.stream.write_all(bytes))
                .await
                .expect("socket write");
        }

        /// Writes without a deadline of its own (for bulk writes the caller bounds).
        pub async fn stream_write(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).await.expect("socket write");
        }

        /// Reads the next packet; None on EOF (or a reset, which is how a close may look).
        pub async fn read_frame(&mut self) -> Option<Frame> {
            loop {
                if let Some((len, used)) = varint(self.buf.get(1..).unwrap_or(&[])) {
                    if self.buf.len() >= 1 + used + len {
                        let header = self.buf[0];
                        self.buf.advance(1 + used);
                        let body = self.buf.split_to(len).freeze();
                        return Some(Frame { header, body });
                    }
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

        pub async fn expect_frame(&mut self, d: Duration) -> Frame {
            match within(d, "a packet from the broker", self.read_frame()).await {
                Some(f) => f,
                None => panic!("connection closed while waiting for a packet"),
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

        pub async fn subscribe(&mut self, v5: bool, packet_id: u16, filter: &str, options: u8) {
            self.send(&encode_subscribe(v5, packet_id, filter, options))
                .await;
            let f = self.expect_kind(SUBACK, WAIT).await;
            let code = *f.body.last().expect("SUBACK code");
            assert!(
                code < 0x80,
                "subscription to {filter} refused: 0x{code:02x}"
            );
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
    }
}
