//! The session state machine driven by arbitrary client packet sequences: up to three clients
//! on one broker (the real `client::serve` and session tasks, the router, the registry), each
//! over an in-memory stream, on a current-thread runtime whose clock is paused, so an input
//! replays the same way every time and hours of keep-alive pass in no time.
//!
//! An input is a few bytes of limits (`broker::config`), then steps: a packet from one of the
//! clients (`script`), raw bytes, a packet cut in two with the broker running in between, time
//! passing, a client that stops or starts reading, acknowledges what is in flight, or closes.
//! After each step the broker runs until it has nothing to do; what it wrote is read and checked
//! (`peer`), and so is the state of every session: its queue within `mqtt.max_queued_messages`,
//! its retained backlog within `limits.max_retained_backlog` and `_bytes`, its packet ids in
//! flight nonzero, unique and no more than `mqtt.max_inflight`. At the end every client still
//! connected acknowledges everything, and what publishers were acknowledged must have reached
//! the subscribers (`delivery`); every client that ended its conversation must have been closed,
//! and no connection task may have panicked.

mod broker;
mod delivery;
mod peer;
mod script;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::input::Input;
use crate::codec::{reason, Packet, Publish, QoS};
use crate::context::Context;
use broker::Counters;
use peer::{Flow, Peer};

/// Clients an input drives (two with the same client id take each other's session over).
const SLOTS: usize = 3;
/// Steps per input at most: an input is a few KiB, each step costs a runtime turn or more.
const MAX_STEPS: u64 = 300;
/// Runtime turns (each 1 ms of paused time) a step lets the broker take to go quiet.
const SETTLE_ROUNDS: usize = 64;
/// Rounds of acknowledging everything at the end.
const FINAL_ROUNDS: usize = 64;

/// Runs one input; panics when the broker breaks a property.
pub fn session(data: &[u8]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(run(data));
}

async fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let config = broker::config(&mut input);
    let (ctx, counters) = broker::context(config);
    let mut world = World {
        ctx,
        counters,
        peers: Default::default(),
        retired: Vec::new(),
        last_publish: Default::default(),
        step: 0,
        tags: 0,
        split: false,
    };
    while !input.is_empty() && world.step < MAX_STEPS {
        world.step += 1;
        world.act(&mut input).await;
        world.settle().await;
    }
    world.finish().await;
}

struct World {
    ctx: Arc<Context>,
    counters: Arc<Counters>,
    peers: [Option<Peer>; SLOTS],
    /// Connections a slot replaced: still read and checked.
    retired: Vec<Peer>,
    /// Each slot's last PUBLISH, for a resend with DUP.
    last_publish: [Option<Publish>; SLOTS],
    step: u64,
    tags: u64,
    /// The next packet goes out in two writes with the broker running in between.
    split: bool,
}

