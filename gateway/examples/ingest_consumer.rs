//! A backend reading what the gateway's `[[ingest]]` rules wrote: a durable pull consumer on a
//! JetStream stream, printing each message with its MQTT headers and acknowledging it.
//!
//! ```text
//! cargo run -p gateway --example ingest_consumer -- nats://127.0.0.1:4222 TELEMETRY backend
//! ```
//!
//! The consumer is durable: stopped and started again under the same name, it continues after
//! the last message it acknowledged, however long it was away (within the stream's limits).
//! A new name starts from the stream's first message: a replay from the start.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let stream = args.next().unwrap_or_else(|| "TELEMETRY".to_owned());
    let durable = args.next().unwrap_or_else(|| "backend".to_owned());

    let js = jetstream::new(async_nats::connect(&url).await?);
    let consumer = js
        .get_stream(&stream)
        .await?
        .get_or_create_consumer(
            &durable,
            consumer::pull::Config {
                durable_name: Some(durable.clone()),
                // A new consumer starts at the first message the stream holds.
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                // Not acknowledged within this (the backend crashed mid-message): redelivered.
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await?;
    eprintln!("consuming {stream} as {durable} from {url}");

    let mut messages = consumer.messages().await?;
    while let Some(message) = messages.next().await {
        let message = message?;
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map_or("", |v| v.as_str())
                .to_owned()
        };
        let seq = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        println!(
            "#{seq} {} topic={} client={} qos={} retain={} payload={}",
            message.subject,
            header("Mqtt-Topic"),
            header("Mqtt-Client-Id"),
            header("Mqtt-Qos"),
            header("Mqtt-Retain"),
            String::from_utf8_lossy(&message.payload),
        );
        // Acknowledged once handled: a crash before this line gets the message again.
        message.ack().await?;
    }
    Ok(())
}
