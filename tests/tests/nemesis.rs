//! The nemesis: real `dtu` processes and `linkemu`, a host writing
//! verifiable blocks through NBD, and rounds of SIGKILL (primary, remote,
//! both) and link cuts. Afterwards the replica must hold every write the
//! host saw acknowledged and be a prefix state of the host's writes.
//!
//! `DTU_NEMESIS_ROUNDS=200 cargo test --release -p dtu-tests --test nemesis`
//! runs a long campaign; CI runs 20 rounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dtu_tests::nbd_client::{block, parse_block, NbdClient, BLOCK};
use dtu_tests::*;
use rand::{Rng, SeedableRng};

const FAST_ACKS: [&str; 4] = ["--trigger", "buffered", "--dirty-threshold", "0"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Pending,
    Acked,
    /// The connection failed before an answer: it may or may not exist.
    Unknown,
}

#[derive(Default)]
struct HostLog {
    /// write id - 1 -> (block, fate); ids are issued in order, QD1.
    writes: Vec<(u64, Fate)>,
    reconnects: u64,
}

/// A host writing one verifiable block at a time, reconnecting whenever
/// the primary goes away.
fn host(
    socket: std::path::PathBuf,
    blocks: u64,
    seed: u64,
    log: Arc<Mutex<HostLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut conn: Option<NbdClient> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut() else {
            match NbdClient::connect(&socket, "dtu", Duration::from_secs(20)) {
                Ok(c) => conn = Some(c),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
            continue;
        };
        let b = rng.gen_range(0..blocks);
        let id = {
            let mut l = log.lock().unwrap();
            l.writes.push((b, Fate::Pending));
            l.writes.len() as u64
        };
        let result = c.write(b * BLOCK as u64, &block(id, b));
        let mut l = log.lock().unwrap();
        match result {
            Ok(()) => l.writes[id as usize - 1].1 = Fate::Acked,
            Err(_) => {
                l.writes[id as usize - 1].1 = Fate::Unknown;
                l.reconnects += 1;
                conn = None;
            }
        }
    }
    if let Some(c) = conn {
        c.disconnect();
    }
}

/// Checks that the replica is a prefix state containing every
/// acknowledged write; returns the prefix length found.
fn check_replica(replica: &[u8], log: &HostLog) -> Result<u64, String> {
    let blocks = replica.len() / BLOCK;
    let mut present = Vec::with_capacity(blocks);
    for b in 0..blocks {
        present.push(parse_block(&replica[b * BLOCK..(b + 1) * BLOCK], b as u64)?);
    }
    let k = present.iter().copied().max().unwrap_or(0);
    let last_acked = log
        .writes
        .iter()
        .rposition(|(_, f)| *f == Fate::Acked)
        .map_or(0, |i| i as u64 + 1);
    if k < last_acked {
        return Err(format!(
            "write {last_acked} was acknowledged but the replica only reaches write {k}"
        ));
    }
    // Per block: the writes to it up to k, in order.
    let mut per_block: HashMap<u64, Vec<(u64, Fate)>> = HashMap::new();
    for (i, (b, fate)) in log.writes.iter().enumerate().take(k as usize) {
        per_block.entry(*b).or_default().push((i as u64 + 1, *fate));
    }
    for (b, &have) in present.iter().enumerate() {
        let writes = per_block.get(&(b as u64)).map(Vec::as_slice).unwrap_or(&[]);
        // After `have`, only writes that may have been lost may follow.
        let later: Vec<_> = writes.iter().filter(|(id, _)| *id > have).collect();
        if let Some((id, _)) = later.iter().find(|(_, f)| *f == Fate::Acked) {
            return Err(format!("block {b} holds write {have}, but acknowledged write {id} to it comes later, within the prefix {k}"));
        }
        if have != 0 && !writes.iter().any(|(id, _)| *id == have) {
            return Err(format!(
                "block {b} holds write {have}, which was not a write to it within the prefix {k}"
            ));
        }
        // Skipping a write inside the prefix is allowed only for writes
        // the host never saw acknowledged (they may not have entered the
        // stream), and only if they are the latest ones.
        if have != 0 {
            let fate = writes.iter().find(|(id, _)| *id == have).map(|w| w.1);
            if fate == Some(Fate::Pending) {
                return Err(format!("block {b} holds write {have}, still pending"));
            }
        }
    }
    Ok(k)
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillPrimary,
    KillRemote,
    KillBoth,
    CutLink,
}

