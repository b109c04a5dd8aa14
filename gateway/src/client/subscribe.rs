//! SUBSCRIBE and UNSUBSCRIBE: limits, ACL, the router, retained messages, SUBACK / UNSUBACK.
//!
//! One SUBSCRIBE may carry a quarter of a million entries (1 MiB of one-byte filters), so what
//! it may cost is bounded here. MQTT handles the entries as that many SUBSCRIBEs in a row, each
//! replacing the subscription the one before made for the same filter [MQTT-3.8.4-3, 3.8.4-4]:
//! a filter named again is applied once, at its first entry with its last entry's options, so
//! the index is written and its retained messages are queued once; each entry still gets its
//! own SUBACK code, in order. The retained messages a session's subscribes queue are bounded in
//! messages and bytes (`limits.max_retained_backlog`, `_bytes`), the walk of the retained store
//! stopping where they are full; and a packet of many entries is worked through off the
//! scheduler (`block_in_place`), so the sessions queued behind it on its worker thread move to
//! another and are not held up.

use std::collections::{HashMap, HashSet};

use bytestring::ByteString;
use tracing::debug;

use super::publish::Held;
use super::{Client, Close};
use crate::codec::{
    reason, Packet, Properties, SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe,
};
use crate::metrics::LimitExceeded;
use crate::session::{BacklogFull, Room};
use crate::topic;

/// Entries of one SUBSCRIBE handled on the worker thread as it is; more are handled off it.
const INLINE_ENTRIES: usize = 64;