impl World {
    async fn act(&mut self, input: &mut Input<'_>) {
        let b = input.byte();
        let slot = usize::from(b) % SLOTS;
        let protocol = self.peers[slot]
            .as_ref()
            .map_or(crate::codec::Protocol::V5, Peer::protocol);
        let v5 = protocol.is_v5();
        let packet = match (b / SLOTS as u8) % 18 {
            0 => {
                let mut connect = script::connect(input);
                // A will's payload never reads as a publish's tag.
                if let Some(will) = connect.will.as_mut() {
                    let mut payload = b"will:".to_vec();
                    payload.extend_from_slice(&will.payload);
                    will.payload = payload.into();
                }
                if let Some(old) = self.peers[slot].take() {
                    self.retire(old);
                }
                self.open(slot);
                Packet::Connect(Box::new(connect))
            }
            1 => {
                self.tags += 1;
                let p = script::publish(input, self.tags, v5);
                self.last_publish[slot] = Some(p.clone());
                Packet::Publish(p)
            }
            2 => {
                let Some(mut p) = self.last_publish[slot].clone() else {
                    return;
                };
                p.dup = p.qos != QoS::AtMostOnce;
                Packet::Publish(p)
            }
            3 => Packet::PubAck(script::ack(self.ack_id(slot, input), reason::SUCCESS)),
            4 => {
                let id = self.ack_id(slot, input);
                Packet::PubRec(script::ack(id, input.pick(&[0x00, 0x00, 0x10, 0x80])))
            }
            5 => Packet::PubRel(script::ack(self.ack_id(slot, input), reason::SUCCESS)),
            6 => Packet::PubComp(script::ack(self.ack_id(slot, input), reason::SUCCESS)),
            7 => Packet::Subscribe(script::subscribe(input, v5)),
            8 => Packet::Unsubscribe(script::unsubscribe(input)),
            9 => Packet::PingReq,
            10 => Packet::Disconnect(script::disconnect(input)),
            11 => Packet::Auth(script::auth(input)),
            12 => {
                let raw = input.chunk().to_vec();
                self.send(slot, raw, input).await;
                return;
            }
            13 => {
                self.split = true;
                return;
            }
            14 => {
                let wait = input.pick(&[10, 500, 1_600, 16_000, 100_000]);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                return;
            }
            15 => {
                if let Some(p) = self.peers[slot].as_mut() {
                    p.reading = !p.reading;
                }
                return;
            }
            16 => {
                if let Some(p) = self.peers[slot].as_mut() {
                    acknowledge_all(p, self.step);
                }
                return;
            }
            _ => {
                if let Some(p) = self.peers[slot].as_mut() {
                    p.close_write();
                }
                return;
            }
        };
        let bytes = script::encoded(
            &packet,
            match &packet {
                Packet::Connect(c) => c.protocol,
                _ => protocol,
            },
        );
        self.send(slot, bytes, input).await;
    }

    /// An acknowledgement's packet id: mostly one in flight to the client, sometimes any.
    fn ack_id(&self, slot: usize, input: &mut Input) -> u16 {
        let ids = self.peers[slot]
            .as_ref()
            .map(Peer::inflight_ids)
            .unwrap_or_default();
        let c = usize::from(input.byte());
        if c % 4 != 3 && !ids.is_empty() {
            ids[c / 4 % ids.len()].0
        } else {
            script::packet_id(input)
        }
    }

    /// Opens a connection for `slot`.
    fn open(&mut self, slot: usize) {
        let policy = &self.ctx.policy;
        let port = u16::try_from(self.step).unwrap_or(u16::MAX);
        let (io, task) = broker::connect(&self.ctx, port);
        self.peers[slot] = Some(Peer::new(
            slot,
            io,
            task,
            policy.max_packet_size,
            policy.max_inflight,
            policy.topic_alias_maximum,
        ));
    }

    fn retire(&mut self, mut old: Peer) {
        old.close_write();
        old.reading = true;
        self.retired.push(old);
    }

    async fn send(&mut self, slot: usize, bytes: Vec<u8>, input: &mut Input<'_>) {
        if self.peers[slot].is_none() {
            // A conversation that does not start with CONNECT.
            self.open(slot);
        }
        let step = self.step;
        let Some(peer) = self.peers[slot].as_mut() else {
            return;
        };
        if std::mem::take(&mut self.split) && bytes.len() > 1 {
            let at = 1 + usize::from(input.byte()) % (bytes.len() - 1);
            peer.write(&bytes[..at], step);
            self.settle().await;
            if let Some(peer) = self.peers[slot].as_mut() {
                peer.write(&bytes[at..], step);
            }
        } else {
            peer.write(&bytes, step);
        }
    }

    fn all_peers(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.peers
            .iter_mut()
            .flatten()
            .chain(self.retired.iter_mut())
    }

    /// Lets the broker run until it has nothing left to do, reading what it writes.
    async fn settle(&mut self) {
        let step = self.step;
        for _ in 0..SETTLE_ROUNDS {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let mut any = false;
            for p in self.all_peers() {
                any |= p.drain(step);
            }
            if !any {
                break;
            }
        }
        self.check_sessions();
    }

