//! The few system calls the relay needs that std does not offer: `ppoll`
//! with a nanosecond timeout (epoll and `poll` only take milliseconds, too
//! coarse to release packets on time), socket buffer sizes (large ones, so a
//! descheduled relay thread does not lose packets in the kernel), and the
//! thread's timer slack (so sleeps end when asked, not up to 50 µs later).

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

pub use libc::{POLLIN, POLLOUT};

/// One descriptor to wait on.
pub type PollFd = libc::pollfd;

pub fn pollfd(fd: RawFd, events: i16) -> PollFd {
    PollFd {
        fd,
        events,
        revents: 0,
    }
}

/// Waits until a descriptor is ready or `timeout` passes (`None`: forever).
/// Returns the number of ready descriptors; an interrupted wait returns 0.
pub fn poll(fds: &mut [PollFd], timeout: Option<Duration>) -> io::Result<usize> {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the
    // whole call and its length is passed with it; `ts_ptr` is null or
    // points to `ts`, which outlives the call; a null sigmask keeps the
    // thread's signal mask.
    let n = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

fn setsockopt_int(fd: RawFd, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its exact size is passed; the
    // kernel only reads it. An invalid fd yields an error, not UB.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for `bytes` of kernel send and receive buffer. Tries the
/// privileged `*BUFFORCE` options first (they exceed `rmem_max`), then the
/// ordinary ones; a refusal is not an error, the kernel keeps what it can.
pub fn set_socket_buffers(fd: RawFd, bytes: usize) {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    if setsockopt_int(fd, libc::SO_RCVBUFFORCE, v).is_err() {
        let _ = setsockopt_int(fd, libc::SO_RCVBUF, v);
    }
    if setsockopt_int(fd, libc::SO_SNDBUFFORCE, v).is_err() {
        let _ = setsockopt_int(fd, libc::SO_SNDBUF, v);
    }
}

/// Sets the calling thread's timer slack (Linux default 50 µs).
pub fn set_timer_slack(ns: u64) {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long argument and touches
    // only the calling thread's scheduling attributes.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0);
    }
}
