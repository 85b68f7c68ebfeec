//! The async runtime a DTU's network tasks run on, the same for both roles:
//! built by the DTU itself (two I/O threads) or lent by an embedder, and
//! wound down the same way at shutdown whichever it is.

use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::task::JoinHandle;

/// A runtime of the DTU's own, with two I/O threads named `name`.
pub(crate) fn own(name: &str) -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(name)
        .enable_all()
        .build()
}

/// Lets `tasks` finish (each within 2 s), then closes `endpoint` and waits
/// briefly for the peer to hear it. Blocks when it can: on the DTU's own
/// runtime, or on a lent one from outside it; from inside a lent runtime it
/// can only hand the work to that runtime.
pub(crate) fn stop_tasks(
    owned: Option<&Runtime>,
    handle: &Handle,
    tasks: Vec<JoinHandle<()>>,
    endpoint: quinn::Endpoint,
    reason: &'static [u8],
) {
    let wait = async move {
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        endpoint.close(0u32.into(), reason);
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    };
    match owned {
        Some(rt) => rt.block_on(wait),
        None if Handle::try_current().is_err() => handle.block_on(wait),
        None => {
            handle.spawn(wait);
        }
    }
}
