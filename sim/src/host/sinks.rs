//! [`RateSink`]: a mirror device that acknowledges writes in order at a
//! given rate, each after a fixed latency (an ideal device at the end of a
//! link of that rate and round trip). It stands in for the DTU's `Primary`
//! when the host model itself is under test or when a plot should show the
//! cache against a plain line rate. It runs its own timer thread.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::MirrorSink;
use crate::link::DuplexConfig;

type Done = Box<dyn FnOnce(Result<(), String>) + Send>;

struct Pending {
    due: Instant,
    seq: u64,
    done: Done,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.due, self.seq) == (o.due, o.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(o.due, o.seq))
    }
}

struct State {
    busy_until: Option<Instant>,
    seq: u64,
    heap: BinaryHeap<Reverse<Pending>>,
    stop: bool,
    dirty_reports: Vec<f64>,
    bytes: u64,
}

struct Inner {
    rate_bps: u64,
    latency: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// Acknowledges each write once its bytes have passed at `rate_bps` (FIFO)
/// plus `latency`. `rate_bps` 0 means no rate limit.
pub struct RateSink {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

impl RateSink {
    pub fn new(rate_bps: u64, latency: Duration) -> Self {
        let inner = Arc::new(Inner {
            rate_bps,
            latency,
            state: Mutex::new(State {
                busy_until: None,
                seq: 0,
                heap: BinaryHeap::new(),
                stop: false,
                dirty_reports: Vec::new(),
                bytes: 0,
            }),
            cv: Condvar::new(),
        });
        let i2 = inner.clone();
        let thread = std::thread::Builder::new()
            .name("rate-sink".into())
            .spawn(move || run(i2))
            .expect("spawning the sink thread");
        Self {
            inner,
            thread: Some(thread),
        }
    }

    /// A device behind the up direction's rate, acknowledging after one
    /// round trip of propagation.
    pub fn from_link(link: &DuplexConfig) -> Self {
        Self::new(link.up.rate_bps, link.rtt())
    }

    /// The dirty percentages the host reported, in order.
    pub fn dirty_reports(&self) -> Vec<f64> {
        self.inner
            .state
            .lock()
            .map(|s| s.dirty_reports.clone())
            .unwrap_or_default()
    }

    /// Bytes accepted so far.
    pub fn bytes(&self) -> u64 {
        self.inner.state.lock().map(|s| s.bytes).unwrap_or(0)
    }
}

fn run(inner: Arc<Inner>) {
    let mut st = match inner.state.lock() {
        Ok(s) => s,
        Err(_) => return,
    };
    loop {
        let now = Instant::now();
        let mut due = Vec::new();
        while st.heap.peek().is_some_and(|Reverse(p)| p.due <= now) {
            due.push(st.heap.pop().expect("peeked").0.done);
        }
        if !due.is_empty() {
            // Call back without the lock: a callback may start the next write.
            drop(st);
            for d in due {
                d(Ok(()));
            }
            st = match inner.state.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            continue;
        }
        if st.stop {
            let rest: Vec<Done> = st.heap.drain().map(|Reverse(p)| p.done).collect();
            drop(st);
            for d in rest {
                d(Err("the sink was stopped".into()));
            }
            return;
        }
        let wait = st
            .heap
            .peek()
            .map(|Reverse(p)| p.due.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(1));
        st = match inner.cv.wait_timeout(st, wait) {
            Ok((s, _)) => s,
            Err(_) => return,
        };
    }
}

impl MirrorSink for RateSink {
    fn start_write(&self, _offset: u64, data: Vec<u8>, done: Done) {
        let now = Instant::now();
        let Ok(mut st) = self.inner.state.lock() else {
            done(Err("the sink is broken".into()));
            return;
        };
        let start = st.busy_until.map_or(now, |b| b.max(now));
        let svc = if self.inner.rate_bps == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(data.len() as f64 * 8.0 / self.inner.rate_bps as f64)
        };
        st.busy_until = Some(start + svc);
        st.seq += 1;
        st.bytes += data.len() as u64;
        let p = Pending {
            due: start + svc + self.inner.latency,
            seq: st.seq,
            done,
        };
        st.heap.push(Reverse(p));
        drop(st);
        self.inner.cv.notify_one();
    }

    fn report_dirty(&self, pct: f64) {
        if let Ok(mut s) = self.inner.state.lock() {
            s.dirty_reports.push(pct);
        }
    }
}

impl Drop for RateSink {
    fn drop(&mut self) {
        if let Ok(mut s) = self.inner.state.lock() {
            s.stop = true;
        }
        self.inner.cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
