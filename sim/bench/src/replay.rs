//! replay: how fast a primary empties its nvbuf after a restart. The
//! primary runs with the link down (nothing listens where it sends) while
//! the host writes incompressible 64 KiB blocks, answered at `buffered`,
//! until the nvbuf holds the lot (1 GiB; 64 MiB quick); the primary is
//! stopped, the remote and the emulated link (wan-100m-40ms) come up, and
//! the primary starts again: it scans the nvbuf, reconnects and resends.
//! The figure is the drain time from that restart until the replica has
//! stored everything, relative to the time the payload alone needs at the
//! line rate.

use std::time::{Duration, Instant};

use dtu::status::ConnectionState;
use serde_json::json;

use super::inproc::{write_stream, Blocks, InprocPair, PairConfig};
use super::plot::{lines, Lines, Panel};
use super::report::{f, mbit};
use super::{Opts, Report, Result, Table};

const PRESET: &str = "wan-100m-40ms";

pub fn run(o: &Opts) -> Result<Report> {
    let mut r = Report::new("replay", o.quick);
    let bytes: u64 = o.pick(1 << 30, 64 << 20);
    let mut pair = InprocPair::new(PairConfig {
        preset: Some(PRESET.into()),
        seed: o.seed,
        volume_size: bytes,
        // Room for every record's header and seal besides the payload.
        nvbuf_size: bytes + bytes / 16 + (16 << 20),
        ..PairConfig::default()
    })?;
    let line = pair.preset.as_ref().map_or(1.0, |p| p.up.rate_bps as f64);

    eprintln!(
        "replay: filling the nvbuf with {} MiB while the link is down",
        bytes >> 20
    );
    pair.start_primary()?;
    let mut blocks = Blocks::new(64 << 10, 1.0, 64, o.seed);
    let fill = write_stream(pair.primary(), &mut blocks, bytes, 64)?;
    let fill_s = (fill.last_answer - fill.first).as_secs_f64();
    let buffered = pair.status().buffered_bytes;
    pair.stop_primary()?;

    pair.start_remote()?;
    pair.start_relay()?;
    eprintln!("replay: restarting the primary");
    let t0 = Instant::now();
    pair.start_primary()?;
    let started_s = t0.elapsed().as_secs_f64();
    let recovered = pair.status().recovered_at_start;
    let ideal = bytes as f64 * 8.0 / line;
    let limit = Duration::from_secs_f64((ideal * 10.0).max(120.0));
    let mut progress = vec![(0.0, 0.0)];
    let mut connected_s = None;
    let end = t0 + limit;
    let done = loop {
        let now = Instant::now();
        let stored = pair.remote().stored_seq();
        if connected_s.is_none() && pair.status().connection == ConnectionState::Connected {
            connected_s = Some(t0.elapsed().as_secs_f64());
        }
        let applied = pair.remote_status().applied_bytes;
        progress.push((
            t0.elapsed().as_secs_f64(),
            applied as f64 / (1 << 20) as f64,
        ));
        if stored >= fill.last_seq {
            break now;
        }
        if now >= end {
            return Err(super::BenchError::Timeout {
                after: limit,
                what: format!(
                    "the replay to drain (stored seq {stored} of {})",
                    fill.last_seq
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let drain_s = (done - t0).as_secs_f64();
    let s = pair.status();
    pair.shutdown()?;

    let ratio = ideal / drain_s;
    let mut t = Table::new(
        &format!(
            "{PRESET} ({} Mbit/s line, 40 ms RTT), {} MiB of incompressible 64 KiB writes",
            mbit(line),
            bytes >> 20
        ),
        &[
            "filled in s",
            "nvbuf bytes",
            "records recovered",
            "restart s",
            "connected at s",
            "drained at s",
            "payload at line rate s",
            "drain Mbit/s",
            "line time / drain time",
        ],
    );
    t.row(vec![
        f(fill_s, 1),
        format!("{} MiB", buffered >> 20),
        recovered.to_string(),
        f(started_s, 2),
        connected_s.map_or("-".into(), |c| f(c, 2)),
        f(drain_s, 1),
        f(ideal, 1),
        mbit(bytes as f64 * 8.0 / drain_s),
        f(ratio, 3),
    ]);
    r.tables.push(t);
    r.note(
        "The resend comes straight from the nvbuf: records are already sealed and compressed, so \
         the restarted primary does no encoding; the remote decodes, checks and applies as usual.",
    );
    let ideal_line: Vec<(f64, f64)> = vec![(0.0, 0.0), (ideal, bytes as f64 / (1 << 20) as f64)];
    lines(
        &o.out.join("replay"),
        &Lines {
            title: format!(
                "replay of {} MiB from the nvbuf after a restart, {PRESET}",
                bytes >> 20
            ),
            x_desc: "seconds since the restart".into(),
            panels: vec![Panel {
                y_desc: "MiB applied on the replica".into(),
                log_y: false,
                series: vec![
                    ("replica".into(), progress.clone()),
                    ("payload at the line rate".into(), ideal_line),
                ],
                guides: Vec::new(),
                y_range: None,
            }],
        },
    )?;
    r.data = json!({
        "preset": PRESET,
        "bytes": bytes,
        "fill_s": fill_s,
        "nvbuf_used_bytes": buffered,
        "recovered_ops": recovered,
        "restart_s": started_s,
        "connected_s": connected_s,
        "drain_s": drain_s,
        "ideal_s": ideal,
        "ratio": ratio,
        "retransmits": s.retransmits,
        "progress": progress,
    });
    Ok(r)
}
