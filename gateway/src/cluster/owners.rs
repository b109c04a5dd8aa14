//! The owner record of each client id: which node holds its session, written by compare-and-swap.
//!
//! One JetStream key-value bucket per cluster (`{prefix}_sessions`, stream `KV_{prefix}_sessions`,
//! one value per key, on file) holds, per client id, the node that owns it (`Owner`). A CONNECT claims its client id by
//! writing its node there with the revision it read as the expected last one (what nats-server's
//! own MQTT does with `Nats-Expected-Last-Subject-Sequence`): of two nodes writing at once, one
//! wins the round and the other's write is refused; the loser reads again and writes again, so
//! the later CONNECT ends as owner. The revision a node won with is its owner epoch: a claim
//! with a higher one is newer. Keys are the client id in unpadded URL-safe base64 (every byte
//! of it allowed in a key, whatever the client id holds) after a `c`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use async_nats::jetstream;
use async_nats::jetstream::kv::{self, Operation, UpdateErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, StorageType};

/// Compare-and-swap rounds a claim may lose before it gives up (a client id fought over by
/// that many CONNECTs at once).
const MAX_ROUNDS: usize = 16;
/// Longest key: the subject `$KV.{bucket}.{key}` must stay within nats-server's control line.
const MAX_KEY: usize = 2_048;

/// Who holds a client id: a node, and which start of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Owner {
    pub(crate) node: String,
    pub(crate) instance: u64,
}

/// A claim won: the owner epoch, the owner it replaced, and whether a round was lost first.
#[derive(Debug)]
pub(crate) struct Won {
    pub(crate) epoch: u64,
    pub(crate) previous: Option<Owner>,
    pub(crate) retried: bool,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    #[error("owner record unreachable: {0}")]
    Unreachable(String),
    #[error("client id too long for an owner record key")]
    KeyTooLong,
    #[error("claim lost {MAX_ROUNDS} rounds in a row")]
    Contended,
}

fn unreachable(e: impl std::fmt::Display) -> ClaimError {
    ClaimError::Unreachable(e.to_string())
}

/// This node's access to the owner records.
pub(crate) struct Owners {
    bucket: String,
    me: Owner,
    js: jetstream::Context,
    /// Opened once reachable (created by the first node that needs it).
    store: Mutex<Option<kv::Store>>,
}

impl Owners {
    pub(crate) fn new(prefix: &str, me: Owner, js: jetstream::Context) -> Owners {
        Owners {
            bucket: format!("{prefix}_sessions"),
            me,
            js,
            store: Mutex::new(None),
        }
    }

    async fn store(&self) -> Result<kv::Store, ClaimError> {
        if let Some(s) = self.store.lock().clone() {
            return Ok(s);
        }
        // The bucket's stream made here as async-nats's `create_key_value` would, without its
        // account query (whose answer from nats-server 2.9 that client no longer parses).
        let config = stream::Config {
            name: format!("KV_{}", self.bucket),
            description: Some("gateway: the node owning each client id".to_owned()),
            subjects: vec![format!("$KV.{}.>", self.bucket)],
            max_messages_per_subject: 1,
            storage: StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            ..stream::Config::default()
        };
        self.js
            .get_or_create_stream(config)
            .await
            .map_err(unreachable)?;
        let store = self
            .js
            .get_key_value(&self.bucket)
            .await
            .map_err(unreachable)?;
        *self.store.lock() = Some(store.clone());
        Ok(store)
    }

