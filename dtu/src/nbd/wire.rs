//! NBD wire format: the protocol's constants, the parsing of what a client
//! sends (option headers, NBD_OPT_INFO/GO payloads, request headers) and the
//! encoding of what the server sends, plus [`classify`], the decision of what
//! to do with a request given the export's size and mode.
//!
//! Everything here is pure and never panics on any input, so it can be
//! property-tested and fuzzed: a request's payload length is trusted only
//! after [`classify`] has bounded it.

use std::io;

// Magic numbers.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
pub const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
pub const FLAG_NO_ZEROES: u16 = 1 << 1;
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
pub const FLAG_C_NO_ZEROES: u32 = 1 << 1;

// Transmission flags.
pub const FLAG_HAS_FLAGS: u16 = 1 << 0;
pub const FLAG_READ_ONLY: u16 = 1 << 1;
pub const FLAG_SEND_FLUSH: u16 = 1 << 2;
pub const FLAG_SEND_FUA: u16 = 1 << 3;
pub const FLAG_ROTATIONAL: u16 = 1 << 4;
pub const FLAG_SEND_TRIM: u16 = 1 << 5;
pub const FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const FLAG_SEND_DF: u16 = 1 << 7;
pub const FLAG_CAN_MULTI_CONN: u16 = 1 << 8;
pub const FLAG_SEND_CACHE: u16 = 1 << 10;
pub const FLAG_SEND_FAST_ZERO: u16 = 1 << 11;

// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
pub const OPT_ABORT: u32 = 2;
pub const OPT_LIST: u32 = 3;
pub const OPT_STARTTLS: u32 = 5;
pub const OPT_INFO: u32 = 6;
pub const OPT_GO: u32 = 7;
pub const OPT_STRUCTURED_REPLY: u32 = 8;
pub const OPT_LIST_META_CONTEXT: u32 = 9;
pub const OPT_SET_META_CONTEXT: u32 = 10;
pub const OPT_EXTENDED_HEADERS: u32 = 11;

// Option replies.
pub const REP_ACK: u32 = 1;
pub const REP_SERVER: u32 = 2;
pub const REP_INFO: u32 = 3;
pub const REP_META_CONTEXT: u32 = 4;
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
pub const REP_ERR_PLATFORM: u32 = (1 << 31) + 4;
pub const REP_ERR_TLS_REQD: u32 = (1 << 31) + 5;
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
pub const REP_ERR_SHUTDOWN: u32 = (1 << 31) + 7;
pub const REP_ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

// NBD_REP_INFO types.
pub const INFO_EXPORT: u16 = 0;
pub const INFO_NAME: u16 = 1;
pub const INFO_DESCRIPTION: u16 = 2;
pub const INFO_BLOCK_SIZE: u16 = 3;

// Commands.
pub const CMD_READ: u16 = 0;
pub const CMD_WRITE: u16 = 1;
pub const CMD_DISC: u16 = 2;
pub const CMD_FLUSH: u16 = 3;
pub const CMD_TRIM: u16 = 4;
pub const CMD_CACHE: u16 = 5;
pub const CMD_WRITE_ZEROES: u16 = 6;
pub const CMD_BLOCK_STATUS: u16 = 7;

// Structured reply chunks: the flag and the types.
pub const REPLY_FLAG_DONE: u16 = 1 << 0;
pub const REPLY_TYPE_NONE: u16 = 0;
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
pub const REPLY_TYPE_OFFSET_HOLE: u16 = 2;
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;

// The base:allocation metadata context: its name, the id this server gives
// it, and its status flags.
pub const META_BASE_ALLOCATION: &str = "base:allocation";
pub const BASE_ALLOCATION_ID: u32 = 1;
pub const STATE_HOLE: u32 = 1 << 0;
pub const STATE_ZERO: u32 = 1 << 1;

// Command flags.
pub const CMD_FLAG_FUA: u16 = 1 << 0;
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;
pub const CMD_FLAG_DF: u16 = 1 << 2;
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;
pub const CMD_FLAG_FAST_ZERO: u16 = 1 << 4;

// Error values of a simple reply.
pub const EPERM: u32 = 1;
pub const EIO: u32 = 5;
pub const ENOMEM: u32 = 12;
pub const EINVAL: u32 = 22;
pub const ENOSPC: u32 = 28;
pub const EOVERFLOW: u32 = 75;
pub const ENOTSUP: u32 = 95;
pub const ESHUTDOWN: u32 = 108;