impl Client {
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        if v5
            && s.filters
                .iter()
                .any(|(filter, options)| options.no_local && filter.starts_with("$share/"))
        {
            return Err(self.violation(reason::PROTOCOL_ERROR, "no local on a shared subscription"));
        }
        let reasons = if s.filters.len() > INLINE_ENTRIES && on_multi_thread_runtime() {
            tokio::task::block_in_place(|| self.apply_entries(&s))
        } else {
            self.apply_entries(&s)
        };
        // A persistent session's SUBACK says the subscription survives a crash.
        let mark = if self.session.is_persistent() {
            let will = self.armed_will();
            self.ctx.router.save_session(&self.session, None, will)
        } else {
            0
        };
        let suback = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.acknowledge_when_stored(Held::Other(Box::new(suback)), mark);
        Ok(())
    }

    /// Applies a SUBSCRIBE's entries; returns each entry's SUBACK code. A filter named more than
    /// once is applied at its first entry with the options of its last (what the entries in a
    /// row would leave); an earlier entry's code is what applying it would have answered: the
    /// refusal the filter met, or the grant of its own QoS.
    fn apply_entries(&mut self, s: &Subscribe) -> Vec<u8> {
        let id = s.properties.subscription_identifiers.first().copied();
        let last = last_entries(&s.filters);
        let mut applied: Vec<Option<u8>> = vec![None; s.filters.len()];
        let mut room = self.session.retained_room(self.ctx.policy.retained_backlog);
        let mut full = None;
        let mut reasons = Vec::with_capacity(s.filters.len());
        for (i, (_, options)) in s.filters.iter().enumerate() {
            let at = last.as_ref().map_or(i, |last| last[i] as usize);
            let code = match applied[at] {
                Some(code) => code,
                None => {
                    let (filter, options) = &s.filters[at];
                    let code = self.subscribe_one(filter, *options, id, &mut room, &mut full);
                    applied[at] = Some(code);
                    code
                }
            };
            reasons.push(if code < 0x80 { options.qos as u8 } else { code });
        }
        reasons
    }

    /// Applies one filter: limits, ACL, the index, retained messages within `room`. `full`: the
    /// session's filters once it holds as many subscriptions as it may (see
    /// `within_subscription_limit`). Returns the SUBACK code.
    fn subscribe_one(
        &mut self,
        filter: &ByteString,
        options: SubscriptionOptions,
        id: Option<u32>,
        room: &mut Room,
        full: &mut Option<HashSet<ByteString>>,
    ) -> u8 {
        let policy = &self.ctx.policy;
        if filter.len() > policy.max_topic_length {
            self.ctx.metrics.limit_exceeded(LimitExceeded::TopicLength);
            return reason::TOPIC_FILTER_INVALID;
        }
        let max_subscriptions = policy.max_subscriptions_per_client;
        if max_subscriptions > 0 && !self.within_subscription_limit(filter, max_subscriptions, full)
        {
            self.ctx
                .metrics
                .limit_exceeded(LimitExceeded::Subscriptions);
            debug!(client = %self.session.client_id, %filter, "subscription refused: limits.max_subscriptions_per_client");
            return reason::QUOTA_EXCEEDED;
        }
        // Before the index or the session allocate anything for it.
        let max_bytes = policy.max_subscription_bytes_per_client;
        if max_bytes > 0 && !self.session.subscription_fits(filter, max_bytes) {
            self.ctx
                .metrics
                .limit_exceeded(LimitExceeded::SubscriptionBytes);
            debug!(client = %self.session.client_id, %filter, "subscription refused: limits.max_subscription_bytes_per_client");
            return reason::QUOTA_EXCEEDED;
        }
        if !self.may_subscribe(filter) {
            debug!(client = %self.session.client_id, %filter, "subscription not authorized");
            return reason::NOT_AUTHORIZED;
        }
        match self
            .ctx
            .router
            .subscribe(&self.session, filter, options, id)
        {
            Ok(sub) => {
                let send_retained = !filter.starts_with("$share/")
                    && match options.retain_handling {
                        0 => true,
                        1 => !sub.replaced,
                        _ => false,
                    };
                if send_retained {
                    let (deliveries, cut) = self.ctx.router.retained_for(filter, options, id, room);
                    self.session.add_retained(deliveries);
                    if let Some(bound) = cut {
                        debug!(client = %self.session.client_id, %filter, ?bound, "retained messages cut short: limits.max_retained_backlog");
                        self.ctx.metrics.limit_exceeded(match bound {
                            BacklogFull::Messages => LimitExceeded::RetainedBacklog,
                            BacklogFull::Bytes => LimitExceeded::RetainedBacklogBytes,
                        });
                    }
                }
                options.qos as u8
            }
            Err(e) => {
                debug!(client = %self.session.client_id, %filter, "subscription refused: {e}");
                self.ctx.metrics.bad_input("topic_filter");
                reason::TOPIC_FILTER_INVALID
            }
        }
    }

    /// Whether subscribing to `filter` keeps the session within `max` subscriptions: replacing
    /// an existing one always does. Once the session is full nothing is added for the rest of
    /// the packet, so its filters are gathered into `full` once and looked up there: a scan of
    /// 10,000 subscriptions for each of 250,000 entries would be billions of comparisons.
    fn within_subscription_limit(
        &self,
        filter: &str,
        max: usize,
        full: &mut Option<HashSet<ByteString>>,
    ) -> bool {
        if let Some(existing) = full {
            return existing.contains(filter);
        }
        if self.session.subscription_count() < max {
            return true;
        }
        let existing: HashSet<ByteString> = self
            .session
            .subscriptions()
            .into_iter()
            .map(|s| s.filter)
            .collect();
        let replacing = existing.contains(filter);
        *full = Some(existing);
        replacing
    }

    /// ACL check of a SUBSCRIBE filter; for `$share/{group}/F` the filter F is what is read.
    fn may_subscribe(&mut self, filter: &str) -> bool {
        let Some(acl) = self.acl.as_mut() else {
            return true;
        };
        // A malformed shared filter is left for the router to refuse with its own reason code.
        let plain = match topic::parse_shared(filter) {
            Ok(Some((_, f))) => f,
            _ => filter,
        };
        acl.may_subscribe(plain)
    }

    pub(super) fn on_unsubscribe(&mut self, u: Unsubscribe) {
        let reasons = u
            .filters
            .iter()
            .map(|f| {
                if self.ctx.router.unsubscribe(&self.session, f) {
                    reason::SUCCESS
                } else {
                    reason::NO_SUBSCRIPTION_EXISTED
                }
            })
            .collect();
        let mark = if self.session.is_persistent() {
            let will = self.armed_will();
            self.ctx.router.save_session(&self.session, None, will)
        } else {
            0
        };
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            properties: Properties::default(),
        });
        self.acknowledge_when_stored(Held::Other(Box::new(unsuback)), mark);
    }
}

/// For each entry of a SUBSCRIBE of several, the index of the last entry naming the same filter;
/// `None` for a single entry. An entry takes at least 4 bytes, so even the largest packet MQTT
/// allows (256 MiB) holds fewer entries than `u32` counts.
fn last_entries(filters: &[(ByteString, SubscriptionOptions)]) -> Option<Vec<u32>> {
    if filters.len() < 2 {
        return None;
    }
    // SipHash with a random key (std's default): the filters are the client's to choose, and a
    // hash it could collide at will would make this quadratic.
    let mut last: HashMap<&str, u32> = HashMap::with_capacity(filters.len());
    for (i, (filter, _)) in filters.iter().enumerate() {
        last.insert(filter, u32::try_from(i).unwrap_or(u32::MAX));
    }
    Some(
        filters
            .iter()
            .enumerate()
            .map(|(i, (filter, _))| {
                let own = u32::try_from(i).unwrap_or(u32::MAX);
                last.get(&filter[..]).copied().unwrap_or(own)
            })
            .collect(),
    )
}

/// `block_in_place` needs a multi-threaded runtime (the binary's); a single-threaded one (some
/// tests) handles every SUBSCRIBE in place.
fn on_multi_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
