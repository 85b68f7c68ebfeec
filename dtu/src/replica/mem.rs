//! Replicas and state stores in memory, with what a crash would keep: the
//! deterministic simulator's storage, and a replica an embedder can use to
//! try dtu without a disk. [`MemReplica`] holds a working copy that writes
//! change and a durable copy that only `sync` updates, so the simulator can
//! take what survives a process kill (the working copy: the page cache
//! stays) or a machine crash (the durable copy). [`MemStateStore`] does the
//! same for the replica's state file.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Replica, ReplicaIdentity, Span, StateStore};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug)]
struct Copies {
    work: Vec<u8>,
    durable: Vec<u8>,
}

/// A volume in memory. Cloning shares the same bytes.
#[derive(Debug, Clone)]
pub struct MemReplica {
    copies: Arc<Mutex<Copies>>,
    size: u64,
    /// Stands in for the inode of a file: replacing the replica changes it.
    serial: u64,
}

impl MemReplica {
    /// A zeroed volume of `size` bytes.
    pub fn new(size: usize) -> MemReplica {
        MemReplica::from_image(vec![0; size], 1)
    }

    /// A volume whose working and durable bytes are `image` (e.g. a crash
    /// image); `serial` identifies this storage like an inode.
    pub fn from_image(image: Vec<u8>, serial: u64) -> MemReplica {
        MemReplica {
            size: image.len() as u64,
            copies: Arc::new(Mutex::new(Copies {
                durable: image.clone(),
                work: image,
            })),
            serial,
        }
    }

    /// What a process kill leaves: every write, synced or not.
    pub fn working_image(&self) -> Vec<u8> {
        lock(&self.copies).work.clone()
    }

    /// What a machine crash leaves: only what was synced.
    pub fn durable_image(&self) -> Vec<u8> {
        lock(&self.copies).durable.clone()
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<(usize, usize)> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok((offset as usize, end as usize)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} is outside the {}-byte volume",
                    self.size
                ),
            )),
        }
    }
}

impl Replica for MemReplica {
    fn size(&self) -> u64 {
        self.size
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let (a, b) = self.check(offset, data.len() as u64)?;
        lock(&self.copies).work[a..b].copy_from_slice(data);
        Ok(())
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let (a, b) = self.check(offset, buf.len() as u64)?;
        buf.copy_from_slice(&lock(&self.copies).work[a..b]);
        Ok(())
    }
    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        let (a, b) = self.check(offset, len)?;
        lock(&self.copies).work[a..b].fill(0);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut c = lock(&self.copies);
        let Copies { work, durable } = &mut *c;
        durable.copy_from_slice(work);
        Ok(())
    }
    fn identity(&self) -> ReplicaIdentity {
        ReplicaIdentity {
            size: self.size,
            device: 1,
            inode: self.serial,
        }
    }
    fn spans(&self, offset: u64, len: u64) -> io::Result<Vec<Span>> {
        self.check(offset, len)?;
        Ok(vec![Span {
            offset,
            len,
            hole: false,
        }])
    }
}

/// A replica state file in memory, with the same two copies.
#[derive(Debug, Clone, Default)]
pub struct MemStateStore {
    copies: Arc<Mutex<(Vec<u8>, Vec<u8>)>>,
}

impl MemStateStore {
    /// A store holding `image` (working and durable).
    pub fn from_image(image: Vec<u8>) -> MemStateStore {
        MemStateStore {
            copies: Arc::new(Mutex::new((image.clone(), image))),
        }
    }
    /// What a process kill leaves.
    pub fn working_image(&self) -> Vec<u8> {
        lock(&self.copies).0.clone()
    }
    /// What a machine crash leaves.
    pub fn durable_image(&self) -> Vec<u8> {
        lock(&self.copies).1.clone()
    }
}

impl StateStore for MemStateStore {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        let c = lock(&self.copies);
        let off = (off as usize).min(c.0.len());
        let n = buf.len().min(c.0.len() - off);
        buf[..n].copy_from_slice(&c.0[off..off + n]);
        Ok(n)
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        let mut c = lock(&self.copies);
        let end = off as usize + data.len();
        if c.0.len() < end {
            c.0.resize(end, 0);
        }
        c.0[off as usize..end].copy_from_slice(data);
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        let mut c = lock(&self.copies);
        c.1 = c.0.clone();
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(lock(&self.copies).0.len() as u64)
    }
}
