//! The primary as the mirror device of the host workload model
//! (`dtu_sim::host`): the model's writes become real `Primary::write`s, its
//! dirty-cache reports become `report_dirty`, and its acknowledgements are
//! the primary's answers. This is how `dtu demo` and the burst benchmarks
//! reproduce the patent's argument with the real pipeline.

use std::sync::Arc;

use bytes::Bytes;
use dtu_sim::host::MirrorSink;

use super::Primary;

/// A `Primary` shared with the host model.
pub struct HostSink(pub Arc<Primary>);

impl MirrorSink for HostSink {
    fn start_write(
        &self,
        offset: u64,
        data: Vec<u8>,
        done: Box<dyn FnOnce(Result<(), String>) + Send>,
    ) {
        // Blocking here is the host stalling on a full pipeline, as it should.
        match self.0.write(offset, Bytes::from(data)) {
            Ok(pending) => {
                self.0.runtime().spawn(async move {
                    done(pending.await.map(|_| ()).map_err(|e| e.to_string()));
                });
            }
            Err(e) => done(Err(e.to_string())),
        }
    }

    fn report_dirty(&self, pct: f64) {
        self.0.report_dirty(pct);
    }
}
