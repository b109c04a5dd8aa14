//! MQTT 5.0 through rumqttc::v5: a connected client whose event loop runs in its own task (see
//! `Events` in `mod.rs`) and stops at the first error.

use super::*;
pub use rumqttc::v5::mqttbytes::v5::{
    ConnAck, ConnectProperties, Filter, LastWill, LastWillProperties, Packet, PubAckReason,
    Publish, PublishProperties, RetainForwardRule, SubscribeProperties, SubscribeReasonCode,
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

    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
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

    /// Publishes at QoS 1 and returns its PUBACK's reason (a refusal is an acknowledgement too).
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> PubAckReason {
        self.publish_acked_within(WAIT, topic, payload).await
    }

    /// `publish_acked`, waiting up to `d` for the PUBACK.
    pub async fn publish_acked_within(
        &mut self,
        d: Duration,
        topic: &str,
        payload: impl Into<Vec<u8>>,
    ) -> PubAckReason {
        self.publish(topic, QoS::AtLeastOnce, false, payload).await;
        let what = format!("PUBACK of a publish to {topic}");
        self.events
            .wait_for_within(d, &what, |e| match incoming(e) {
                Some(Packet::PubAck(a)) => Some(a.reason),
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
