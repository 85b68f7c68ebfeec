//! Worker pools: N threads draining one bounded crossbeam channel, the shape
//! of both the primary's encode stage and the remote's decode stage.
//!
//! The bound is the backpressure: when the workers fall behind, `submit`
//! blocks the producer instead of letting a queue grow without limit. The
//! pool stops when every sender is dropped and joins its threads on drop.

use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, SendError, Sender, TrySendError};

/// A fixed set of threads running `work` on each submitted job.
pub struct WorkerPool<J: Send + 'static> {
    tx: Option<Sender<J>>,
    threads: Vec<JoinHandle<()>>,
}

impl<J: Send + 'static> WorkerPool<J> {
    /// Starts `n` threads named `name-i`; at most `queue` jobs wait.
    pub fn new<F>(name: &str, n: usize, queue: usize, work: F) -> std::io::Result<Self>
    where
        F: Fn(J) + Send + Sync + Clone + 'static,
    {
        let (tx, rx): (Sender<J>, Receiver<J>) = bounded(queue);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rx = rx.clone();
            let work = work.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        for job in rx {
                            work(job);
                        }
                    })?,
            );
        }
        Ok(WorkerPool {
            tx: Some(tx),
            threads,
        })
    }

    /// A handle producers can clone; blocks when the queue is full.
    pub fn sender(&self) -> Sender<J> {
        self.tx.clone().expect("pool is running")
    }

    /// Queues a job, waiting while the queue is full.
    pub fn submit(&self, job: J) -> Result<(), SendError<J>> {
        self.tx.as_ref().expect("pool is running").send(job)
    }

    /// Queues a job if there is room.
    pub fn try_submit(&self, job: J) -> Result<(), TrySendError<J>> {
        self.tx.as_ref().expect("pool is running").try_send(job)
    }

    pub fn threads(&self) -> usize {
        self.threads.len()
    }
}

impl<J: Send + 'static> Drop for WorkerPool<J> {
    fn drop(&mut self) {
        self.tx.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_job_runs_once_and_drop_joins() {
        let sum = Arc::new(AtomicU64::new(0));
        let s = sum.clone();
        let pool = WorkerPool::new("t", 3, 2, move |j: u64| {
            s.fetch_add(j, Ordering::Relaxed);
        })
        .unwrap();
        for j in 1..=100 {
            pool.submit(j).unwrap();
        }
        drop(pool);
        assert_eq!(sum.load(Ordering::Relaxed), 5050);
    }
}
