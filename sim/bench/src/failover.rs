//! failover: disaster drills with the library the binaries run. Site A
//! (a primary with a local copy) mirrors to site B; the host writes; A is
//! lost; B is promoted (`Remote::promote`, then its primary role on the
//! replica, as `dtu promote` does) and the time from the promotion to the
//! first host write answered on B is the RTO. Then the host writes 1 % of
//! the volume on B, A is demoted (`primary::role::demote_files`) and
//! started as B's remote, and the bytes on the wire until A equals B are
//! set against the bytes that changed (B's writes and A's in-flight
//! records). Over loopback: the RTO does not wait on the link, and the
//! bytes do not depend on it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dtu::inproc::{primary_status, PairSetup};
use dtu::primary::role::{demote_files, prepare_promoted};
use dtu::primary::{Primary, PrimaryOptions};
use dtu::remote::{Remote, RemoteOptions};
use dtu::status::{ConnectionState, PrimaryStatus};
use dtu::transport::LinkTuning;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::inproc::spoof_always;
use super::plot::{bars, Bars};
use super::report::f;
use super::tools::{free_port_pair, wait_for};
use super::{BenchError, Opts, Report, Result, Table, Target};

const MIB: u64 = 1 << 20;
const WRITE: usize = 64 << 10;

/// One drill's figures.
#[derive(Debug, Clone, serde::Serialize)]
struct Drill {
    rto_ms: f64,
    promote_ms: f64,
    changed_bytes: u64,
    in_flight_bytes: u64,
    wire_bytes: u64,
    failback_s: f64,
}

fn tuning() -> LinkTuning {
    LinkTuning {
        rate_bps: 0,
        rtt: Duration::from_millis(1),
        ..LinkTuning::default()
    }
}

fn in_sync(s: &PrimaryStatus) -> bool {
    s.connection == ConnectionState::Connected
        && s.mirror.sync.target == 0
        && s.mirror.out_of_sync_bytes == 0
        && s.remote_stored_seq == s.highest_seq
        && s.mirror.mode == "journal"
}

/// Writes `n` random 64 KiB blocks at random offsets; waits for the answers.
fn host_writes(p: &Primary, size: u64, n: usize, rng: &mut ChaCha8Rng) -> Result<u64> {
    let mut pending = Vec::new();
    for _ in 0..n {
        let mut buf = vec![0u8; WRITE];
        rng.fill(&mut buf[..]);
        let off = rng.gen_range(0..size / WRITE as u64) * WRITE as u64;
        pending.push(p.write(off, Bytes::from(buf)).map_err(BenchError::dtu)?);
    }
    for w in pending {
        w.wait().map_err(BenchError::dtu)?;
    }
    Ok((n * WRITE) as u64)
}

fn remote_opts(
    setup: &PairSetup,
    swap: bool,
    port: u16,
    dir: &Path,
    replica: &str,
) -> RemoteOptions {
    let mut o = setup.remote_options(format!("127.0.0.1:{port}").parse().unwrap(), tuning(), dir);
    if swap {
        o.identity = setup.primary_id.clone();
        o.peer = setup.remote_id.fingerprint();
    }
    o.replica = dir.join(replica);
    let mut state = o.replica.clone().into_os_string();
    state.push(".state");
    o.state = state.into();
    o.undo = None;
    o
}

fn primary_opts(
    setup: &PairSetup,
    swap: bool,
    port: u16,
    dir: &Path,
    local: &str,
) -> PrimaryOptions {
    let mut o = setup.primary_options(
        format!("127.0.0.1:{port}").parse().unwrap(),
        tuning(),
        dir,
        spoof_always(),
    );
    if swap {
        o.identity = setup.remote_id.clone();
        o.peer = setup.primary_id.fingerprint();
    }
    o.local = Some(dir.join(local));
    o.nvbuf_size = 32 << 20;
    o
}