    /// The bounds every session keeps, read from its state.
    fn check_sessions(&self) {
        let config = &self.ctx.config;
        let backlog = self.ctx.policy.retained_backlog;
        for session in self.ctx.registry.all() {
            let o = session.occupancy();
            let who = &session.client_id;
            assert!(
                o.queued <= config.mqtt.max_queued_messages,
                "session {who:?}: {} queued, above max_queued_messages {}",
                o.queued,
                config.mqtt.max_queued_messages
            );
            // One message of any size is queued into an empty queue.
            let max_bytes = config.mqtt.max_queued_bytes as usize;
            assert!(
                max_bytes == 0 || o.queued_bytes <= max_bytes || o.in_memory == 1,
                "session {who:?}: {} bytes in {} queued messages, above max_queued_bytes {}",
                o.queued_bytes,
                o.in_memory,
                max_bytes
            );
            assert!(
                backlog.messages == 0 || o.retained <= backlog.messages,
                "session {who:?}: {} retained messages queued, above max_retained_backlog {}",
                o.retained,
                backlog.messages
            );
            assert!(
                backlog.bytes == 0 || o.retained_bytes <= backlog.bytes,
                "session {who:?}: {} retained bytes queued, above max_retained_backlog_bytes {}",
                o.retained_bytes,
                backlog.bytes
            );
            assert!(
                o.inflight.len() <= usize::from(config.mqtt.max_inflight),
                "session {who:?}: {} in flight, above max_inflight {}",
                o.inflight.len(),
                config.mqtt.max_inflight
            );
            let unique: HashSet<u16> = o.inflight.iter().copied().collect();
            assert_eq!(
                unique.len(),
                o.inflight.len(),
                "session {who:?}: packet ids in flight twice: {:?}",
                o.inflight
            );
            assert!(
                !unique.contains(&0),
                "session {who:?}: packet id 0 in flight"
            );
        }
        let panics = self.counters.sum("gateway_task_panics_total");
        assert_eq!(panics, 0, "a connection task panicked");
    }

    /// Every client still connected acknowledges everything until the broker has nothing more
    /// for it; then the delivery check, then the closes.
    async fn finish(&mut self) {
        for p in self.all_peers() {
            p.reading = true;
        }
        self.settle().await;
        let mut quiet = false;
        for _ in 0..FINAL_ROUNDS {
            self.step += 1;
            let step = self.step;
            let mut acked = false;
            for p in self.peers.iter_mut().flatten() {
                if p.attached() && p.has_inflight() {
                    acked |= acknowledge_all(p, step);
                }
            }
            self.settle().await;
            if !acked {
                quiet = true;
                break;
            }
        }
        if quiet {
            // Messages the broker may drop by its limits (a full queue, too large for the
            // client, expired) are lost by design: only without them must everything arrive.
            let dropped = self.counters.sum("gateway_messages_dropped_total");
            let by_design = self
                .counters
                .sum("gateway_messages_dropped_total{reason=no_subscribers")
                + self
                    .counters
                    .sum("gateway_messages_dropped_total{reason=not_authorized");
            let peers: Vec<&Peer> = self
                .peers
                .iter()
                .flatten()
                .chain(self.retired.iter())
                .collect();
            delivery::check(&peers, dropped > by_design);
        }
        // Past the broker's close flush: every conversation that ended is closed.
        tokio::time::sleep(Duration::from_secs(2)).await;
        self.settle().await;
        for p in self.all_peers() {
            assert!(
                !p.must_close() || p.closed(),
                "client {}: the conversation ended but the broker did not close",
                p.slot
            );
            if p.closed() {
                p.join().await;
            }
        }
        self.check_sessions();
    }
}

/// The client answers everything it owes: PUBACK, PUBREC, PUBCOMP. Returns whether it owed any.
fn acknowledge_all(p: &mut Peer, step: u64) -> bool {
    let protocol = p.protocol();
    let mut any = false;
    for (id, flow) in p.inflight_ids() {
        let packet = match flow {
            Flow::Ack => Packet::PubAck(script::ack(id, reason::SUCCESS)),
            Flow::Rec => Packet::PubRec(script::ack(id, reason::SUCCESS)),
            Flow::Comp => Packet::PubComp(script::ack(id, reason::SUCCESS)),
            Flow::Rel => continue,
        };
        any = true;
        p.write(&script::encoded(&packet, protocol), step);
    }
    any
}
