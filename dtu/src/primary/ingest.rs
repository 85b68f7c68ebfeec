//! Ingest: from a host operation with a seq to durable records in the nvbuf.
//!
//! Writes are cut into chunks that the encode workers checksum, compress and
//! seal in parallel; each result becomes one nvbuf record holding the
//! encoded Write frame, so the bytes a lane later sends are exactly the bytes
//! in the buffer. The single appender thread puts records back in (seq,
//! chunk) order, appends every record that is ready, makes them durable with
//! one flush (group commit), and reports the seq frontier as `buffered`.
//! Every queue is bounded, so a slow link or a full nvbuf stalls the host's
//! writes instead of growing memory.

use std::collections::BTreeMap;
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

use crate::nvbuf::{NvbufError, RecordHeader};
use crate::workers::WorkerPool;

use super::core::Core;

/// Op kinds as stored in the low byte of a record's flags.
pub(crate) fn kind_code(kind: OpKind) -> u32 {
    match kind {
        OpKind::Write => 1,
        OpKind::Flush => 2,
        OpKind::Trim => 3,
        OpKind::Checkpoint => 4,
    }
}

pub(crate) fn kind_from_flags(flags: u32) -> Option<OpKind> {
    match flags & 0xff {
        1 => Some(OpKind::Write),
        2 => Some(OpKind::Flush),
        3 => Some(OpKind::Trim),
        4 => Some(OpKind::Checkpoint),
        _ => None,
    }
}

/// One chunk to encode.
pub(crate) struct EncodeJob {
    pub seq: Seq,
    pub epoch: Epoch,
    pub index: u32,
    pub count: u32,
    pub offset: u64,
    pub data: Bytes,
}

/// One record ready for the nvbuf.
pub(crate) struct Record {
    pub hdr: RecordHeader,
    pub frame: Bytes,
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
        }
    }
}

/// Settings of the encode stage.
pub(crate) struct EncodeSettings {
    pub key: Option<Key>,
    pub compress: bool,
    pub chunk_size: usize,
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

impl Ingest {
    pub fn start(
        core: Arc<Core>,
        settings: EncodeSettings,
        workers: usize,
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
        let appender = std::thread::Builder::new()
            .name("dtu-append".into())
            .spawn(move || {
                if let Err(e) = append_loop(&app_core, rx) {
                    tracing::error!("nvbuf append failed, the primary stops accepting writes: {e}");
                    app_core.fail(format!("nvbuf: {e}"));
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
    ) -> Result<(), String> {
        let plan = ChunkPlan::new(offset, data.len(), self.settings.chunk_size);
        let count = plan.count();
        for span in plan.spans() {
            self.encode
                .submit(EncodeJob {
                    seq,
                    epoch,
                    index: span.index,
                    count,
                    offset: span.offset,
                    data: data.slice(span.range),
                })
                .map_err(|_| "the encode workers have stopped".to_string())?;
        }
        Ok(())
    }

    /// Queues a ready record (flush, trim, checkpoint).
    pub fn submit_record(&self, rec: Record) -> Result<(), String> {
        self.records
            .send(rec)
            .map_err(|_| "the appender has stopped".to_string())
    }

    /// Waits for the appender to finish (after shutdown was flagged).
    pub fn join(&mut self) {
        if let Some(t) = self.appender.take() {
            let _ = t.join();
        }
    }
}

fn encode_one(s: &EncodeSettings, job: EncodeJob) -> Record {
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
    }
}

/// Appends records in order, flushes each batch once, reports `buffered`.
fn append_loop(core: &Core, rx: Receiver<Record>) -> Result<(), NvbufError> {
    let nvbuf = &core.nvbuf;
    let mut waiting: BTreeMap<(Seq, u32), Record> = BTreeMap::new();
    let mut next = (nvbuf.next_seq(), 0u32);
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(rec) => {
                waiting.insert((rec.hdr.seq, rec.hdr.chunk_index), rec);
            }
            Err(RecvTimeoutError::Timeout) => {
                if core.is_shutdown() {
                    return Ok(());
                }
                // Idle: let the superblock vouch for what is durable.
                nvbuf.checkpoint_if_behind()?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        // Everything else already queued joins this batch.
        while let Ok(rec) = rx.try_recv() {
            waiting.insert((rec.hdr.seq, rec.hdr.chunk_index), rec);
        }
        let mut lsn = None;
        let mut complete = None;
        while let Some(rec) = waiting.remove(&next) {
            lsn = Some(append_waiting_for_space(core, &rec)?);
            next = if rec.hdr.chunk_index + 1 == rec.hdr.chunk_count {
                complete = Some(rec.hdr.seq);
                (rec.hdr.seq + 1, 0)
            } else {
                (rec.hdr.seq, rec.hdr.chunk_index + 1)
            };
        }
        if let Some(lsn) = lsn {
            nvbuf.sync_to(lsn)?;
        }
        if let Some(seq) = complete {
            core.event(|s, now| s.on_buffered(seq, now));
        }
    }
}

/// Appends one record, waiting for space as long as the primary runs: a
/// full nvbuf is backpressure, never a dropped write.
fn append_waiting_for_space(core: &Core, rec: &Record) -> Result<u64, NvbufError> {
    loop {
        let deadline = Instant::now() + Duration::from_millis(500);
        match core.nvbuf.append(&rec.hdr, &rec.frame, Some(deadline)) {
            Err(NvbufError::Full { .. }) if !core.is_shutdown() => continue,
            other => return other,
        }
    }
}