fn drill(size: u64, seed: u64) -> Result<Drill> {
    let tmp = tempfile::Builder::new()
        .prefix("dtu-bench-failover-")
        .tempdir()
        .map_err(|e| BenchError::io("temp dir", e))?;
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&dir_a, &dir_b] {
        std::fs::create_dir_all(d).map_err(|e| BenchError::io("site dir", e))?;
    }
    let (port_a, port_b) = (free_port_pair()?, free_port_pair()?);
    let setup = PairSetup::generate(*b"dtu-bench-failov", size).map_err(BenchError::dtu)?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);

    // A mirrors to B; the host writes; the last writes are still in flight
    // when A is lost.
    let b = Remote::start(remote_opts(&setup, false, port_b, &dir_b, "replica.img"))
        .map_err(BenchError::dtu)?;
    let a_opts = primary_opts(&setup, false, port_b, &dir_a, "volume.img");
    let a = Arc::new(Primary::start(a_opts.clone()).map_err(BenchError::dtu)?);
    wait_for("A in sync with B", Duration::from_secs(60), || {
        Ok(in_sync(&primary_status(&a)))
    })?;
    host_writes(&a, size, (size / 16 / WRITE as u64) as usize, &mut rng)?;
    wait_for("B to store A's writes", Duration::from_secs(60), || {
        Ok(in_sync(&primary_status(&a)))
    })?;
    host_writes(&a, size, 8, &mut rng)?;
    drop(Arc::try_unwrap(a).map_err(|_| BenchError::Dtu("A still shared".into()))?);

    // B is promoted; its primary role answers the first host write.
    let t0 = Instant::now();
    let p = b
        .promote(false, || Ok::<(), std::convert::Infallible>(()))
        .map_err(BenchError::dtu)?;
    b.shutdown();
    let mut b_opts = primary_opts(&setup, true, port_a, &dir_b, "replica.img");
    b_opts.nvbuf_path = dir_b.join("promoted.nvbuf");
    b_opts.peer_lost = true;
    prepare_promoted(&b_opts, p.gens, p.base).map_err(BenchError::dtu)?;
    let promote_ms = t0.elapsed().as_secs_f64() * 1e3;
    let bp = Primary::start(b_opts).map_err(BenchError::dtu)?;
    let mut first = vec![0u8; WRITE];
    rng.fill(&mut first[..]);
    bp.write(0, Bytes::from(first))
        .map_err(BenchError::dtu)?
        .wait()
        .map_err(BenchError::dtu)?;
    let rto_ms = t0.elapsed().as_secs_f64() * 1e3;

    // 1 % of the volume changes on B; A comes back as B's remote.
    let changed =
        host_writes(&bp, size, (size / 100 / WRITE as u64) as usize, &mut rng)? + WRITE as u64;
    let mut state_a = dir_a.join("volume.img").into_os_string();
    state_a.push(".state");
    let d = demote_files(&a_opts, Path::new(&state_a), false).map_err(BenchError::dtu)?;
    let before = primary_status(&bp).quic;
    let t1 = Instant::now();
    let a_remote = Remote::start(remote_opts(&setup, true, port_a, &dir_a, "volume.img"))
        .map_err(BenchError::dtu)?;
    wait_for("the failback resync", Duration::from_secs(300), || {
        Ok(in_sync(&primary_status(&bp)))
    })?;
    let failback_s = t1.elapsed().as_secs_f64();
    let after = primary_status(&bp).quic;
    let wire =
        (after.udp_tx_bytes + after.udp_rx_bytes) - (before.udp_tx_bytes + before.udp_rx_bytes);
    bp.shutdown();
    a_remote.shutdown();
    let (x, y) = (
        std::fs::read(dir_a.join("volume.img")).map_err(|e| BenchError::io("A's volume", e))?,
        std::fs::read(dir_b.join("replica.img")).map_err(|e| BenchError::io("B's volume", e))?,
    );
    if x != y {
        return Err(BenchError::Dtu(
            "after the failback A's volume differs from B's".into(),
        ));
    }
    Ok(Drill {
        rto_ms,
        promote_ms,
        changed_bytes: changed,
        in_flight_bytes: d.divergent_bytes(),
        wire_bytes: wire,
        failback_s,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("failover", o.quick);
    let (size, drills) = o.pick((256 * MIB, 10), (64 * MIB, 3));
    let mut t = Table::new(
        "disaster drills over loopback: promote B, first host write on B, 1 % written, A demoted and resynced",
        &[
            "drill",
            "promote ms",
            "RTO ms",
            "changed on B",
            "in flight on A",
            "wire",
            "wire / changed",
            "failback s",
        ],
    );
    let mut all = Vec::new();
    for i in 0..drills {
        eprintln!("failover: drill {} of {drills}", i + 1);
        let d = drill(size, o.seed + i as u64)?;
        let changed = d.changed_bytes + d.in_flight_bytes;
        t.row(vec![
            (i + 1).to_string(),
            f(d.promote_ms, 1),
            f(d.rto_ms, 1),
            format!("{} KiB", d.changed_bytes >> 10),
            format!("{} KiB", d.in_flight_bytes >> 10),
            format!("{} KiB", d.wire_bytes >> 10),
            f(d.wire_bytes as f64 / changed as f64, 2),
            f(d.failback_s, 2),
        ]);
        all.push(d);
    }
    r.tables.push(t);
    let rto = median(all.iter().map(|d| d.rto_ms).collect());
    let ratios: Vec<f64> = all
        .iter()
        .map(|d| d.wire_bytes as f64 / (d.changed_bytes + d.in_flight_bytes) as f64)
        .collect();
    let worst = ratios.iter().copied().fold(0.0, f64::max);
    r.target(Target::new(
        format!("RTO, dtu promote to the first answered host write (p50 of {drills})"),
        "< 2000 ms",
        format!("{} ms", f(rto, 1)),
        rto < 2000.0,
    ));
    r.target(Target::new(
        "failback wire bytes / changed bytes (worst drill)",
        "≤ 1.2",
        f(worst, 2),
        worst <= 1.2,
    ));
    r.note(
        "Changed bytes are B's writes after the promotion plus the extents of A's records that \
         were not known stored when A was lost (A resyncs them from B). A sends the list of those \
         extents after its answer (16 bytes per range) and B resyncs its changed-block map plus \
         them; the wire also carries QUIC and frame headers and the seal of each chunk.",
    );
    r.data = json!({ "volume_bytes": size, "drills": all, "rto_ms_p50": rto });
    bars(
        &o.out.join("failover"),
        &Bars {
            title: "failover drills: RTO (ms) per drill".into(),
            y_desc: "ms".into(),
            categories: (1..=all.len()).map(|i| format!("drill {i}")).collect(),
            series: vec![("RTO".into(), all.iter().map(|d| Some(d.rto_ms)).collect())],
            guides: vec![(2000.0, "target 2 s".into())],
            log_y: false,
            digits: Some(0),
        },
    )?;
    Ok(r)
}
