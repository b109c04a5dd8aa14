//! SUBSCRIBE and UNSUBSCRIBE: limits, ACL, the router, retained messages, SUBACK / UNSUBACK.

use tracing::debug;

use super::publish::Held;
use super::{Client, Close};
use crate::codec::{reason, Packet, Properties, SubAck, Subscribe, UnsubAck, Unsubscribe};
use crate::metrics::LimitExceeded;
use crate::topic;

impl Client {
    pub(super) fn on_subscribe(&mut self, s: Subscribe) -> Result<(), Close> {
        let v5 = self.protocol.is_v5();
        let id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        for (filter, options) in &s.filters {
            let shared = filter.starts_with("$share/");
            if shared && options.no_local && v5 {
                return Err(
                    self.violation(reason::PROTOCOL_ERROR, "no local on a shared subscription")
                );
            }
            let policy = &self.ctx.policy;
            if filter.len() > policy.max_topic_length {
                self.ctx.metrics.limit_exceeded(LimitExceeded::TopicLength);
                reasons.push(reason::TOPIC_FILTER_INVALID);
                continue;
            }
            let max_subscriptions = policy.max_subscriptions_per_client;
            if max_subscriptions > 0
                && !self.session.may_subscribe_within(filter, max_subscriptions)
            {
                self.ctx
                    .metrics
                    .limit_exceeded(LimitExceeded::Subscriptions);
                debug!(client = %self.session.client_id, %filter, "subscription refused: limits.max_subscriptions_per_client");
                reasons.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            if !self.may_subscribe(filter) {
                debug!(client = %self.session.client_id, %filter, "subscription not authorized");
                reasons.push(reason::NOT_AUTHORIZED);
                continue;
            }
            match self
                .ctx
                .router
                .subscribe(&self.session, filter, *options, id)
            {
                Ok(sub) => {
                    reasons.push(options.qos as u8);
                    let send_retained = !shared
                        && match options.retain_handling {
                            0 => true,
                            1 => !sub.replaced,
                            _ => false,
                        };
                    if send_retained {
                        let deliveries = self.ctx.router.retained_for(filter, *options, id);
                        self.session.add_retained(deliveries);
                    }
                }
                Err(e) => {
                    debug!(client = %self.session.client_id, %filter, "subscription refused: {e}");
                    self.ctx.metrics.bad_input("topic_filter");
                    reasons.push(reason::TOPIC_FILTER_INVALID);
                }
            }
        }
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
