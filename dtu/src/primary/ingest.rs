//! Ingest: from a host operation with a seq to durable records in the nvbuf.
//!
//! Writes are cut into chunks ([`encode_jobs`]) that the encode workers
//! checksum, compress and seal in parallel ([`encode_one`]); each result
//! becomes one nvbuf record holding the encoded Write frame, so the bytes a
//! lane later sends are exactly the bytes in the buffer. Flushes, trims and
//! checkpoints become one record each ([`Record::control`]). The appender
//! thread is a thin loop around [`Appender`]: it takes records as they come,
//! lets the appender put them in order, append, sync and apply them to the
//! local copy, reports the `buffered` frontier, and waits for space when the
//! ring is full. Every queue is bounded, so a slow link or a full nvbuf
//! stalls the host's writes instead of growing memory.

use super::error::Halt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use dtu_proto::chunk::ChunkPlan;
use dtu_proto::codec::{encode_chunk, EncodeOptions, Key};
use dtu_proto::frame::{Frame, Write};
use dtu_proto::sender::OpKind;
use dtu_proto::{ChunkId, Epoch, Seq};

use crate::nvbuf::RecordHeader;
use crate::workers::WorkerPool;

use super::appender::{AppendError, Appender};
use super::core::Core;
use super::local::{LocalCopy, LocalOp, LOCAL_SYNC_EVERY};
use super::mode::{self, Mode, Overflow};

/// Op kinds as stored in the low byte of a record's flags.
pub fn kind_code(kind: OpKind) -> u32 {
    match kind {
        OpKind::Write => 1,
        OpKind::Flush => 2,
        OpKind::Trim => 3,
        OpKind::Checkpoint => 4,
        OpKind::Marker => 5,
        OpKind::Digest => 6,
    }
}

/// The op kind a record's flags name, if they name one.
pub fn kind_from_flags(flags: u32) -> Option<OpKind> {
    match flags & 0xff {
        1 => Some(OpKind::Write),
        2 => Some(OpKind::Flush),
        3 => Some(OpKind::Trim),
        4 => Some(OpKind::Checkpoint),
        5 => Some(OpKind::Marker),
        6 => Some(OpKind::Digest),
        _ => None,
    }
}

/// One chunk to encode.
#[derive(Debug, Clone)]
pub struct EncodeJob {
    pub seq: Seq,
    pub epoch: Epoch,
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    pub data: Bytes,
    /// The data still has to reach the local copy (a host write); a sync
    /// copy was read from it.
    pub to_local: bool,
}

/// One record ready for the nvbuf, with what it does to the local copy.
#[derive(Debug, Clone)]
pub struct Record {
    pub hdr: RecordHeader,
    pub frame: Bytes,
    pub local: LocalOp,
}

impl Record {
    /// A record for a data-less operation (flush, trim, checkpoint).
    pub fn control(
        kind: OpKind,
        seq: Seq,
        epoch: Epoch,
        offset: u64,
        length: u64,
        frame: &Frame,
    ) -> Record {
        Record {
            hdr: RecordHeader {
                seq,
                epoch,
                offset,
                length: length.min(u32::MAX as u64) as u32,
                flags: kind_code(kind),
                chunk_index: 0,
                chunk_count: 1,
            },
            frame: frame.to_bytes(),
            local: match (kind, frame) {
                (OpKind::Trim, Frame::Trim(_)) => LocalOp::Trim {
                    offset,
                    len: length,
                },
                _ => LocalOp::None,
            },
        }
    }
}

/// Settings of the encode stage.
#[derive(Debug, Clone)]
pub struct EncodeSettings {
    pub key: Option<Key>,
    pub compress: bool,
    pub chunk_size: usize,
    /// Keep each chunk's plaintext in its record, for the local copy.
    pub keep_plain: bool,
}

/// The chunks of one write, as jobs for the encode workers.
pub fn encode_jobs(
    seq: Seq,
    epoch: Epoch,
    offset: u64,
    data: &Bytes,
    chunk_size: usize,
) -> impl Iterator<Item = EncodeJob> + '_ {
    let plan = ChunkPlan::new(offset, data.len(), chunk_size);
    let count = plan.count();
    (0..count).filter_map(move |i| {
        let span = plan.span(i)?;
        Some(EncodeJob {
            seq,
            epoch,
            index: span.index,
            count,
            offset: span.offset,
            data: data.slice(span.range),
            to_local: true,
        })
    })
}

