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
//!
//! With `--info` first it prints what `nats stream info` shows (the stream's configuration and
//! state, from the JetStream API) and exits:
//!
//! ```text
//! cargo run -p gateway --example ingest_consumer -- --info nats://127.0.0.1:4222 TELEMETRY
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), async_nats::Error> {
    let mut args = std::env::args().skip(1).peekable();
    let info = args.next_if(|a| a == "--info").is_some();
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
    let stream = args.next().unwrap_or_else(|| "TELEMETRY".to_owned());
    let durable = args.next().unwrap_or_else(|| "backend".to_owned());

    let js = jetstream::new(async_nats::connect(&url).await?);
    if info {
        return print_info(&js, &stream).await;
    }
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

/// The stream's configuration and state, as `nats stream info` shows them.
async fn print_info(js: &jetstream::Context, name: &str) -> Result<(), async_nats::Error> {
    let info = js.get_stream(name).await?.info().await?.clone();
    let c = &info.config;
    let limit = |v: i64| {
        if v < 0 {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    let age = |d: Duration| {
        if d.is_zero() {
            "unlimited".to_owned()
        } else {
            format!("{d:?}")
        }
    };
    println!("Information for Stream {} created {}", c.name, info.created);
    println!();
    println!("Configuration:");
    println!("             Subjects: {}", c.subjects.join(", "));
    println!("             Replicas: {}", c.num_replicas);
    println!("              Storage: {:?}", c.storage);
    println!("            Retention: {:?}", c.retention);
    println!("       Discard Policy: {:?}", c.discard);
    println!("     Duplicate Window: {:?}", c.duplicate_window);
    println!("     Maximum Messages: {}", limit(c.max_messages));
    println!("        Maximum Bytes: {}", limit(c.max_bytes));
    println!("          Maximum Age: {}", age(c.max_age));
    println!();
    let s = &info.state;
    println!("State:");
    println!("             Messages: {}", s.messages);
    println!("                Bytes: {}", s.bytes);
    println!(
        "             FirstSeq: {} @ {}",
        s.first_sequence, s.first_timestamp
    );
    println!(
        "              LastSeq: {} @ {}",
        s.last_sequence, s.last_timestamp
    );
    println!("     Active Consumers: {}", s.consumer_count);
    Ok(())
}
