//! The embedded store against its contract, on a real file: what it was told comes back after a
//! reopen, marks become durable and wake their waiter, a removed session takes its messages
//! with it; and (ignored, run by hand) how long a start with many stored sessions takes.

use std::fs::File;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use bytestring::ByteString;
use redb::TableHandle;

use super::{DiskStore, SessionRecord, Store};
use crate::codec::{QoS, SubscriptionOptions};
use crate::config::StorageConfig;
use crate::message::Message;
use crate::metrics::Metrics;
use crate::session::{Delivery, Session, Stage, SubscriptionRecord};

/// A store directory of its own, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new() -> Dir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("gateway-store-unit-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Dir(dir)
    }

    fn open(&self) -> DiskStore {
        self.open_gathering(StorageConfig::default().commit_delay_ms)
    }

    /// With a commit delay long enough that what a test records at once is one batch.
    fn open_gathering(&self, commit_delay_ms: u32) -> DiskStore {
        let config = StorageConfig {
            dir: self.0.clone(),
            commit_delay_ms,
            ..StorageConfig::default()
        };
        DiskStore::open(&config, &Metrics::new().store).expect("store opens")
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn message(topic: &str, payload: &'static [u8]) -> Arc<Message> {
    let topic = ByteString::from(topic);
    Arc::new(Message::new(
        &topic,
        &Bytes::from_static(payload),
        QoS::AtLeastOnce,
        false,
        1,
        None,
    ))
}

fn delivery(topic: &str, seq: u64) -> Delivery {
    Delivery {
        msg: message(topic, b"payload"),
        qos: QoS::AtLeastOnce,
        retain: false,
        subscription_ids: vec![3],
        seq,
    }
}

fn record(client_id: &str) -> SessionRecord {
    SessionRecord {
        client_id: client_id.into(),
        expiry_interval: 600,
        expires_at: None,
        subscriptions: vec![SubscriptionRecord {
            filter: "t/#".into(),
            options: SubscriptionOptions {
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: 0,
            },
            id: Some(3),
        }],
        will: None,
    }
}

#[test]
fn what_it_was_told_comes_back_after_a_reopen() {
    let dir = Dir::new();
    let c: Arc<str> = "dev-1".into();
    {
        let store = dir.open();
        store.session_saved(&record("dev-1"));
        for seq in 1..=4 {
            store.queued(&c, &delivery(&format!("t/{seq}"), seq));
        }
        store.sent(&c, 1, 7, Stage::PubAck);
        store.sent(&c, 2, 8, Stage::PubRec);
        store.sent(&c, 2, 8, Stage::PubComp);
        store.settled(&c, 3);
        store.incoming_qos2(&c, 5, true);
        store.incoming_qos2(&c, 6, true);
        store.incoming_qos2(&c, 6, false);
        store.retained(&"r/a".into(), Some(&message("r/a", b"a")));
        store.retained(&"r/b".into(), Some(&message("r/b", b"b")));
        store.retained(&"r/b".into(), None);
        // Dropped: what is pending is committed first.
    }
    let store = dir.open();
    let restored = store.load().expect("loads");
    assert_eq!(restored.sessions.len(), 1);
    let s = &restored.sessions[0];
    assert_eq!(&*s.record.client_id, "dev-1");
    assert_eq!(s.record.subscriptions, record("dev-1").subscriptions);
    let inflight: Vec<_> = s
        .pending
        .inflight
        .iter()
        .map(|(id, stage, d)| (*id, *stage, d.seq, d.msg.topic.to_string()))
        .collect();
    assert_eq!(
        inflight,
        [
            (7, Stage::PubAck, 1, "t/1".to_owned()),
            (8, Stage::PubComp, 2, "t/2".to_owned())
        ]
    );
    // The queue stays on disk until read: seq 3 settled, seq 4 left.
    assert!(s.pending.queue.is_empty());
    assert_eq!((s.stored, s.stored_from, s.stored_last), (1, 4, 4));
    let queued = store.read_queued("dev-1", 4, u64::MAX, 10).expect("reads");
    let seqs: Vec<_> = queued
        .iter()
        .map(|d| (d.seq, d.subscription_ids.clone()))
        .collect();
    assert_eq!(seqs, [(4, vec![3])]);
    assert!(store
        .read_queued("dev-1", 4, 4, 10)
        .expect("reads")
        .is_empty());
    assert_eq!(s.pending.incoming_qos2, [5]);
    let retained: Vec<_> = restored
        .retained
        .iter()
        .map(|m| m.topic.to_string())
        .collect();
    assert_eq!(retained, ["r/a"]);
    assert_eq!(store.stats().sessions, 1);
    assert_eq!(store.stats().messages, 3);
}

/// Waits until everything recorded so far is committed (the next changes form a new batch).
fn committed(store: &DiskStore, mark: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !store.is_durable(mark) {
        assert!(Instant::now() < deadline, "mark {mark} never durable");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A message sent in the batch that writes it carries its stage; one sent later gets a `flows`
/// entry; settling either leaves nothing behind.
#[test]
fn stages_written_with_the_message_or_later_come_back_the_same() {
    let dir = Dir::new();
    let c: Arc<str> = "dev-2".into();
    {
        let store = dir.open();
        store.session_saved(&record("dev-2"));
        for seq in 1..=3 {
            store.queued(&c, &delivery("t", seq));
        }
        store.sent(&c, 1, 11, Stage::PubAck);
        let mark = store.incoming_qos2(&c, 1, true);
        committed(&store, mark);
        store.sent(&c, 2, 12, Stage::PubRec);
        store.sent(&c, 3, 13, Stage::PubAck);
        let mark = store.incoming_qos2(&c, 1, false);
        committed(&store, mark);
        store.sent(&c, 2, 12, Stage::PubComp);
        store.settled(&c, 1);
        store.settled(&c, 3);
    }
    let store = dir.open();
    let restored = store.load().expect("loads");
    let p = &restored.sessions[0].pending;
    let inflight: Vec<_> = p
        .inflight
        .iter()
        .map(|(id, st, d)| (*id, *st, d.seq))
        .collect();
    assert_eq!(inflight, [(12, Stage::PubComp, 2)]);
    assert_eq!(restored.sessions[0].stored, 0);
    assert_eq!(store.stats().messages, 1);
    let summary = super::check_store(&dir.0);
    assert!(summary.is_err(), "refused while a gateway holds the store");
}

#[test]
fn a_removed_session_takes_its_messages_and_ids_with_it() {
    let dir = Dir::new();
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    {
        let store = dir.open();
        for c in [&a, &b] {
            store.session_saved(&record(c));
            store.queued(c, &delivery("t/1", 1));
            store.sent(c, 1, 1, Stage::PubAck);
            store.queued(c, &delivery("t/2", 2));
            store.incoming_qos2(c, 9, true);
        }
        store.session_removed("a");
    }
    let store = dir.open();
    let restored = store.load().expect("loads");
    let ids: Vec<_> = restored
        .sessions
        .iter()
        .map(|s| s.record.client_id.to_string())
        .collect();
    assert_eq!(ids, ["b"]);
    let b = &restored.sessions[0];
    let p = &b.pending;
    assert_eq!(
        (p.inflight.len(), b.stored, p.incoming_qos2.len()),
        (1, 1, 1)
    );
    assert_eq!(store.stats().messages, 2);
}

/// A persistent session's ingestion numbering (`ingest::dedup`): each new id is kept, the one
/// that fell out of the window goes, a committed mark says the write may go to JetStream, and a
/// removed session (a clean start) takes its ids with it.
#[test]
fn ingest_ids_come_back_without_the_evicted_and_go_with_their_session() {
    use crate::ingest::dedup::{NewId, StoredId};
    let dir = Dir::new();
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
    let id = |packet_id, n| StoredId {
        packet_id,
        epoch: 77,
        content: u64::from(packet_id) * 10,
        n,
    };
    {
        let store = dir.open();
        let mut committed = store.committed().expect("a disk store tells its commits");
        for c in [&a, &b] {
            store.session_saved(&record(c));
            store.ingest_id(
                c,
                NewId {
                    id: id(1, 0),
                    evicted: None,
                },
            );
            store.ingest_id(
                c,
                NewId {
                    id: id(2, 1),
                    evicted: None,
                },
            );
        }
        let mark = store.ingest_id(
            &b,
            NewId {
                id: id(3, 2),
                evicted: Some(1),
            },
        );
        assert!(mark > 0, "whatever `sync` says, the write waits for this");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            while *committed.borrow_and_update() < mark {
                committed.changed().await.expect("the writer runs");
            }
        });
        assert!(store.is_durable(mark));
        store.session_removed("a");
    }
    let restored = dir.open().load().expect("loads");
    let ids: Vec<_> = restored
        .sessions
        .iter()
        .map(|s| (s.record.client_id.to_string(), s.pending.ingest_ids.clone()))
        .collect();
    assert_eq!(ids, [("b".to_owned(), vec![id(2, 1), id(3, 2)])]);
}

/// Messages settled in a later batch than they were written go, and only they: runs of
/// consecutive seqs are removed in one range each, gaps and other sessions' messages stay.
#[test]
fn settled_messages_of_earlier_batches_go_and_only_they() {
    let dir = Dir::new();
    let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "a2".into());
    {
        let store = dir.open();
        let mut mark = 0;
        for c in [&a, &b] {
            store.session_saved(&record(c));
            for seq in 1..=10 {
                mark = store.queued(c, &delivery(&format!("t/{seq}"), seq));
            }
        }
        committed(&store, mark);
        for seq in [2, 3, 4, 5, 7, 10, 3] {
            store.settled(&a, seq);
        }
        store.settled(&b, 1);
    }
    let store = dir.open();
    let restored = store.load().expect("loads");
    let left = |c: &str| -> Vec<u64> {
        store
            .read_queued(c, 1, u64::MAX, 100)
            .expect("reads")
            .iter()
            .map(|d| d.seq)
            .collect()
    };
    assert_eq!(left("a"), [1, 6, 8, 9]);
    assert_eq!(left("a2"), [2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(restored.sessions.len(), 2);
    assert_eq!(store.stats().messages, 13);
}

/// A session removed and started again within one batch counts its seqs from 1 again: what the
/// new one queued is kept, although the old one settled the same seqs in that batch.
#[test]
fn a_session_started_again_within_a_batch_keeps_its_new_messages() {
    let dir = Dir::new();
    let c: Arc<str> = "again".into();
    {
        let store = dir.open_gathering(500);
        store.session_saved(&record(&c));
        for seq in 1..=2 {
            store.queued(&c, &delivery("old", seq));
            store.sent(&c, seq, 1, Stage::PubAck);
            store.settled(&c, seq);
        }
        store.session_removed(&c);
        store.session_saved(&record(&c));
        for seq in 1..=2 {
            store.queued(&c, &delivery("new", seq));
        }
    }
    let store = dir.open();
    let restored = store.load().expect("loads");
    assert_eq!(restored.sessions.len(), 1);
    let topics: Vec<_> = store
        .read_queued("again", 1, u64::MAX, 10)
        .expect("reads")
        .iter()
        .map(|d| (d.seq, d.msg.topic.to_string()))
        .collect();
    assert_eq!(topics, [(1, "new".to_owned()), (2, "new".to_owned())]);
}

/// What a crash leaves in the journal (committed, never checkpointed) is applied when the store
/// is opened again, before anything is read, and the journal is left empty.
#[test]
fn a_journal_left_by_a_crash_is_replayed_at_the_next_open() {
    use super::batch::{Batch, Op};
    use super::layout::{open_database, FILE, JOURNAL};
    use redb::{ReadableDatabase, ReadableTableMetadata};

    let dir = Dir::new();
    std::fs::create_dir_all(&dir.0).expect("dir");
    let path = dir.0.join(FILE);
    {
        let db = open_database(&path).expect("opens");
        let mut first = Batch::default();
        first.ops.push(Op::Session(Box::new(record("j"))));
        for seq in 1..=3 {
            let op = first.queued("j", &delivery(&format!("t/{seq}"), seq));
            first.ops.push(op);
        }
        let mut second = Batch::default();
        let op = second.settled("j", 1);
        second.ops.push(op);
        let tx = db.begin_write().expect("tx");
        {
            let mut journal = tx.open_table(JOURNAL).expect("journal");
            let mut entry = Vec::new();
            for (k, b) in [(0u64, &first), (1, &second)] {
                b.encode(&mut entry);
                journal.insert(k, entry.as_slice()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    let store = dir.open();
    let restored = store.load().expect("loads");
    assert_eq!(restored.sessions.len(), 1);
    let s = &restored.sessions[0];
    assert_eq!((s.stored, s.stored_from, s.stored_last), (2, 2, 3));
    drop(store);
    let db = open_database(&path).expect("opens");
    let tx = db.begin_read().expect("tx");
    let journal = tx.open_table(JOURNAL).expect("journal");
    assert!(journal.is_empty().expect("reads"), "the journal is emptied");
}

#[tokio::test]
async fn a_mark_becomes_durable_and_wakes_its_waiter() {
    let dir = Dir::new();
    let store = dir.open();
    let c: Arc<str> = "w".into();
    let mark = store.queued(&c, &delivery("t", 1));
    assert!(mark > 0);
    let session = Arc::new(Session::new(1, c.clone()));
    store.wake_when_durable(mark, &session);
    let woken = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| session.poll_woken(cx)),
    )
    .await;
    assert!(woken.is_ok(), "woken once durable");
    assert!(store.is_durable(mark));
}

/// Start-up with many stored sessions and messages: open, load and make live, timed, with the
/// memory it takes. `STORE_SESSIONS` and `STORE_MESSAGES` (defaults 100,000 and 1,000,000):
/// `STORE_SESSIONS=1000000 STORE_MESSAGES=10000000 cargo test --release -p gateway --lib
/// store::tests::startup -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, run by hand (BENCHMARKS.md)"]
fn startup_with_many_stored_sessions() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let sessions = env("STORE_SESSIONS", 100_000);
    let messages = env("STORE_MESSAGES", 1_000_000);
    let dir = Dir::new();
    let filled = Instant::now();
    {
        let store = dir.open();
        let ids: Vec<Arc<str>> = (0..sessions)
            .map(|i| format!("device-{i:07}").into())
            .collect();
        for c in &ids {
            store.session_saved(&record(c));
        }
        let msg = Arc::new(Message::new(
            &ByteString::from("telemetry/device/temperature"),
            &Bytes::from(vec![b'x'; 64]),
            QoS::AtLeastOnce,
            false,
            1,
            None,
        ));
        for i in 0..messages {
            let c = &ids[(i % sessions) as usize];
            let d = Delivery {
                msg: msg.clone(),
                qos: QoS::AtLeastOnce,
                retain: false,
                subscription_ids: Vec::new(),
                seq: i / sessions + 1,
            };
            store.queued(c, &d);
        }
    }
    let size = std::fs::metadata(dir.0.join(super::layout::FILE)).map_or(0, |m| m.len());
    println!(
        "filled {sessions} sessions / {messages} messages in {:.1} s; store file {} MiB",
        filled.elapsed().as_secs_f64(),
        size >> 20
    );
    // SAFETY: sysconf has no memory effects.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let rss = || crate::limits::resident_bytes(page).unwrap_or(0);
    let before = rss();
    let start = Instant::now();
    let store = Arc::new(dir.open());
    let opened = start.elapsed();
    let restored = store.load().expect("loads");
    let loaded = start.elapsed();
    let limits = crate::session::QueueLimits {
        max_queued: usize::MAX,
        max_queued_bytes: 0,
        queue_qos0_offline: false,
    };
    let router = crate::router::Router::new(limits, 1000, 32, Arc::new(Metrics::new()))
        .with_store(store.clone());
    let registry = crate::registry::Registry::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async { registry.restore(restored, &router) });
    let live = start.elapsed();
    println!(
        "start-up: open and check {:.2} s, load {:.2} s, live {:.2} s; RSS +{} MiB",
        opened.as_secs_f64(),
        loaded.as_secs_f64(),
        live.as_secs_f64(),
        (rss().saturating_sub(before)) >> 20,
    );
}

/// `gateway store repair` on a store with damaged pages: rebuilt from the last commit's intact
/// pages, what the damaged page held is lost and said, everything else kept exactly, nothing
/// added. A sound store is left alone.
#[test]
fn a_repair_keeps_every_intact_page_of_the_last_commit() {
    let dir = Dir::new();
    let topic = |i: usize| ByteString::from(format!("site/{}/sensor/{i}", i % 7));
    let payload = |i: usize| format!("payload-{i:05}-").repeat(20);
    {
        let store = dir.open();
        for i in 0..3000 {
            let m = Message::new(
                &topic(i),
                &Bytes::from(payload(i)),
                QoS::AtLeastOnce,
                true,
                1,
                None,
            );
            store.retained(&topic(i), Some(&Arc::new(m)));
        }
    }
    let file = dir.0.join(super::layout::FILE);
    let sound = std::fs::read(&file).expect("read store");
    let report = super::repair_store(&dir.0).expect("a sound store");
    assert_eq!(report.found, super::Found::Sound);
    assert_eq!(report.damaged_kept_as, None);
    assert_eq!(report.summary.retained, 3000);
    let files = std::fs::read_dir(&dir.0).expect("store dir").count();
    assert_eq!(files, 1, "nothing beside the store");

    // Message 1500's payload altered wherever it is (its leaf, and old copies of it): every
    // page still parses, only the checksum its parent recorded tells.
    let marker = payload(1500);
    let mut damaged = sound.clone();
    let mut hit = 0;
    for page in damaged.chunks_mut(4096).skip(1) {
        while let Some(at) = page
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
        {
            hit += 1;
            page[at] = b'P';
        }
    }
    assert!(hit > 0);
    std::fs::write(&file, &damaged).expect("write store");
    assert!(super::check_store(&dir.0).is_err(), "damage seen");
    let before = std::fs::read(&file).expect("read store");

    let report = super::repair_store(&dir.0).expect("repaired");
    match report.found {
        super::Found::Tree {
            lost_pages,
            older_commit: false,
            ref loose,
            ..
        } => assert!(lost_pages >= 1 && loose.is_empty(), "{report:?}"),
        _ => panic!("read from the tree: {report:?}"),
    }
    let kept = report.damaged_kept_as.expect("damaged file kept");
    assert!(
        std::fs::read(kept).expect("kept") == before,
        "kept as it was"
    );
    let restored = dir.open().load().expect("the repaired store opens");
    let n = restored.retained.len();
    assert!((2900..3000).contains(&n), "{n} of 3000 kept");
    for m in &restored.retained {
        let i: usize = m
            .topic
            .rsplit('/')
            .next()
            .and_then(|i| i.parse().ok())
            .expect("topic");
        assert_eq!(m.topic, topic(i));
        assert_eq!(&m.payload[..], payload(i).as_bytes(), "kept exactly");
        assert_ne!(i, 1500, "the damaged page's entries are gone");
    }
}

/// `gateway store repair` when no commit leads to the tables (both commit slots damaged, as
/// when the pages of the table list were cut off): sessions, their queued messages and retained
/// messages rebuilt from the pages that still decode, exactly.
#[test]
fn a_repair_without_a_commit_rebuilds_from_loose_pages() {
    let dir = Dir::new();
    let c: Arc<str> = "dev-1".into();
    {
        let store = dir.open();
        store.session_saved(&record("dev-1"));
        for seq in 1..=200 {
            store.queued(&c, &delivery(&format!("t/{seq}"), seq));
        }
        store.retained(&"r/a".into(), Some(&message("r/a", b"a")));
    }
    let file = dir.0.join(super::layout::FILE);
    let mut damaged = std::fs::read(&file).expect("read store");
    // The two commit slots (after the 64-byte header, 128 bytes each).
    for b in &mut damaged[64..320] {
        *b = 0;
    }
    std::fs::write(&file, &damaged).expect("write store");
    assert!(super::check_store(&dir.0).is_err(), "damage seen");

    let report = super::repair_store(&dir.0).expect("repaired");
    assert!(
        matches!(report.found, super::Found::Loose { versions: 0 }),
        "{report:?}"
    );
    assert_eq!(
        (
            report.summary.sessions,
            report.summary.messages,
            report.summary.retained
        ),
        (1, 200, 1)
    );
    let restored = dir.open().load().expect("the repaired store opens");
    let s = &restored.sessions[0];
    assert_eq!(s.record.subscriptions, record("dev-1").subscriptions);
    assert_eq!((s.stored, s.stored_from, s.stored_last), (200, 1, 200));
    assert_eq!(&restored.retained[0].payload[..], b"a");
}

/// `gateway store repair` when the last commit's tree is intact but for the root page of one
/// table: that table taken from the pages that still decode as its leaves (the tree knows
/// nothing to contradict them), the others from the tree. Without this, a file cut one page
/// shorter (the table list lost with it) recovered more than one cut where the root lay.
#[test]
fn a_table_whose_root_was_lost_is_rebuilt_from_loose_pages() {
    let dir = Dir::new();
    let c: Arc<str> = "dev-1".into();
    let payload = |i: usize| format!("retained-{i:03}-").repeat(150);
    {
        let store = dir.open();
        store.session_saved(&record("dev-1"));
        for seq in 1..=20 {
            store.queued(&c, &delivery(&format!("t/{seq}"), seq));
        }
        for i in 0..50 {
            let topic = ByteString::from(format!("r/{i}"));
            let m = Message::new(
                &topic,
                &Bytes::from(payload(i)),
                QoS::AtLeastOnce,
                true,
                1,
                None,
            );
            store.retained(&topic, Some(&Arc::new(m)));
        }
    }
    let file = dir.0.join(super::layout::FILE);
    let sound = std::fs::read(&file).expect("read store");
    // The page whose loss leaves the table list whole and loses the retained table's root.
    let retained = super::layout::RETAINED.name();
    let root_of_retained = (1..sound.len() / 4096)
        .find(|&page| {
            let mut damaged = sound.clone();
            damaged[page * 4096..(page + 1) * 4096].fill(0);
            std::fs::write(&file, &damaged).expect("write store");
            let readable = super::pages::read_tables(&File::open(&file).expect("open"));
            readable.is_ok_and(|r| {
                !r.older_commit
                    && r.lost_table_pages == 0
                    && r.tables.get(retained).is_some_and(|t| t.root_lost)
            })
        })
        .expect("the retained table's root is a page of the file");
    let before = std::fs::read(&file).expect("read store");
    assert_ne!(before, sound, "the root page zeroed");

    let report = super::repair_store(&dir.0).expect("repaired");
    assert_eq!(
        report.found,
        super::Found::Tree {
            lost_pages: 1,
            older_commit: false,
            loose: vec![retained],
            versions: 0,
        },
        "root at page {root_of_retained}"
    );
    let restored = dir.open().load().expect("the repaired store opens");
    assert_eq!(restored.retained.len(), 50, "every leaf of it was intact");
    for m in &restored.retained {
        let i: usize = m.topic[2..].parse().expect("topic");
        assert_eq!(&m.payload[..], payload(i).as_bytes(), "kept exactly");
    }
    let s = &restored.sessions[0];
    assert_eq!(
        (s.stored, s.stored_from, s.stored_last),
        (20, 1, 20),
        "from the tree"
    );
}
