//! MQTT 3.1.1 through rumqttc: a connected client whose event loop runs in its own task (see
//! `Events` in `mod.rs`) and stops at the first error.

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
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<rumqttc::SubscribeReasonCode> {
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

    pub async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: impl Into<Vec<u8>>) {
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