/// The largest read or write payload served, advertised as the maximum
/// block size. proto.md: lengths below 2^25 SHOULD NOT be deemed a denial of
/// service, so this is exactly that.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// The minimum block size advertised: exports take byte-granular requests.
pub const MIN_BLOCK_SIZE: u32 = 1;
/// The largest option payload the server reads and acts on. Every option it
/// supports fits: an export name is at most 4096 bytes by the spec and ours
/// are far shorter. Longer payloads are refused with `NBD_REP_ERR_TOO_BIG`.
pub const MAX_OPTION_LEN: u32 = 4096;
/// Option payloads longer than this are not even read: the connection is
/// dropped, as the spec allows for a client behaving as a denial of service.
pub const OPTION_DISCARD_LIMIT: u32 = 64 << 10;

pub const REQUEST_HEADER_LEN: usize = 28;
pub const OPTION_HEADER_LEN: usize = 16;
pub const SIMPLE_REPLY_HEADER_LEN: usize = 16;
pub const STRUCTURED_REPLY_HEADER_LEN: usize = 20;
/// Extents answered to one NBD_CMD_BLOCK_STATUS at most (the spec lets a
/// server answer a prefix of the range): bounds the reply to 32 KiB
/// whatever the fragmentation of the file behind the export.
pub const MAX_EXTENTS: usize = 4096;
/// Error messages in structured error chunks are cut to this (the spec's
/// limit for strings).
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Zeros closing an NBD_OPT_EXPORT_NAME reply unless NO_ZEROES was agreed.
pub const EXPORT_NAME_PADDING: usize = 124;

/// A malformed message that ends the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("option magic is {0:#x}, expected IHAVEOPT")]
    OptionMagic(u64),
    #[error("request magic is {0:#x}, expected {REQUEST_MAGIC:#x}")]
    RequestMagic(u32),
}

/// The fixed part of an option the client sends during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn parse_option_header(b: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, WireError> {
    let magic = u64::from_be_bytes(b[0..8].try_into().expect("8 bytes"));
    if magic != IHAVEOPT {
        return Err(WireError::OptionMagic(magic));
    }
    Ok(OptionHeader {
        option: u32::from_be_bytes(b[8..12].try_into().expect("4 bytes")),
        len: u32::from_be_bytes(b[12..16].try_into().expect("4 bytes")),
    })
}

/// The payload of NBD_OPT_INFO and NBD_OPT_GO, borrowed from the option's
/// bytes (parsing allocates nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoRequest<'a> {
    pub name: &'a [u8],
    /// The raw list of 16-bit information requests.
    requests: &'a [u8],
}

impl<'a> InfoRequest<'a> {
    /// The information types asked for, in the client's order.
    pub fn requests(&self) -> impl Iterator<Item = u16> + 'a {
        self.requests
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
    }

    pub fn asks_for(&self, info: u16) -> bool {
        self.requests().any(|r| r == info)
    }
}

/// Parses an NBD_OPT_INFO / NBD_OPT_GO payload: 32-bit name length, name,
/// 16-bit count, that many 16-bit requests. `None` when the lengths do not
/// add up to exactly the payload (the server answers NBD_REP_ERR_INVALID).
pub fn parse_info_request(p: &[u8]) -> Option<InfoRequest<'_>> {
    let name_len = u32::from_be_bytes(p.get(0..4)?.try_into().ok()?) as usize;
    // proto.md: the name length MUST be no larger than the option length - 6.
    if name_len > p.len().checked_sub(6)? {
        return None;
    }
    let name = &p[4..4 + name_len];
    let rest = &p[4 + name_len..];
    let count = u16::from_be_bytes([rest[0], rest[1]]) as usize;
    let requests = &rest[2..];
    if requests.len() != count * 2 {
        return None;
    }
    Some(InfoRequest { name, requests })
}

/// The payload of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT:
/// an export name and the queries, borrowed from the option's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaRequest<'a> {
    pub name: &'a [u8],
    pub queries: Vec<&'a [u8]>,
}

/// Parses a meta context payload: 32-bit name length, name, 32-bit query
/// count, then each query as a 32-bit length and its bytes. `None` when the
/// lengths do not add up to exactly the payload. Each query takes at least 4
/// bytes, so the count is bounded by the payload's length.
pub fn parse_meta_request(p: &[u8]) -> Option<MetaRequest<'_>> {
    let (name, rest) = take_string(p)?;
    let count = u32::from_be_bytes(rest.get(0..4)?.try_into().ok()?) as usize;
    let mut rest = &rest[4..];
    if count > rest.len() / 4 {
        return None;
    }
    let mut queries = Vec::with_capacity(count);
    for _ in 0..count {
        let (q, r) = take_string(rest)?;
        queries.push(q);
        rest = r;
    }
    rest.is_empty().then_some(MetaRequest { name, queries })
}

