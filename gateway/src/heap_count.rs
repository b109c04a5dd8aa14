//! Test-only heap accounting: a global allocator that keeps, per thread, the bytes the heap holds
//! for that thread's allocations, so a test measures what one structure costs while the other
//! tests of the binary allocate beside it. Also the figures of BENCHMARKS.md "Memory per topic".

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

#[global_allocator]
static COUNTING: Counting = Counting;

thread_local! {
    // `const` and `Cell<isize>`: no destructor and no lazy allocation, so the allocator may
    // touch it from inside an allocation.
    static LIVE: Cell<isize> = const { Cell::new(0) };
}

/// What glibc's malloc takes from the heap for a request of `size` bytes: an 8-byte header,
/// 16-byte granules, 32 bytes at least. Counting requested sizes would flatter small nodes.
fn chunk(size: usize) -> isize {
    isize::try_from(((size + 8 + 15) & !15).max(32)).unwrap_or(isize::MAX)
}

fn add(bytes: isize) {
    // `try_with`: the allocator may run while the thread's locals are being torn down.
    let _ = LIVE.try_with(|live| live.set(live.get() + bytes));
}

// SAFETY: every call is forwarded unchanged to `System`; only a counter is updated besides.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc`, passed on.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(chunk(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(chunk(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is `System`'s.
        unsafe { System.dealloc(ptr, layout) };
        add(-chunk(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            add(chunk(new_size) - chunk(layout.size()));
        }
        p
    }
}

/// Heap bytes (in malloc chunks) this thread's allocations hold now, net of what it freed.
pub(crate) fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Heap bytes (in malloc chunks) that `build` left allocated by this thread, with its result.
pub(crate) fn retained_by<R>(build: impl FnOnce() -> R) -> (R, usize) {
    let before = live();
    let built = build();
    (built, usize::try_from(live() - before).unwrap_or(0))
}

mod tests {
    use super::*;

    #[test]
    fn counts_what_is_kept_and_not_what_is_freed() {
        let (kept, bytes) = retained_by(|| {
            drop(vec![0u8; 1000]);
            vec![0u8; 100]
        });
        assert_eq!(kept.len(), 100);
        assert_eq!(bytes, 112);
    }
}

/// Bytes per entry of both tries for the two topic shapes of BENCHMARKS.md "Memory per topic",
/// checked against what the byte bounds count for them (`retained_max_bytes`,
/// `max_subscription_bytes_per_client`): `cargo test -p gateway --lib heap_count::figures --
/// --nocapture`.
mod figures {
    use std::sync::Arc;

    use bytes::Bytes;
    use bytestring::ByteString;

    use super::retained_by;
    use crate::codec::{QoS, SubscriptionOptions};
    use crate::message::Message;
    use crate::retain::{RetainStore, ENTRY_BYTES};
    use crate::router::message_weight;
    use crate::session::{subscription_bytes, Session, SubscriptionRecord};
    use crate::subscriber::Subscriber;
    use crate::topic_index::TopicIndex;

    const N: usize = 10_000;

    /// `s/12345/t`: a fleet's per-device topic.
    fn short(i: usize) -> String {
        format!("s/{i:05}/t")
    }

    /// 8 levels of 24 characters, every level unique to the topic: the worst case for a trie.
    fn long(i: usize) -> String {
        (0..8)
            .map(|level| format!("level{level}-{:017x}", (i as u64) << 8 | level))
            .collect::<Vec<_>>()
            .join("/")
    }

    fn message(topic: &str) -> Arc<Message> {
        Arc::new(Message::new(
            &ByteString::from(topic),
            &Bytes::from_static(b"0123456789abcdef"),
            QoS::AtMostOnce,
            true,
            1,
            None,
        ))
    }

    /// (bytes per retained message with its message, bytes the store adds per message)
    fn retained(shape: fn(usize) -> String) -> (usize, usize) {
        let topics: Vec<String> = (0..N).map(shape).collect();
        let (store, whole) = retained_by(|| {
            let store = RetainStore::new(N);
            for topic in &topics {
                let _ = store.set(topic, message(topic));
            }
            store
        });
        drop(store);
        let messages: Vec<Arc<Message>> = topics.iter().map(|t| message(t)).collect();
        let (store, trie) = retained_by(|| {
            let store = RetainStore::new(N);
            for m in &messages {
                let _ = store.set(&m.topic, m.clone());
            }
            store
        });
        assert_eq!(store.len(), N);
        (whole / N, trie / N)
    }

    /// Bytes per subscription: the index's and the session's record (one session holding all).
    fn subscriptions(shape: fn(usize) -> String) -> usize {
        let filters: Vec<ByteString> = (0..N).map(|i| shape(i).into()).collect();
        let session = Arc::new(Session::new(1, "c".into()));
        let (index, bytes) = retained_by(|| {
            let index = TopicIndex::new();
            for (key, filter) in filters.iter().enumerate() {
                let sub = Subscriber {
                    session: session.clone(),
                    options: SubscriptionOptions::default(),
                    id: None,
                    durable: false,
                };
                index.insert(filter, None, key as u64, sub);
                session.record_subscription(SubscriptionRecord {
                    filter: ByteString::from(&filter[..]),
                    options: SubscriptionOptions::default(),
                    id: None,
                });
            }
            index
        });
        assert_eq!(index.len(), N);
        bytes / N
    }

    #[test]
    fn memory_per_topic() {
        for (name, shape) in [("short", short as fn(usize) -> String), ("long", long)] {
            let topic_len = shape(N - 1).len();
            let (whole, trie) = retained(shape);
            let sub = subscriptions(shape);
            println!(
                "{name} ({topic_len} bytes): retained {whole} B/message ({trie} B in the store), \
                 subscription {sub} B"
            );
            // What the bounds count must not undercount what the heap holds.
            let topic = shape(0);
            let counted = message_weight(&message(&topic)) + topic.len() + ENTRY_BYTES;
            println!("{name}: a retained message counts {counted} B against retained_max_bytes");
            assert!(
                trie <= topic.len() + ENTRY_BYTES,
                "{name}: {trie} B in the store"
            );
            assert!(
                whole <= counted,
                "{name}: {whole} B per message, {counted} B counted"
            );
            let counted = subscription_bytes(&topic);
            assert!(
                sub <= counted,
                "{name}: {sub} B per subscription, {counted} B counted"
            );
            // And not overcount it by much: the bounds are in real bytes.
            assert!(
                counted < 2 * sub,
                "{name}: {sub} B per subscription, {counted} B counted"
            );
        }
    }
}
