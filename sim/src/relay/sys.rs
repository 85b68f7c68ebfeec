//! The few system calls the relay needs that std does not offer, through
//! rustix (safe wrappers, no `unsafe` here): `ppoll` with a nanosecond
//! timeout (epoll and `poll` only take milliseconds, too coarse to release
//! packets on time), socket buffer sizes (large ones, so a descheduled relay
//! thread does not lose packets in the kernel), and the thread's timer slack
//! (so sleeps end when asked, not up to 50 µs later).

use std::io;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::time::Duration;

pub use rustix::event::{PollFd, PollFlags};

/// Waits until a descriptor is ready or `timeout` passes (`None`: forever).
/// Returns the number of ready descriptors; an interrupted wait returns 0.
pub fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    // A timeout beyond what a timespec holds is as good as forever.
    let ts = timeout.and_then(|t| rustix::event::Timespec::try_from(t).ok());
    match rustix::event::poll(fds, ts.as_ref()) {
        Ok(n) => Ok(n),
        Err(rustix::io::Errno::INTR) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// Asks for `bytes` of kernel send and receive buffer. Tries the
/// privileged `*BUFFORCE` options first (they exceed `rmem_max`), then the
/// ordinary ones; a refusal is not an error, the kernel keeps what it can.
pub fn set_socket_buffers(fd: impl AsFd, bytes: usize) {
    use rustix::net::sockopt;
    let v = bytes.min(i32::MAX as usize);
    if sockopt::set_socket_recv_buffer_size_force(&fd, v).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(&fd, v);
    }
    if sockopt::set_socket_send_buffer_size_force(&fd, v).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(&fd, v);
    }
}

/// Sets the calling thread's timer slack (Linux default 50 µs); 0 keeps
/// the default. A refusal only costs timing precision.
pub fn set_timer_slack(ns: u64) {
    let _ = rustix::thread::set_current_timer_slack(NonZeroU64::new(ns));
}