/// A 32-bit length and that many bytes, and what follows.
fn take_string(p: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = u32::from_be_bytes(p.get(0..4)?.try_into().ok()?) as usize;
    let rest = &p[4..];
    (len <= rest.len()).then(|| rest.split_at(len))
}

/// Whether a meta context query selects `base:allocation`. LIST also
/// accepts the bare namespace `base:`, which asks for every context in it.
pub fn query_selects_base_allocation(query: &[u8], listing: bool) -> bool {
    query == META_BASE_ALLOCATION.as_bytes() || (listing && query == b"base:")
}

/// Appends one fixed newstyle option reply.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply: u32, data: &[&[u8]]) {
    let len: usize = data.iter().map(|d| d.len()).sum();
    out.extend_from_slice(&OPT_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for d in data {
        out.extend_from_slice(d);
    }
}

/// The NBD_INFO_BLOCK_SIZE triple for an export preferring `preferred`:
/// proto.md wants the preferred size a power of two of at least 512 and no
/// larger than the maximum, so odd values are rounded up into that range.
pub fn block_size_constraints(preferred: u32) -> (u32, u32, u32) {
    let p = preferred
        .clamp(512, MAX_REQUEST_LEN)
        .checked_next_power_of_two()
        .unwrap_or(MAX_REQUEST_LEN)
        .min(MAX_REQUEST_LEN);
    (MIN_BLOCK_SIZE, p, MAX_REQUEST_LEN)
}

/// What the handshake agreed, which shapes the transmission phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// NBD_OPT_STRUCTURED_REPLY was acknowledged.
    pub structured: bool,
    /// `base:allocation` was selected with NBD_OPT_SET_META_CONTEXT.
    pub base_allocation: bool,
}

/// The transmission flags for an export. DF only exists with structured
/// replies (proto.md: MUST be clear without them).
pub fn transmission_flags(read_only: bool, caps: Caps) -> u16 {
    let mut f = FLAG_HAS_FLAGS
        | FLAG_SEND_FLUSH
        | FLAG_SEND_FUA
        | FLAG_SEND_TRIM
        | FLAG_SEND_WRITE_ZEROES
        | FLAG_SEND_CACHE
        | FLAG_CAN_MULTI_CONN;
    if read_only {
        f |= FLAG_READ_ONLY;
    }
    if caps.structured {
        f |= FLAG_SEND_DF;
    }
    f
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    pub flags: u16,
    pub command: u16,
    pub handle: u64,
    pub offset: u64,
    pub len: u32,
}

