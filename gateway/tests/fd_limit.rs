//! Behaviour at the open-file limit: the real binary under `ulimit -n 200` with an `fd_reserve`
//! refuses connections beyond the limit minus the reserve by closing them at once (no CONNACK),
//! does not spin while refusing, keeps serving the clients it has, and admits new clients again
//! once others leave.

mod binary;
mod clients;

use std::time::Duration;

use binary::Gateway;
use clients::raw::{End, Raw, V};

const NOFILE: u32 = 200;
const FD_RESERVE: u32 = 64;

struct TempConfig(std::path::PathBuf);

impl TempConfig {
    fn new(text: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("gateway-fd-limit-{}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write temp config");
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Tries one more client: `Some` when it got a successful CONNACK, `None` when the broker closed
/// the socket without answering.
async fn try_client(addr: std::net::SocketAddr, id: &str) -> Option<Raw> {
    let mut raw = Raw::open(addr).await;
    raw.send_lenient(&V::V311.connect(id)).await;
    match raw.read_packet().await {
        Ok(frame) => {
            assert_eq!(frame.first, 0x20, "{id}: expected CONNACK, got {frame:?}");
            assert_eq!(frame.body, [0, 0], "{id}: CONNACK refused: {frame:?}");
            Some(raw)
        }
        Err(End::Closed) => None,
        Err(End::Silent) => {
            panic!("{id}: neither CONNACK nor close within the wait (refusal must be prompt)")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_cleanly_at_the_open_file_limit_and_keeps_serving() {
    let config = TempConfig::new(&format!("[mqtt]\nfd_reserve = {FD_RESERVE}\n"));
    let path = config.0.to_str().expect("UTF-8 temp path");
    let gateway = Gateway::start_with_nofile(NOFILE, &["--config", path]);
    let addr = gateway.addr;

    let mut clients = Vec::new();
    let refused = loop {
        let id = format!("fd-{}", clients.len());
        match try_client(addr, &id).await {
            Some(raw) => clients.push(raw),
            None => break id,
        }
        assert!(
            clients.len() < NOFILE as usize,
            "{} clients admitted under a limit of {NOFILE} files",
            clients.len()
        );
    };
    let admitted = clients.len();
    // Refused before the limit, keeping (about) the configured reserve free.
    let ceiling = (NOFILE - FD_RESERVE) as usize;
    assert!(
        admitted <= ceiling && admitted >= ceiling - 40,
        "admitted {admitted} clients; expected just under {ceiling} (limit {NOFILE}, reserve {FD_RESERVE}); first refused: {refused}"
    );
    let fds = gateway.open_fds();
    eprintln!("admitted {admitted} clients; {fds} descriptors open");
    assert!(
        fds <= (NOFILE - FD_RESERVE) as usize + 16,
        "{fds} descriptors open with {admitted} clients"
    );

    // Hammering it with refused connections costs little CPU: no spinning.
    let cpu_before = gateway.cpu_time();
    let wall = std::time::Instant::now();
    for n in 0..50 {
        assert!(
            try_client(addr, &format!("extra-{n}")).await.is_none(),
            "extra client {n} admitted at the limit"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = gateway.cpu_time() - cpu_before;
    let elapsed = wall.elapsed();
    assert!(
        cpu < elapsed / 2,
        "gateway used {cpu:?} CPU in {elapsed:?} while refusing connections"
    );

    // Existing clients are still served, in both directions.
    let (first, rest) = clients.split_first_mut().expect("at least one client");
    let last = rest.last_mut().expect("at least two clients");
    first.send(&V::V311.subscribe("fd/t", 0)).await;
    assert_eq!(first.expect_packet("SUBACK").await.first, 0x90);
    last.send(&V::V311.publish(0x30, b"fd/t", None, &[], b"still here"))
        .await;
    let got = first.expect_packet("PUBLISH").await;
    assert!(
        got.first >> 4 == 3 && got.body.ends_with(b"still here"),
        "{got:?}"
    );
    last.ping().await;

    // When clients leave, newcomers are admitted again.
    clients.truncate(admitted - 10);
    let mut readmitted = None;
    for attempt in 0..100 {
        if let Some(raw) = try_client(addr, &format!("again-{attempt}")).await {
            readmitted = Some(raw);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = readmitted.expect("a new client is admitted after ten others disconnected");
    again.ping().await;
}
