//! Fuzz-style property tests of the NBD server's parsers in place: random
//! and mutated byte streams (plausible sessions with corrupted headers,
//! lying lengths, truncated payloads, absurd option sizes) are fed to a live
//! connection (`NbdServer::serve_connection` over an in-memory pipe, a real
//! `FileExport` behind it). For every input the connection must end (no
//! hang), nothing may panic (a panic hook counts panics in any thread,
//! including request tasks), the export must not grow, no single allocation
//! may exceed the 32 MiB request cap, and the memory live at any moment may
//! not grow beyond the connection's in-flight byte budget.
//!
//! A counting global allocator measures the last two, so this file holds a
//! single test and runs its cases one after another.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dtu::nbd::{Export, FileExport, Limits, NbdServer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

impl Counting {
    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }
}

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged, so it upholds GlobalAlloc's contract exactly as
// `System` does; the counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Counting::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Counting::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (hence `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Counting::grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

static PANICS: AtomicUsize = AtomicUsize::new(0);

const EXPORT_SIZE: u64 = 1 << 20;
const MAX_REQUEST: usize = 32 << 20;
/// What one connection may hold in flight (the server's minimum budget).
const IN_FLIGHT_BYTES: u32 = 32 << 20;
/// Buffers that exist besides request payloads: the connection's read
/// buffer and reply batch, the pipe, per-request bookkeeping, the runtime.
const SLACK: usize = 6 << 20;

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

fn option(opt: u32, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&opt.to_be_bytes());
    b.extend_from_slice(&declared_len.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

fn go(name: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&(name.len() as u32).to_be_bytes());
    p.extend_from_slice(name);
    p.extend_from_slice(&1u16.to_be_bytes());
    p.extend_from_slice(&3u16.to_be_bytes());
    option(7, p.len() as u32, &p)
}

/// How the session opens before the fuzzed part.
fn prefix() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Fixed newstyle, NBD_OPT_GO.
        Just([3u32.to_be_bytes().to_vec(), go(b"vol")].concat()),
        // Default export through NBD_OPT_EXPORT_NAME, no zeroes.
        Just([3u32.to_be_bytes().to_vec(), option(1, 0, &[])].concat()),
        // Old newstyle client.
        Just([0u32.to_be_bytes().to_vec(), option(1, 3, b"vol")].concat()),
        // Arbitrary client flags, nothing else.
        any::<u32>().prop_map(|f| f.to_be_bytes().to_vec()),
    ]
}

/// One option of a fuzzed handshake: any code, mostly an honest length,
/// sometimes any declared length (shorter or longer than the payload).
fn fuzz_option() -> impl Strategy<Value = Vec<u8>> {
    let code = prop_oneof![1u32..=11, any::<u32>()];
    let declared = prop_oneof![
        4 => Just(None),
        1 => prop_oneof![
            0u32..64,
            Just(4096u32),
            Just(4097),
            Just(70_000),
            Just(u32::MAX),
            any::<u32>()
        ]
        .prop_map(Some),
    ];
    (
        code,
        declared,
        proptest::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(c, d, p)| {
            let len = d.unwrap_or(p.len() as u32);
            option(c, len, &p)
        })
}

/// One transmission request with biased fields and a payload that may not
/// match its length.
fn fuzz_request() -> impl Strategy<Value = Vec<u8>> {
    let cmd = prop_oneof![4 => 0u16..=7, 1 => any::<u16>()];
    let flags = prop_oneof![
        Just(0u16),
        Just(1),
        Just(2),
        Just(4),
        Just(16),
        any::<u16>()
    ];
    let offset = prop_oneof![
        0..EXPORT_SIZE + 4096,
        Just(EXPORT_SIZE),
        Just(EXPORT_SIZE - 1),
        Just(u64::MAX),
        any::<u64>()
    ];
    let len = prop_oneof![
        0u32..70_000,
        Just(MAX_REQUEST as u32),
        Just(MAX_REQUEST as u32 + 1),
        Just(EXPORT_SIZE as u32),
        Just(u32::MAX),
        any::<u32>()
    ];
    let magic_ok = prop_oneof![9 => Just(true), 1 => Just(false)];
    (
        cmd,
        flags,
        offset,
        len,
        0usize..=100,
        magic_ok,
        any::<u64>(),
    )
        .prop_map(|(cmd, flags, offset, len, fill_pct, magic_ok, handle)| {
            let mut b = Vec::with_capacity(28);
            let magic = if magic_ok {
                REQUEST_MAGIC
            } else {
                REQUEST_MAGIC ^ 0x100
            };
            b.extend_from_slice(&magic.to_be_bytes());
            b.extend_from_slice(&flags.to_be_bytes());
            b.extend_from_slice(&cmd.to_be_bytes());
            b.extend_from_slice(&handle.to_be_bytes());
            b.extend_from_slice(&offset.to_be_bytes());
            b.extend_from_slice(&len.to_be_bytes());
            if cmd == 1 {
                // Up to 64 KiB of the payload, so inputs stay small; longer
                // writes are left short (the server must cope with EOF).
                let n = (len as usize).min(64 << 10) * fill_pct / 100;
                b.resize(28 + n, (handle & 0xff) as u8);
            }
            b
        })
}