/// Checksums, compresses and seals one chunk into its record.
pub fn encode_one(s: &EncodeSettings, job: EncodeJob) -> Record {
    let id = ChunkId {
        epoch: job.epoch,
        seq: job.seq,
        index: job.index,
    };
    let chunk = encode_chunk(
        &job.data,
        id,
        job.offset,
        &EncodeOptions {
            compress: s.compress,
            key: s.key.as_ref(),
        },
    );
    let flags = kind_code(OpKind::Write) | (chunk.flags.bits() as u32) << 8;
    let frame = Frame::Write(Write {
        id,
        count: job.count,
        offset: job.offset,
        chunk,
    });
    Record {
        hdr: RecordHeader {
            seq: job.seq,
            epoch: job.epoch,
            offset: job.offset,
            length: job.data.len() as u32,
            flags,
            chunk_index: job.index,
            chunk_count: job.count,
        },
        frame: frame.to_bytes(),
        local: if s.keep_plain && job.to_local {
            LocalOp::Write {
                offset: job.offset,
                data: job.data,
            }
        } else {
            LocalOp::None
        },
    }
}

/// The encode workers and the appender thread.
pub(crate) struct Ingest {
    pub encode: WorkerPool<EncodeJob>,
    pub records: Sender<Record>,
    pub settings: Arc<EncodeSettings>,
    appender: Option<std::thread::JoinHandle<()>>,
}

/// Records in flight between the encoders and the appender; with 64 KiB
/// chunks this bounds that stage to a few MiB.
const RECORD_QUEUE: usize = 64;

/// How long the appender waits for space in a full ring before it looks at
/// shutdown again.
const SPACE_WAIT: Duration = Duration::from_millis(500);

/// How long the appender waits for records before it does idle chores.
const IDLE: Duration = Duration::from_millis(200);

impl Ingest {
    pub fn start(
        core: Arc<Core>,
        settings: EncodeSettings,
        workers: usize,
        local: Option<Arc<LocalCopy>>,
        overflow: (Overflow, Duration),
    ) -> std::io::Result<Ingest> {
        let settings = Arc::new(settings);
        let (records, rx) = crossbeam_channel::bounded::<Record>(RECORD_QUEUE);
        let enc_records = records.clone();
        let enc_settings = settings.clone();
        let enc_core = core.clone();
        let encode = WorkerPool::new("dtu-encode", workers, workers * 4, move |job: EncodeJob| {
            let rec = encode_one(&enc_settings, job);
            enc_core
                .counters
                .encoded_bytes
                .fetch_add(rec.frame.len() as u64, Ordering::Relaxed);
            // The appender only stops at shutdown; a lost record then is fine.
            let _ = enc_records.send(rec);
        })?;
        let app_core = core.clone();
        let next = core.nvbuf.next_seq();
        let appender = std::thread::Builder::new()
            .name("dtu-append".into())
            .spawn(move || {
                if let Err(e) = append_loop(
                    &app_core,
                    rx,
                    Appender::new(next),
                    local.as_deref(),
                    overflow,
                ) {
                    tracing::error!("the appender failed, the primary stops accepting writes: {e}");
                    app_core.fail(Halt::Appender(std::sync::Arc::new(e)));
                }
            })?;
        Ok(Ingest {
            encode,
            records,
            settings,
            appender: Some(appender),
        })
    }

    /// Queues the chunks of one write for encoding; blocks while the encode
    /// queue is full (backpressure).
    pub fn submit_write(
        &self,
        seq: Seq,
        epoch: Epoch,
        offset: u64,
        data: Bytes,
    ) -> Result<(), Halt> {
        for job in encode_jobs(seq, epoch, offset, &data, self.settings.chunk_size) {
            self.encode.submit(job).map_err(|_| Halt::Stopped("encode workers"))?;
        }
        Ok(())
    }

    /// Queues a ready record (flush, trim, checkpoint).
    pub fn submit_record(&self, rec: Record) -> Result<(), Halt> {
        self.records.send(rec).map_err(|_| Halt::Stopped("appender"))
    }

    /// Waits for the appender to finish (after shutdown was flagged).
    pub fn join(&mut self) {
        if let Some(t) = self.appender.take() {
            let _ = t.join();
        }
    }
}