pub fn parse_request_header(b: &[u8; REQUEST_HEADER_LEN]) -> Result<RequestHeader, WireError> {
    let magic = u32::from_be_bytes(b[0..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(WireError::RequestMagic(magic));
    }
    Ok(RequestHeader {
        flags: u16::from_be_bytes([b[4], b[5]]),
        command: u16::from_be_bytes([b[6], b[7]]),
        handle: u64::from_be_bytes(b[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(b[16..24].try_into().expect("8 bytes")),
        len: u32::from_be_bytes(b[24..28].try_into().expect("4 bytes")),
    })
}

pub fn encode_request_header(h: &RequestHeader) -> [u8; REQUEST_HEADER_LEN] {
    let mut b = [0u8; REQUEST_HEADER_LEN];
    b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&h.flags.to_be_bytes());
    b[6..8].copy_from_slice(&h.command.to_be_bytes());
    b[8..16].copy_from_slice(&h.handle.to_be_bytes());
    b[16..24].copy_from_slice(&h.offset.to_be_bytes());
    b[24..28].copy_from_slice(&h.len.to_be_bytes());
    b
}

pub fn encode_simple_reply(error: u32, handle: u64) -> [u8; SIMPLE_REPLY_HEADER_LEN] {
    let mut b = [0u8; SIMPLE_REPLY_HEADER_LEN];
    b[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    b[4..8].copy_from_slice(&error.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b
}

/// One structured reply chunk's header.
pub fn encode_structured_header(
    flags: u16,
    kind: u16,
    handle: u64,
    len: u32,
) -> [u8; STRUCTURED_REPLY_HEADER_LEN] {
    let mut b = [0u8; STRUCTURED_REPLY_HEADER_LEN];
    b[0..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    b[4..6].copy_from_slice(&flags.to_be_bytes());
    b[6..8].copy_from_slice(&kind.to_be_bytes());
    b[8..16].copy_from_slice(&handle.to_be_bytes());
    b[16..20].copy_from_slice(&len.to_be_bytes());
    b
}

/// The base:allocation status flags of a run: a hole reads as zeros.
pub fn allocation_flags(hole: bool) -> u32 {
    if hole {
        STATE_HOLE | STATE_ZERO
    } else {
        0
    }
}

/// The extent descriptors (length, flags) answering a block status request
/// for `offset..offset+len` from an export's runs: the runs are trusted
/// only as far as they continue each other from `offset` inside the range,
/// runs of one kind are merged, at most `max` (at least 1) are kept, and if
/// nothing usable remains the whole range is reported as data (always
/// true). The result is never empty and never runs past the range.
pub fn extents(
    offset: u64,
    len: u32,
    spans: &[crate::replica::Span],
    max: usize,
) -> Vec<(u32, u32)> {
    let end = offset + u64::from(len);
    let mut out: Vec<(u32, bool)> = Vec::new();
    let mut at = offset;
    for s in spans {
        if s.offset != at || s.len == 0 || at >= end {
            break;
        }
        let n = s.len.min(end - at) as u32;
        let full = out.len() >= max.max(1);
        match out.last_mut() {
            Some((l, hole)) if *hole == s.hole => *l += n,
            _ if full => break,
            _ => out.push((n, s.hole)),
        }
        at += u64::from(n);
    }
    if out.is_empty() {
        out.push((len, false));
    }
    out.into_iter()
        .map(|(l, hole)| (l, allocation_flags(hole)))
        .collect()
}

/// What the server does with one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Reply with `len` bytes read at `offset`; `df`: in one content chunk.
    Read {
        offset: u64,
        len: u32,
        df: bool,
    },
    /// Read the `len`-byte payload, write it at `offset`.
    Write {
        offset: u64,
        len: u32,
        fua: bool,
    },
    WriteZeroes {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Trim {
        offset: u64,
        len: u32,
        fua: bool,
    },
    Flush,
    /// NBD_CMD_CACHE: a hint to prefetch, answered once the export took it.
    Cache {
        offset: u64,
        len: u32,
    },
    /// NBD_CMD_BLOCK_STATUS for `base:allocation`; `one`: a single extent.
    BlockStatus {
        offset: u64,
        len: u32,
        one: bool,
    },
    /// NBD_CMD_DISC: finish what is in flight, then close.
    Disconnect,
    /// Reply `error` after reading and dropping `discard` payload bytes;
    /// the connection stays usable.
    Reject {
        error: u32,
        discard: u32,
    },
    /// Reply `error`, then close: the payload is too large to consume.
    RejectAndClose {
        error: u32,
    },
}

/// Decides what to do with a request on an export of `size` bytes, given
/// what the handshake agreed.
///
/// Error choices follow proto.md's "Error values": `EINVAL` for unknown
/// commands, flags not valid for the command, reads, trims, caches and
/// block status past the end, read, write and cache lengths above the
/// maximum block size (write-zeroes may be longer, see below), empty block
/// status requests and block status without a selected metadata context;
/// `ENOSPC` for writes and write-zeroes past the end; `EPERM` for writes,
/// trims and write-zeroes on a read-only export. The only payload is
/// NBD_CMD_WRITE's, so only a refused write needs `discard`.
pub fn classify(h: &RequestHeader, size: u64, read_only: bool, caps: Caps) -> Action {
    let in_range = h
        .offset
        .checked_add(u64::from(h.len))
        .is_some_and(|end| end <= size);
    // FUA is valid on every command once SEND_FUA is advertised (ignored
    // where nothing is written); other flags only where documented.
    let flags_ok = |allowed: u16| h.flags & !(allowed | CMD_FLAG_FUA) == 0;
    let fua = h.flags & CMD_FLAG_FUA != 0;
    let reject = |error| Action::Reject { error, discard: 0 };
    match h.command {
        CMD_READ => {
            // DF is advertised only with structured replies.
            let df_ok = if caps.structured { CMD_FLAG_DF } else { 0 };
            if !flags_ok(df_ok) || h.len > MAX_REQUEST_LEN || !in_range {
                reject(EINVAL)
            } else {
                Action::Read {
                    offset: h.offset,
                    len: h.len,
                    df: h.flags & CMD_FLAG_DF != 0,
                }
            }
        }
        CMD_WRITE => {
            let error = if h.len > MAX_REQUEST_LEN {
                return Action::RejectAndClose { error: EINVAL };
            } else if !flags_ok(0) {
                EINVAL
            } else if read_only {
                EPERM
            } else if !in_range {
                ENOSPC
            } else {
                return Action::Write {
                    offset: h.offset,
                    len: h.len,
                    fua,
                };
            };
            Action::Reject {
                error,
                discard: h.len,
            }
        }
        CMD_DISC => Action::Disconnect,
        CMD_FLUSH => {
            // Offset and length are reserved and MUST be zero.
            if !flags_ok(0) || h.offset != 0 || h.len != 0 {
                reject(EINVAL)
            } else {
                Action::Flush
            }
        }
        CMD_TRIM => {
            if !flags_ok(0) {
                reject(EINVAL)
            } else if read_only {
                reject(EPERM)
            } else if !in_range {
                reject(EINVAL)
            } else {
                Action::Trim {
                    offset: h.offset,
                    len: h.len,
                    fua,
                }
            }
        }
        CMD_CACHE => {
            if !flags_ok(0) || h.len > MAX_REQUEST_LEN || !in_range {
                reject(EINVAL)
            } else {
                Action::Cache {
                    offset: h.offset,
                    len: h.len,
                }
            }
        }
        CMD_BLOCK_STATUS => {
            // proto.md: SHOULD answer EINVAL when no context was selected.
            if !caps.base_allocation || !flags_ok(CMD_FLAG_REQ_ONE) || h.len == 0 || !in_range {
                reject(EINVAL)
            } else {
                Action::BlockStatus {
                    offset: h.offset,
                    len: h.len,
                    one: h.flags & CMD_FLAG_REQ_ONE != 0,
                }
            }
        }
        CMD_WRITE_ZEROES => {
            // FAST_ZERO is not advertised, so it is an invalid flag here.
            // No length limit: proto.md says SHOULD refuse lengths above the
            // maximum block size, but libnbd 1.14's nbdcopy sends zeroes
            // for whole holes (100 MiB and more) and fails on EINVAL; with
            // no payload the length costs no memory, and the server splits
            // it into maximum-sized export calls.
            if !flags_ok(CMD_FLAG_NO_HOLE) {
                reject(EINVAL)
            } else if read_only {
                reject(EPERM)
            } else if !in_range {
                reject(ENOSPC)
            } else {
                Action::WriteZeroes {
                    offset: h.offset,
                    len: h.len,
                    fua,
                }
            }
        }
        _ => reject(EINVAL),
    }
}

/// The NBD error value for an export's I/O error. proto.md restricts the
/// values to a small set, so errno is mapped onto it.
pub fn error_value(e: &io::Error) -> u32 {
    if let Some(code) = e.raw_os_error() {
        return match code {
            libc::EPERM | libc::EACCES | libc::EROFS => EPERM,
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => ENOSPC,
            libc::EINVAL => EINVAL,
            libc::ESHUTDOWN => ESHUTDOWN,
            _ => EIO,
        };
    }
    match e.kind() {
        io::ErrorKind::PermissionDenied => EPERM,
        io::ErrorKind::InvalidInput => EINVAL,
        _ => EIO,
    }
}

/// A readable name for an option, for logs.
pub fn option_name(option: u32) -> &'static str {
    match option {
        OPT_EXPORT_NAME => "NBD_OPT_EXPORT_NAME",
        OPT_ABORT => "NBD_OPT_ABORT",
        OPT_LIST => "NBD_OPT_LIST",
        4 => "NBD_OPT_PEEK_EXPORT",
        OPT_STARTTLS => "NBD_OPT_STARTTLS",
        OPT_INFO => "NBD_OPT_INFO",
        OPT_GO => "NBD_OPT_GO",
        OPT_STRUCTURED_REPLY => "NBD_OPT_STRUCTURED_REPLY",
        OPT_LIST_META_CONTEXT => "NBD_OPT_LIST_META_CONTEXT",
        OPT_SET_META_CONTEXT => "NBD_OPT_SET_META_CONTEXT",
        OPT_EXTENDED_HEADERS => "NBD_OPT_EXTENDED_HEADERS",
        _ => "unknown option",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(command: u16, flags: u16, offset: u64, len: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            handle: 7,
            offset,
            len,
        }
    }

    #[test]
    fn request_header_round_trips_and_checks_magic() {
        let h = req(CMD_WRITE, CMD_FLAG_FUA, 1 << 40, 4096);
        let b = encode_request_header(&h);
        assert_eq!(parse_request_header(&b), Ok(h));
        let mut bad = b;
        bad[0] ^= 1;
        assert!(matches!(
            parse_request_header(&bad),
            Err(WireError::RequestMagic(_))
        ));
    }

    #[test]
    fn classify_follows_the_error_values_section() {
        let size = 1 << 20;
        assert_eq!(
            classify(&req(CMD_READ, 0, size - 512, 512), size, false, NONE),
            Action::Read {
                offset: size - 512,
                len: 512,
                df: false
            }
        );
        assert_eq!(
            classify(&req(CMD_READ, 0, size - 512, 1024), size, false, NONE),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(&req(CMD_READ, 0, u64::MAX, 2), size, false, NONE),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(&req(CMD_READ, CMD_FLAG_DF, 0, 512), size, false, NONE),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(&req(CMD_WRITE, 0, size, 512), size, false, NONE),
            Action::Reject {
                error: ENOSPC,
                discard: 512
            }
        );
        assert_eq!(
            classify(&req(CMD_WRITE, 0, 0, 512), size, true, NONE),
            Action::Reject {
                error: EPERM,
                discard: 512
            }
        );
        assert_eq!(
            classify(
                &req(CMD_WRITE, 0, 0, MAX_REQUEST_LEN + 1),
                size,
                false,
                NONE
            ),
            Action::RejectAndClose { error: EINVAL }
        );
        assert_eq!(
            classify(&req(CMD_TRIM, 0, 0, 512), size, true, NONE),
            Action::Reject {
                error: EPERM,
                discard: 0
            }
        );
        assert_eq!(
            classify(
                &req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 0, 512),
                size,
                false,
                NONE
            ),
            Action::WriteZeroes {
                offset: 0,
                len: 512,
                fua: false
            }
        );
        assert_eq!(
            classify(
                &req(CMD_WRITE_ZEROES, CMD_FLAG_FAST_ZERO, 0, 512),
                size,
                false,
                NONE
            ),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(
                &req(CMD_WRITE_ZEROES, 0, 0, u32::MAX),
                u64::MAX,
                false,
                NONE
            ),
            Action::WriteZeroes {
                offset: 0,
                len: u32::MAX,
                fua: false
            }
        );
        assert_eq!(
            classify(&req(CMD_FLUSH, 0, 0, 1), size, false, NONE),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(&req(CMD_BLOCK_STATUS, 0, 0, 512), size, false, NONE),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(&req(99, 0, 0, 0), size, false, NONE),
            Action::Reject {
                error: EINVAL,
                discard: 0
            }
        );
        assert_eq!(
            classify(&req(CMD_DISC, 0, 0, 0), size, false, NONE),
            Action::Disconnect
        );
        assert_eq!(
            classify(&req(CMD_CACHE, CMD_FLAG_FUA, 0, 512), size, false, NONE),
            Action::Cache {
                offset: 0,
                len: 512
            }
        );
    }

    const NONE: Caps = Caps {
        structured: false,
        base_allocation: false,
    };

    #[test]
    fn negotiated_caps_unlock_df_and_block_status() {
        let size = 1 << 20;
        let sr = Caps {
            structured: true,
            base_allocation: false,
        };
        let meta = Caps {
            structured: true,
            base_allocation: true,
        };
        let einval = Action::Reject {
            error: EINVAL,
            discard: 0,
        };
        assert_eq!(
            classify(&req(CMD_READ, CMD_FLAG_DF, 0, 512), size, false, NONE),
            einval
        );
        assert_eq!(
            classify(&req(CMD_READ, CMD_FLAG_DF, 0, 512), size, false, sr),
            Action::Read {
                offset: 0,
                len: 512,
                df: true
            }
        );
        assert_eq!(
            classify(&req(CMD_BLOCK_STATUS, 0, 0, 512), size, false, sr),
            einval
        );
        assert_eq!(
            classify(
                &req(CMD_BLOCK_STATUS, CMD_FLAG_REQ_ONE, 4096, u32::MAX),
                u64::MAX,
                true,
                meta
            ),
            Action::BlockStatus {
                offset: 4096,
                len: u32::MAX,
                one: true
            }
        );
        assert_eq!(
            classify(&req(CMD_BLOCK_STATUS, 0, 0, 0), size, false, meta),
            einval
        );
        assert_eq!(
            classify(&req(CMD_BLOCK_STATUS, 0, size, 1), size, false, meta),
            einval
        );
        assert_eq!(
            classify(&req(CMD_BLOCK_STATUS, CMD_FLAG_DF, 0, 1), size, false, meta),
            einval
        );
        assert_eq!(transmission_flags(false, NONE) & FLAG_SEND_DF, 0);
        assert_ne!(transmission_flags(true, sr) & FLAG_SEND_DF, 0);
        assert_ne!(transmission_flags(false, NONE) & FLAG_SEND_CACHE, 0);
    }

    #[test]
    fn meta_requests_parse_and_select_base_allocation() {
        let mut p = Vec::new();
        p.extend_from_slice(&3u32.to_be_bytes());
        p.extend_from_slice(b"vol");
        p.extend_from_slice(&2u32.to_be_bytes());
        for q in [&b"base:allocation"[..], b"qemu:dirty-bitmap:x"] {
            p.extend_from_slice(&(q.len() as u32).to_be_bytes());
            p.extend_from_slice(q);
        }
        let r = parse_meta_request(&p).unwrap();
        assert_eq!(r.name, b"vol");
        assert_eq!(r.queries, [&b"base:allocation"[..], b"qemu:dirty-bitmap:x"]);
        assert!(parse_meta_request(&p[..p.len() - 1]).is_none());
        let mut long = p.clone();
        long.push(0);
        assert!(parse_meta_request(&long).is_none());
        // A count far above what the payload can hold is refused up front.
        let mut huge = b"\0\0\0\0".to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(parse_meta_request(&huge).is_none());
        assert!(query_selects_base_allocation(b"base:allocation", false));
        assert!(query_selects_base_allocation(b"base:", true));
        assert!(!query_selects_base_allocation(b"base:", false));
        assert!(!query_selects_base_allocation(b"base:allocation2", true));
    }

    #[test]
    fn extents_merge_clip_and_fall_back_to_data() {
        use crate::replica::Span;
        let span = |offset, len, hole| Span { offset, len, hole };
        let h = STATE_HOLE | STATE_ZERO;
        let spans = [
            span(100, 50, true),
            span(150, 50, true),
            span(200, 10, false),
            span(210, 1000, true),
        ];
        assert_eq!(extents(100, 300, &spans, 16), [(100, h), (10, 0), (190, h)]);
        assert_eq!(extents(100, 300, &spans, 1), [(100, h)]);
        // Runs that do not start at the offset are not trusted.
        assert_eq!(extents(90, 300, &spans, 16), [(300, 0)]);
        assert_eq!(extents(100, 300, &[], 16), [(300, 0)]);
        // A gap ends the answer early, which the spec allows.
        assert_eq!(
            extents(0, 100, &[span(0, 10, true), span(20, 80, false)], 16),
            [(10, h)]
        );
    }

    #[test]
    fn info_request_lengths_must_add_up() {
        let mut p = Vec::new();
        p.extend_from_slice(&3u32.to_be_bytes());
        p.extend_from_slice(b"vol");
        p.extend_from_slice(&2u16.to_be_bytes());
        p.extend_from_slice(&INFO_NAME.to_be_bytes());
        p.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
        let r = parse_info_request(&p).unwrap();
        assert_eq!(r.name, b"vol");
        assert_eq!(
            r.requests().collect::<Vec<_>>(),
            [INFO_NAME, INFO_BLOCK_SIZE]
        );
        assert!(parse_info_request(&p[..p.len() - 1]).is_none());
        let mut long = p.clone();
        long.push(0);
        assert!(parse_info_request(&long).is_none());
        p[3] = 200;
        assert!(parse_info_request(&p).is_none());
        assert!(parse_info_request(&[]).is_none());
    }

    #[test]
    fn block_sizes_are_valid_for_any_preference() {
        for pref in [0, 1, 511, 512, 4096, 5000, 1 << 30, u32::MAX] {
            let (min, p, max) = block_size_constraints(pref);
            assert_eq!(min, 1);
            assert!(p.is_power_of_two() && p >= 512 && p <= max, "{pref} -> {p}");
            assert_eq!(max, MAX_REQUEST_LEN);
        }
        assert_eq!(block_size_constraints(4096).1, 4096);
    }

    proptest! {
        #[test]
        fn classify_bounds_every_payload(
            bytes in proptest::array::uniform28(any::<u8>()),
            size in any::<u64>(),
            read_only in any::<bool>(),
            valid_magic in any::<bool>(),
            structured in any::<bool>(),
            meta in any::<bool>(),
        ) {
            let mut b = bytes;
            if valid_magic {
                b[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
            }
            let Ok(h) = parse_request_header(&b) else { return Ok(()); };
            let caps = Caps { structured, base_allocation: structured && meta };
            match classify(&h, size, read_only, caps) {
                Action::Read { offset, len, df } => {
                    prop_assert!(len <= MAX_REQUEST_LEN);
                    prop_assert!(offset + u64::from(len) <= size);
                    prop_assert!(!df || structured);
                }
                Action::Write { offset, len, .. } | Action::Cache { offset, len } => {
                    prop_assert!(len <= MAX_REQUEST_LEN);
                    prop_assert!(offset + u64::from(len) <= size);
                }
                Action::Trim { offset, len, .. } | Action::WriteZeroes { offset, len, .. } => {
                    prop_assert!(!read_only);
                    prop_assert!(offset + u64::from(len) <= size);
                }
                Action::Reject { discard, .. } => {
                    prop_assert!(discard <= MAX_REQUEST_LEN);
                    prop_assert!(discard == 0 || h.command == CMD_WRITE);
                }
                Action::RejectAndClose { .. } => prop_assert_eq!(h.command, CMD_WRITE),
                Action::BlockStatus { offset, len, .. } => {
                    prop_assert!(caps.base_allocation && len > 0);
                    prop_assert!(offset + u64::from(len) <= size);
                }
                Action::Flush | Action::Disconnect => {}
            }
        }

        #[test]
        fn info_request_parser_never_panics(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(r) = parse_info_request(&p) {
                prop_assert_eq!(4 + r.name.len() + 2 + 2 * r.requests().count(), p.len());
            }
        }

        /// Arbitrary bytes, half of them behind a valid magic: the header
        /// parses exactly when the magic is IHAVEOPT, and then carries the
        /// option and length as written, big-endian.
        #[test]
        fn option_header_parser_reads_what_was_written(
            bytes in proptest::array::uniform16(any::<u8>()),
            valid_magic in any::<bool>(),
        ) {
            let mut b = bytes;
            if valid_magic {
                b[0..8].copy_from_slice(&IHAVEOPT.to_be_bytes());
            }
            let magic = u64::from_be_bytes(b[0..8].try_into().unwrap());
            match parse_option_header(&b) {
                Ok(h) => {
                    prop_assert_eq!(magic, IHAVEOPT);
                    prop_assert_eq!(h.option.to_be_bytes(), [b[8], b[9], b[10], b[11]]);
                    prop_assert_eq!(h.len.to_be_bytes(), [b[12], b[13], b[14], b[15]]);
                }
                Err(e) => {
                    prop_assert_ne!(magic, IHAVEOPT);
                    prop_assert_eq!(e, WireError::OptionMagic(magic));
                }
            }
        }

        #[test]
        fn meta_request_parser_accounts_for_every_byte(
            p in proptest::collection::vec(any::<u8>(), 0..64)
        ) {
            if let Some(r) = parse_meta_request(&p) {
                let used = 4 + r.name.len() + 4 + r.queries.iter().map(|q| 4 + q.len()).sum::<usize>();
                prop_assert_eq!(used, p.len());
            }
        }

        #[test]
        fn extents_cover_a_prefix_of_the_range_and_never_more(
            offset in 0u64..1 << 40,
            len in 1u32..u32::MAX,
            runs in proptest::collection::vec((0u64..1 << 33, any::<bool>(), any::<bool>()), 0..20),
            max in 0usize..8,
        ) {
            // Runs that mostly continue each other, sometimes not.
            let mut at = offset;
            let spans: Vec<crate::replica::Span> = runs
                .iter()
                .map(|&(l, hole, gap)| {
                    let s = crate::replica::Span { offset: at + u64::from(gap), len: l, hole };
                    at = s.offset + l;
                    s
                })
                .collect();
            let e = extents(offset, len, &spans, max);
            prop_assert!(!e.is_empty() && e.len() <= max.max(1));
            prop_assert!(e.iter().all(|&(l, _)| l > 0));
            prop_assert!(e.iter().map(|&(l, _)| u64::from(l)).sum::<u64>() <= u64::from(len));
            prop_assert!(e.windows(2).all(|w| w[0].1 != w[1].1), "adjacent runs of one kind: {e:?}");
        }
    }
}