/// Byte-level damage applied to a stream: overwrite, insert, delete.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Delete),
    ]
}

fn mutate(mut v: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        if v.is_empty() {
            break;
        }
        match *m {
            Mutation::Set(i, b) => {
                let n = v.len();
                v[i % n] = b;
            }
            Mutation::Insert(i, b) => {
                let n = v.len();
                v.insert(i % (n + 1), b);
            }
            Mutation::Delete(i) => {
                let n = v.len();
                v.remove(i % n);
            }
        }
    }
    v
}

/// A whole client byte stream.
fn session() -> impl Strategy<Value = Vec<u8>> {
    let handshake_fuzz = (
        Just(3u32.to_be_bytes().to_vec()),
        proptest::collection::vec(fuzz_option(), 0..8),
    )
        .prop_map(|(p, opts)| [p, opts.concat()].concat());
    let transmission_fuzz = (
        prefix(),
        proptest::collection::vec(fuzz_request(), 0..24),
        proptest::option::of(Just(
            [
                REQUEST_MAGIC.to_be_bytes().to_vec(),
                vec![0, 0, 0, 2],
                vec![0; 20],
            ]
            .concat(),
        )),
    )
        .prop_map(|(p, reqs, disc)| [p, reqs.concat(), disc.unwrap_or_default()].concat());
    let plain_random = proptest::collection::vec(any::<u8>(), 0..4096);
    let stream = prop_oneof![3 => transmission_fuzz, 2 => handshake_fuzz, 1 => plain_random];
    // Half the streams are left intact so they reach deep into the session.
    let muts = prop_oneof![
        Just(Vec::new()),
        proptest::collection::vec(mutation(), 1..6)
    ];
    (stream, muts).prop_map(|(s, m)| mutate(s, &m))
}

/// What the client saw of one session.
struct Seen {
    /// Got past the greeting (the server answered something).
    answered: bool,
    /// Got at least one transmission-phase reply.
    transmission: bool,
}

/// Feeds `input` to one connection and drains what the server sends.
/// Errs if the connection hung.
async fn run_session(server: &NbdServer, input: Vec<u8>) -> Result<Seen, String> {
    let (client, server_side) = tokio::io::duplex(64 << 10);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut cr, mut cw) = tokio::io::split(client);
    let feed = async move {
        // The server may hang up early; that is allowed.
        let _ = cw.write_all(&input).await;
        let _ = cw.shutdown().await;
        drop(input);
    };
    let drain = async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0usize;
        let mut transmission = false;
        // The last bytes of the previous read, so a magic split across
        // reads is still found.
        let mut carry: Vec<u8> = Vec::new();
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    return Seen {
                        answered: total > 18,
                        transmission,
                    }
                }
                Ok(n) => {
                    total += n;
                    if !transmission {
                        carry.extend_from_slice(&buf[..n]);
                        transmission = carry
                            .windows(4)
                            .any(|w| w == SIMPLE_REPLY_MAGIC.to_be_bytes());
                        let keep = carry.len().saturating_sub(3);
                        carry.drain(..keep);
                    }
                }
            }
        }
    };
    let served = server.serve_connection(server_side, stop_rx);
    match tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(served, feed, drain)
    })
    .await
    {
        Ok((_end, (), seen)) => Ok(seen),
        Err(_) => Err("the connection did not end after the client closed".into()),
    }
}