/// The appender thread: records in, [`Appender::step`], answers out.
fn append_loop(
    core: &Core,
    rx: Receiver<Record>,
    mut app: Appender,
    local: Option<&LocalCopy>,
    (overflow, overflow_after): (Overflow, Duration),
) -> Result<(), AppendError> {
    let nvbuf = &core.nvbuf;
    loop {
        match rx.recv_timeout(IDLE) {
            Ok(rec) => app.push(rec)?,
            Err(RecvTimeoutError::Timeout) => {
                if core.is_shutdown() {
                    return Ok(());
                }
                // Idle: let the superblock vouch for what is durable, and
                // sync the local copy so the nvbuf can free what it holds.
                nvbuf.checkpoint_if_behind()?;
                sync_local(core, local, Instant::now(), true)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // Everything else already queued joins this batch.
        while let Ok(rec) = rx.try_recv() {
            app.push(rec)?;
        }
        loop {
            let now = Instant::now();
            let step = app.step(nvbuf, local, now)?;
            if let Some(seq) = step.buffered {
                core.event(|s, now| s.on_buffered(seq, now));
            }
            sync_local(core, local, now, step.blocked)?;
            if !step.blocked {
                let mut st = core.lock();
                st.full_since = None;
                if matches!(st.mode, Mode::Failing { .. }) {
                    st.mode = Mode::Journal;
                    tracing::info!("the nvbuf has room again: writes are taken again");
                }
                break;
            }
            let since = *core.lock().full_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= overflow_after {
                match overflow {
                    Overflow::Stall => {}
                    Overflow::Fail => {
                        let mut st = core.lock();
                        if matches!(st.mode, Mode::Journal) {
                            st.mode = Mode::Failing { since };
                            tracing::error!(
                                "the nvbuf has been full for {:?}: new writes are refused \
                                 (nvbuf.overflow = fail) until the remote frees space",
                                now.saturating_duration_since(since)
                            );
                        }
                    }
                    Overflow::Bitmap => {
                        if let Some(local) = local {
                            fold_now(core, &rx, &mut app, local)?;
                            break;
                        }
                    }
                }
            }
            // The ring is full: what we appended is durable and on its way;
            // wait for the remote to free space, as long as the primary runs.
            if core.is_shutdown() {
                return Ok(());
            }
            nvbuf.wait_for_space(Instant::now() + SPACE_WAIT);
            while let Ok(rec) = rx.try_recv() {
                app.push(rec)?;
            }
        }
    }
}

/// Leaves the journal for the map (see [`super::mode`]): host operations
/// are held out, every record of every seq handed out so far is gathered
/// (draining the encoders meanwhile, so none of them waits forever), and
/// everything not yet stored on the replica is folded into the map.
fn fold_now(
    core: &Core,
    rx: &Receiver<Record>,
    app: &mut Appender,
    local: &LocalCopy,
) -> Result<(), AppendError> {
    let Some(map) = core.map.as_deref() else {
        return Ok(());
    };
    core.folding.store(true, Ordering::Release);
    let _gate = loop {
        match core.gate.try_write() {
            Ok(g) => break g,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                while let Ok(rec) = rx.try_recv() {
                    app.push(rec)?;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    };
    let highest = core.lock().sender.highest_seq();
    loop {
        while let Ok(rec) = rx.try_recv() {
            app.push(rec)?;
        }
        let ready = {
            let st = core.lock();
            app.holds_through(highest, |seq| st.sync.is_reserved(seq))
        };
        if ready {
            break;
        }
        if core.is_shutdown() {
            core.folding.store(false, Ordering::Release);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let now = Instant::now();
    let conn = {
        let mut st = core.lock();
        let st = &mut *st;
        st.sync.abort();
        let held = st.sender.progress();
        mode::fold(
            &core.nvbuf,
            map,
            local,
            app,
            &mut st.sender,
            &mut st.meta,
            rand::random::<u64>() | 1,
            now,
        )?;
        st.mode = Mode::Ahead { since: now };
        st.full_since = None;
        tracing::warn!(
            "the nvbuf stayed full: the primary goes ahead (nvbuf.overflow = bitmap): seqs {}..={} \
             folded into the changed-block map ({} marked), new generation {:016x}; writes go to the \
             local copy and the map until the remote is back and resynced",
            held.remote_stored + 1,
            held.highest,
            crate::units::format_bytes(map.marked_bytes()),
            st.meta.gens.current
        );
        st.conn.clone()
    };
    core.answer_ready();
    core.folding.store(false, Ordering::Release);
    // The remote must decide a resync: a new session makes it.
    if let Some(c) = conn {
        c.close(2u32.into(), b"primary went ahead");
    }
    core.lanes_wake.notify_waiters();
    Ok(())
}

/// Syncs the local copy when due, and lets the nvbuf free what that allows.
fn sync_local(
    core: &Core,
    local: Option<&LocalCopy>,
    now: Instant,
    force: bool,
) -> Result<(), AppendError> {
    let Some(local) = local else {
        return Ok(());
    };
    let moved = local
        .sync_due(now, LOCAL_SYNC_EVERY, force)
        .map_err(|source| AppendError::Local {
            seq: local.applied(),
            source,
        })?;
    if moved {
        core.event(|_, _| ());
    }
    Ok(())
}
