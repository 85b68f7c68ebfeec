//! The in-process relay (`dtu_sim::relay::Relay`, what `dtu demo` and the
//! end-to-end tests embed): a TCP byte stream arrives intact and in order
//! through loss, duplication, reordering and corruption; UDP datagrams meet
//! exactly the fates the relay's counters report; and the same seed gives
//! the same losses, run after run.

mod support;

use dtu_sim::link::LinkOverrides;
use dtu_sim::presets;
use dtu_sim::relay::{Relay, RelayConfig};
use rand::{RngCore, SeedableRng};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use support::*;

fn relay(forward: SocketAddr, both: &str, up: &str, seed: u64) -> Relay {
    let cfg = presets::build(
        None,
        &LinkOverrides::parse_list(both).unwrap(),
        &LinkOverrides::parse_list(up).unwrap(),
        &LinkOverrides::default(),
    )
    .unwrap();
    let mut rc = RelayConfig::new("127.0.0.1:0".parse().unwrap(), forward, cfg);
    rc.seed = seed;
    Relay::start(rc).expect("relay starts")
}

#[test]
fn tcp_stream_survives_every_impairment() {
    let echo = Echo::start();
    let r = relay(
        echo.tcp,
        "rate=50M,delay=1ms,jitter=200us,loss=3%,duplicate=3%,reorder=3%,corrupt=3%",
        "",
        11,
    );
    let mut data = vec![0u8; 1 << 20];
    rand_chacha::ChaCha8Rng::seed_from_u64(5).fill_bytes(&mut data);
    let mut c = TcpStream::connect(r.local_addr()).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = c.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    c.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echoed stream differs");
    let s = r.stats();
    for d in [&s.up, &s.down] {
        assert!(d.link.dropped_loss > 0 && d.link.corrupted > 0 && d.link.duplicated > 0);
        assert!(d.link.reordered > 0 && d.tcp_retransmits > 0);
    }
    assert_eq!(s.tcp_connections, 1);
}

/// Sends `n` numbered datagrams through `r` to an echo and returns which
/// numbers came back.
fn udp_fates(r: &Relay, n: u32) -> Vec<bool> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.connect(r.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
    let mut back = vec![false; n as usize];
    let mut buf = [0u8; 64];
    let mut drain = |back: &mut Vec<bool>| {
        while let Ok(len) = s.recv(&mut buf) {
            if len == 4 {
                back[u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize] = true;
            }
        }
    };
    for i in 0..n {
        s.send(&i.to_be_bytes()).unwrap();
        if i % 100 == 99 {
            drain(&mut back);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        drain(&mut back);
        let st = r.stats();
        if st.up.link.packets_in == n as u64
            && st.down.link.packets_delivered == st.up.link.packets_delivered
            && back.iter().filter(|&&b| b).count() as u64 == st.down.link.packets_delivered
        {
            break;
        }
    }
    back
}

#[test]
fn udp_fates_match_the_counters_and_repeat_with_the_seed() {
    let echo = Echo::start();
    let n = 3000;
    let run = |seed| {
        let r = relay(echo.udp, "delay=1ms", "loss=10%", seed);
        let fates = udp_fates(&r, n);
        let s = r.stats();
        (fates, s)
    };
    let (a, sa) = run(3);
    let came = a.iter().filter(|&&b| b).count() as u64;
    assert_eq!(sa.up.link.packets_in, n as u64);
    assert_eq!(
        sa.up.link.dropped_loss + sa.up.link.packets_delivered,
        n as u64
    );
    assert_eq!(came, sa.up.link.packets_delivered);
    assert_eq!(sa.down.link.dropped(), 0);
    let sigma = (n as f64 * 0.1 * 0.9).sqrt();
    assert!((sa.up.link.dropped_loss as f64 - n as f64 * 0.1).abs() < 5.0 * sigma);

    let (b, _) = run(3);
    assert_eq!(a, b, "same seed, same traffic, different fates");
    let (c, _) = run(4);
    assert_ne!(a, c);
}

#[test]
fn relay_reports_the_configured_delay() {
    let _g = serial();
    let echo = Echo::start();
    let r = relay(echo.udp, "delay=20ms", "", 1);
    let rtts = udp_pings(r.local_addr(), 15, 64, Duration::from_secs(2));
    assert_eq!(rtts.len(), 15);
    assert!(*rtts.iter().min().unwrap() >= Duration::from_millis(40));
    assert!(median(&rtts) < Duration::from_millis(50), "{rtts:?}");
    let mut r = r;
    r.stop();
    let s = r.stats();
    assert_eq!(s.up.link.packets_delivered, 15);
    assert_eq!(s.up.link.delay.min(), Some(Duration::from_millis(20)));
    assert_eq!(s.down.link.delay.max(), Some(Duration::from_millis(20)));
    assert_eq!(s.down.late.count, 15);
}

#[test]
fn a_tcp_sender_runs_only_a_little_ahead_of_a_slow_link() {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (rx, d2) = (received.clone(), done.clone());
    let reader = std::thread::spawn(move || {
        let (mut c, _) = sink.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let mut buf = vec![0u8; 65536];
        while !d2.load(Ordering::Relaxed) {
            match c.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    rx.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {}
            }
        }
    });
    // 2 Mbit/s, 10 ms each way: 250 kB/s; the relay's window is its 64 KiB floor.
    let r = relay(sink_addr, "rate=2M,delay=10ms", "", 1);
    let c = TcpStream::connect(r.local_addr()).unwrap();
    c.set_nonblocking(true).unwrap();
    // A small send buffer, so that what the sender counts as written and
    // the link has not carried is what the relay's side holds.
    rustix::net::sockopt::set_socket_send_buffer_size(&c, 64 * 1024).unwrap();
    let chunk = vec![7u8; 16384];
    let mut written = 0u64;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        match (&c).write(&chunk) {
            Ok(n) => written += n as u64,
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    let got = received.load(Ordering::Relaxed);
    done.store(true, Ordering::Relaxed);
    drop(c);
    drop(r);
    reader.join().unwrap();
    eprintln!("written {written} B, received {got} B in 1.5 s at 2 Mbit/s");
    // About 1.5 s × 250 kB/s went through the link.
    assert!(got > 250_000 && got < 400_000, "received {got}");
    // The rest sits in the relay (its window) and in the socket buffers on
    // either side of it (about 320 kB here); when the relay forced 8 MiB
    // kernel buffers on relayed TCP sockets it was 17 MB.
    assert!(
        written - got < 1 << 20,
        "the sender ran {} bytes ahead",
        written - got
    );
}