#[test]
fn random_and_mutated_streams_never_panic_hang_or_overallocate() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fuzz.img");
    let export = FileExport::open(&image, EXPORT_SIZE, false).unwrap();
    let server = NbdServer::new("vol", Arc::new(export) as Arc<dyn Export>).with_limits(Limits {
        max_in_flight: 8,
        max_in_flight_bytes: IN_FLIGHT_BYTES,
        handshake_timeout: Duration::from_secs(10),
        ..Limits::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cases: u32 = std::env::var("DTU_NBD_FUZZ_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let sessions = std::cell::Cell::new(0u64);
    let answered = std::cell::Cell::new(0u64);
    let transmitted = std::cell::Cell::new(0u64);
    runner
        .run(&session(), |input| {
            let input_len = input.len();
            let baseline = LIVE.load(Ordering::Relaxed);
            PEAK.store(baseline, Ordering::Relaxed);
            LARGEST.store(0, Ordering::Relaxed);
            let seen = rt
                .block_on(run_session(&server, input))
                .map_err(TestCaseError::fail)?;
            sessions.set(sessions.get() + 1);
            answered.set(answered.get() + u64::from(seen.answered));
            transmitted.set(transmitted.get() + u64::from(seen.transmission));
            let largest = LARGEST.load(Ordering::Relaxed);
            let grown = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
            prop_assert_eq!(PANICS.load(Ordering::SeqCst), 0, "a panic (see stderr)");
            prop_assert!(
                largest <= MAX_REQUEST + (64 << 10),
                "one allocation of {} bytes for a {}-byte input",
                largest,
                input_len
            );
            prop_assert!(
                grown <= IN_FLIGHT_BYTES as usize + SLACK,
                "live memory grew by {} bytes",
                grown
            );
            let len = std::fs::metadata(&image)
                .map_err(|e| TestCaseError::fail(e.to_string()))?
                .len();
            prop_assert_eq!(len, EXPORT_SIZE, "the export's file changed size");
            Ok(())
        })
        .unwrap();
    // The generator must reach past the greeting and into the transmission
    // phase often, or the run proves little.
    let (sessions, answered, transmitted) = (sessions.get(), answered.get(), transmitted.get());
    eprintln!(
        "{sessions} sessions: {answered} past the greeting, {transmitted} with transmission replies"
    );
    assert!(
        answered * 5 >= sessions * 2 && transmitted * 20 >= sessions * 3,
        "the generator is too shallow: of {sessions} sessions {answered} got past the \
         greeting and {transmitted} got transmission replies"
    );

    rt.block_on(flood_of_maximal_writes(dir.path()));
    assert_eq!(PANICS.load(Ordering::SeqCst), 0);
    rt.shutdown_timeout(Duration::from_secs(5));
}

/// The worst case by construction: back-to-back 32 MiB writes, every
/// payload sent in full and in range, into a server whose budget is one
/// such write. What is live at once may not exceed the budget (plus the
/// client's own 32 MiB buffer, allocated before the baseline).
async fn flood_of_maximal_writes(dir: &std::path::Path) {
    const N: u64 = 8;
    let image = dir.join("flood.img");
    let export = FileExport::open(&image, 64 << 20, false).unwrap();
    let server = NbdServer::new("vol", Arc::new(export) as Arc<dyn Export>).with_limits(Limits {
        max_in_flight: 64,
        max_in_flight_bytes: IN_FLIGHT_BYTES,
        ..Limits::default()
    });
    let payload = vec![0x5au8; MAX_REQUEST];
    let (client, server_side) = tokio::io::duplex(256 << 10);
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (mut cr, mut cw) = tokio::io::split(client);
    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    LARGEST.store(0, Ordering::Relaxed);
    let feed = async {
        cw.write_all(&[3u32.to_be_bytes().to_vec(), go(b"vol")].concat())
            .await
            .unwrap();
        for i in 0..N {
            let mut h = Vec::with_capacity(28);
            h.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
            h.extend_from_slice(&[0, 0, 0, 1]);
            h.extend_from_slice(&i.to_be_bytes());
            h.extend_from_slice(&((i % 2) * MAX_REQUEST as u64).to_be_bytes());
            h.extend_from_slice(&(MAX_REQUEST as u32).to_be_bytes());
            cw.write_all(&h).await.unwrap();
            cw.write_all(&payload).await.unwrap();
        }
        let mut disc = REQUEST_MAGIC.to_be_bytes().to_vec();
        disc.extend_from_slice(&[0, 0, 0, 2]);
        disc.extend_from_slice(&[0; 20]);
        cw.write_all(&disc).await.unwrap();
    };
    let drain = async {
        let mut all = Vec::new();
        cr.read_to_end(&mut all).await.unwrap();
        all
    };
    let (end, (), replies) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(server.serve_connection(server_side, stop_rx), feed, drain)
    })
    .await
    .expect("the flood did not finish");
    end.expect("the flood connection failed");
    let grown = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);
    assert!(
        grown <= IN_FLIGHT_BYTES as usize + SLACK,
        "live memory grew by {grown} bytes under a flood of 32 MiB writes"
    );
    assert!(LARGEST.load(Ordering::Relaxed) <= MAX_REQUEST + (64 << 10));
    // Handshake replies, then N simple replies with error 0.
    let tail = &replies[replies.len() - 16 * N as usize..];
    for r in tail.chunks(16) {
        assert_eq!(&r[0..4], &0x6744_6698u32.to_be_bytes());
        assert_eq!(&r[4..8], &[0, 0, 0, 0], "write failed");
    }
    let img = std::fs::read(&image).unwrap();
    assert!(img.iter().all(|&b| b == 0x5a));
}
