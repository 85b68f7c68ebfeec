//! A small blocking NBD client (fixed newstyle, NBD_OPT_GO, simple replies)
//! for tests that must know exactly which writes the server acknowledged,
//! which the command-line clients do not report.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;

/// A connected client.
pub struct NbdClient {
    s: UnixStream,
    pub size: u64,
    cookie: u64,
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

impl NbdClient {
    /// Connects to `socket` and opens export `name`.
    pub fn connect(socket: &Path, name: &str, timeout: Duration) -> io::Result<NbdClient> {
        let mut s = UnixStream::connect(socket)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let mut b8 = [0u8; 8];
        s.read_exact(&mut b8)?;
        if u64::from_be_bytes(b8) != NBDMAGIC {
            return Err(bad("not an NBD server"));
        }
        s.read_exact(&mut b8)?;
        if u64::from_be_bytes(b8) != IHAVEOPT {
            return Err(bad("server is not fixed newstyle"));
        }
        let mut b2 = [0u8; 2];
        s.read_exact(&mut b2)?;
        // FIXED_NEWSTYLE | NO_ZEROES
        s.write_all(&3u32.to_be_bytes())?;
        let mut data = Vec::new();
        data.extend_from_slice(&(name.len() as u32).to_be_bytes());
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = Vec::new();
        opt.extend_from_slice(&IHAVEOPT.to_be_bytes());
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        s.write_all(&opt)?;
        let mut size = None;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            if u64::from_be_bytes(h[0..8].try_into().unwrap()) != REPLY_MAGIC {
                return Err(bad("bad option reply magic"));
            }
            let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let len = u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize;
            if len > 1 << 16 {
                return Err(bad("option reply too long"));
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body)?;
            match kind {
                REP_ACK => break,
                REP_INFO if body.len() >= 12 && body[0..2] == [0, 0] => {
                    size = Some(u64::from_be_bytes(body[2..10].try_into().unwrap()));
                }
                REP_INFO => {}
                k if k & 0x8000_0000 != 0 => {
                    return Err(bad(format!(
                        "server refused the export: error {k:#x} {}",
                        String::from_utf8_lossy(&body)
                    )))
                }
                _ => {}
            }
        }
        Ok(NbdClient {
            s,
            size: size.ok_or_else(|| bad("no export size"))?,
            cookie: 0,
        })
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> io::Result<u32> {
        self.cookie += 1;
        let mut r = Vec::with_capacity(28 + payload.len());
        r.extend_from_slice(&REQUEST_MAGIC.to_be_bytes());
        r.extend_from_slice(&0u16.to_be_bytes());
        r.extend_from_slice(&cmd.to_be_bytes());
        r.extend_from_slice(&self.cookie.to_be_bytes());
        r.extend_from_slice(&offset.to_be_bytes());
        r.extend_from_slice(&len.to_be_bytes());
        r.extend_from_slice(payload);
        self.s.write_all(&r)?;
        if cmd == CMD_DISC {
            return Ok(0);
        }
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h)?;
        if u32::from_be_bytes(h[0..4].try_into().unwrap()) != SIMPLE_REPLY {
            return Err(bad("bad reply magic"));
        }
        if u64::from_be_bytes(h[8..16].try_into().unwrap()) != self.cookie {
            return Err(bad("reply for another request"));
        }
        Ok(u32::from_be_bytes(h[4..8].try_into().unwrap()))
    }

    /// Writes and waits for the server's answer; `Ok(())` means acknowledged.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        match self.request(CMD_WRITE, offset, data.len() as u32, data)? {
            0 => Ok(()),
            e => Err(io::Error::other(format!("write error {e}"))),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        match self.request(CMD_FLUSH, 0, 0, &[])? {
            0 => Ok(()),
            e => Err(io::Error::other(format!("flush error {e}"))),
        }
    }

    pub fn read(&mut self, offset: u64, len: u32) -> io::Result<Vec<u8>> {
        match self.request(CMD_READ, offset, len, &[])? {
            0 => {
                let mut buf = vec![0u8; len as usize];
                self.s.read_exact(&mut buf)?;
                Ok(buf)
            }
            e => Err(io::Error::other(format!("read error {e}"))),
        }
    }

    pub fn disconnect(mut self) {
        let _ = self.request(CMD_DISC, 0, 0, &[]);
    }
}

/// Size of a verifiable block.
pub const BLOCK: usize = 4096;
const BLOCK_MAGIC: u64 = 0x6474_752d_626c_6b21; // "dtu-blk!"

/// A block that says which write put it there: magic, write id, block
/// number, a fill derived from the id, and a crc32 over all of it.
pub fn block(write_id: u64, block_no: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[0..8].copy_from_slice(&BLOCK_MAGIC.to_be_bytes());
    b[8..16].copy_from_slice(&write_id.to_be_bytes());
    b[16..24].copy_from_slice(&block_no.to_be_bytes());
    let mut x = write_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in b[24..BLOCK - 4].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    let crc = crc32fast::hash(&b[..BLOCK - 4]);
    b[BLOCK - 4..].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Which write a block holds: `Ok(0)` for a never-written (zero) block,
/// `Err` for anything that is neither zeros nor an intact block.
pub fn parse_block(b: &[u8], block_no: u64) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    if b.len() != BLOCK || u64::from_be_bytes(b[0..8].try_into().unwrap()) != BLOCK_MAGIC {
        return Err(format!("block {block_no} holds foreign data"));
    }
    let crc = u32::from_be_bytes(b[BLOCK - 4..].try_into().unwrap());
    if crc != crc32fast::hash(&b[..BLOCK - 4]) {
        return Err(format!(
            "block {block_no} is torn or damaged (crc mismatch)"
        ));
    }
    let at = u64::from_be_bytes(b[16..24].try_into().unwrap());
    if at != block_no {
        return Err(format!("block {block_no} holds the content of block {at}"));
    }
    Ok(u64::from_be_bytes(b[8..16].try_into().unwrap()))
}