    /// Writes this node as the owner of `client_id`, by compare-and-swap (see the module
    /// comment).
    pub(crate) async fn claim(&self, client_id: &str) -> Result<Won, ClaimError> {
        let key = key_of(client_id).ok_or(ClaimError::KeyTooLong)?;
        let store = self.store().await?;
        // Serializing a plain struct cannot fail.
        let value = Bytes::from(serde_json::to_vec(&self.me).unwrap_or_default());
        for round in 0..MAX_ROUNDS {
            let current = store.entry(key.as_str()).await.map_err(unreachable)?;
            let (revision, previous) = match current {
                Some(e) => {
                    let owner = (e.operation == Operation::Put)
                        .then(|| serde_json::from_slice::<Owner>(&e.value).ok())
                        .flatten();
                    (e.revision, owner)
                }
                None => (0, None),
            };
            match store.update(&key, value.clone(), revision).await {
                Ok(epoch) => {
                    return Ok(Won {
                        epoch,
                        previous,
                        retried: round > 0,
                    })
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(unreachable(e)),
            }
        }
        Err(ClaimError::Contended)
    }
}

/// A client id's owner record as a scan read it.
#[derive(Debug)]
pub(crate) struct Owned {
    pub(crate) client_id: String,
    pub(crate) owner: Owner,
    pub(crate) revision: u64,
}

impl Owners {
    /// Every owner record naming `node` (any start of it), read in one pass over the bucket's
    /// latest values rather than a round trip per key.
    pub(crate) async fn owned_by(&self, node: &str) -> Result<Vec<Owned>, ClaimError> {
        let store = self.store().await?;
        let mut info = self
            .js
            .get_stream(format!("KV_{}", self.bucket))
            .await
            .map_err(unreachable)?;
        // An empty bucket's watch delivers nothing, not even a last entry to stop at.
        if info.info().await.map_err(unreachable)?.state.messages == 0 {
            return Ok(Vec::new());
        }
        let mut watch = store.watch_with_history(">").await.map_err(unreachable)?;
        let mut owned = Vec::new();
        while let Some(entry) = watch.next().await {
            let entry = entry.map_err(unreachable)?;
            let owner = (entry.operation == Operation::Put)
                .then(|| serde_json::from_slice::<Owner>(&entry.value).ok())
                .flatten();
            let client_id = entry
                .key
                .strip_prefix('c')
                .and_then(|k| URL_SAFE_NO_PAD.decode(k).ok())
                .and_then(|id| String::from_utf8(id).ok());
            if let (Some(owner), Some(client_id)) = (owner, client_id) {
                if owner.node == node {
                    owned.push(Owned {
                        client_id,
                        owner,
                        revision: entry.revision,
                    });
                }
            }
            if entry.delta == 0 {
                break;
            }
        }
        Ok(owned)
    }

    /// Writes this node as the owner of `client_id` if its record is still at `revision` (what
    /// a scan read): the new revision (this node's owner epoch), or `None` when the record
    /// changed since (its client, or another node, claimed it).
    pub(crate) async fn claim_at(
        &self,
        client_id: &str,
        revision: u64,
    ) -> Result<Option<u64>, ClaimError> {
        let key = key_of(client_id).ok_or(ClaimError::KeyTooLong)?;
        let store = self.store().await?;
        let value = Bytes::from(serde_json::to_vec(&self.me).unwrap_or_default());
        match store.update(&key, value, revision).await {
            Ok(epoch) => Ok(Some(epoch)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(unreachable(e)),
        }
    }
}

/// The key of `client_id`'s owner record; `None` when it would be too long.
pub(crate) fn key_of(client_id: &str) -> Option<String> {
    (client_id.len() / 3 * 4 + 5 <= MAX_KEY)
        .then(|| format!("c{}", URL_SAFE_NO_PAD.encode(client_id)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_hold_any_client_id_in_key_safe_characters() {
        for id in ["", "a", "dev/1.x *>", "\u{0}\u{1F600}", &"x".repeat(1500)] {
            let key = key_of(id).expect("fits");
            assert!(key.len() <= MAX_KEY);
            assert!(key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            assert_eq!(URL_SAFE_NO_PAD.decode(&key[1..]).unwrap(), id.as_bytes());
        }
        assert!(key_of(&"x".repeat(1600)).is_none());
    }
}