#[test]
fn sigkills_and_link_cuts_lose_no_acknowledged_write() {
    let rounds: u32 = std::env::var("DTU_NEMESIS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("DTU_NEMESIS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut pair = Pair::init(
        "8MiB",
        &["--preset", "bridged-10m", "--seed", "11"],
        &["--link-rate", "10Mbit", "--link-rtt", "2ms"],
    );
    pair.start(&FAST_ACKS);
    let log = Arc::new(Mutex::new(HostLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sock, log, stop) = (pair.path("primary.nbd.sock"), log.clone(), stop.clone());
        std::thread::spawn(move || host(sock, (8 << 20) / BLOCK as u64, seed, log, stop))
    };
    let mut faults = Vec::new();
    for round in 0..rounds {
        std::thread::sleep(Duration::from_millis(rng.gen_range(200..1200)));
        let fault = [
            Fault::KillPrimary,
            Fault::KillRemote,
            Fault::KillBoth,
            Fault::CutLink,
        ][rng.gen_range(0..4)];
        faults.push(fault);
        eprintln!(
            "round {round}: {fault:?} after {} writes",
            log.lock().unwrap().writes.len()
        );
        match fault {
            Fault::KillPrimary => {
                pair.primary.as_mut().unwrap().kill();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
                pair.start_primary(&FAST_ACKS);
            }
            Fault::KillRemote => {
                pair.remote.as_mut().unwrap().kill();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..1000)));
                pair.start_remote(&[]);
            }
            Fault::KillBoth => {
                pair.primary.as_mut().unwrap().kill();
                pair.remote.as_mut().unwrap().kill();
                std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
                pair.start_remote(&[]);
                pair.start_primary(&FAST_ACKS);
            }
            Fault::CutLink => {
                pair.stop_link();
                std::thread::sleep(Duration::from_millis(rng.gen_range(500..3000)));
                pair.start_link();
            }
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let started = Instant::now();
    pair.wait_caught_up(Duration::from_secs(120));
    let log = log.lock().unwrap();
    let acked = log.writes.iter().filter(|w| w.1 == Fate::Acked).count();
    assert!(acked > 100, "the host should have written a lot: {acked}");
    let k =
        check_replica(&pair.replica_bytes(), &log).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    assert!(pair.remote_status().consistent);
    eprintln!(
        "{rounds} rounds ({faults:?}): {} writes issued, {acked} acknowledged, {} reconnects; replica is the prefix of {k} writes; caught up in {:?}",
        log.writes.len(),
        log.reconnects,
        started.elapsed()
    );
}

#[test]
fn a_full_nvbuf_makes_writers_wait_and_loses_nothing() {
    // A 4 MiB nvbuf and a dead link: 6 MiB of writes cannot all fit.
    let mut pair = Pair::init(
        "8MiB",
        &["--preset", "bridged-10m"],
        &[
            "--link-rate",
            "10Mbit",
            "--link-rtt",
            "2ms",
            "--nvbuf-size",
            "4MiB",
        ],
    );
    pair.start(&FAST_ACKS);
    pair.stop_link();
    let log = Arc::new(Mutex::new(HostLog::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (sock, log, stop) = (pair.path("primary.nbd.sock"), log.clone(), stop.clone());
        std::thread::spawn(move || host(sock, (8 << 20) / BLOCK as u64, 5, log, stop))
    };
    wait_until(
        "writers to wait on the full nvbuf",
        Duration::from_secs(60),
        || pair.primary_status().nvbuf_waiting_writers > 0,
    );
    let stalled = log.lock().unwrap().writes.len();
    std::thread::sleep(Duration::from_secs(1));
    let s = pair.primary_status();
    assert!(
        s.nvbuf_fill_pct > 90.0,
        "the nvbuf should be nearly full: {:.1}%",
        s.nvbuf_fill_pct
    );
    assert_eq!(
        log.lock().unwrap().writes.len(),
        stalled,
        "the writer must wait, not go on"
    );
    assert!(
        log.lock()
            .unwrap()
            .writes
            .iter()
            .all(|w| w.1 != Fate::Unknown),
        "no write may fail while the nvbuf is full"
    );
    pair.start_link();
    wait_until("the writer to go on", Duration::from_secs(60), || {
        log.lock().unwrap().writes.len() > stalled + 50
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    pair.wait_caught_up(Duration::from_secs(120));
    let log = log.lock().unwrap();
    assert!(
        log.writes.iter().all(|w| w.1 == Fate::Acked),
        "every write was acknowledged"
    );
    check_replica(&pair.replica_bytes(), &log).unwrap();
}
