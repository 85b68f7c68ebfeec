//! The payload codec: what happens to a chunk's bytes between the host's
//! write and the wire, and back.
//!
//! Encoding checksums the plaintext (crc32), compresses it with snap when that
//! saves at least an eighth, and seals it with XChaCha20-Poly1305 under the
//! volume key. The 24-byte nonce is built from (epoch, seq, chunk index), which
//! never repeat under one key because seq is dense and increasing within an
//! epoch and the epoch grows on every restart; a retransmit resends the same
//! sealed bytes rather than sealing again. The chunk's place (seq, epoch,
//! index, volume offset, length, flags) is bound in as associated data, so a
//! sealed chunk cannot be replayed at another offset. An all-zero chunk is
//! sent as a zero-run with no payload (with sealing, just an authentication
//! tag).
//!
//! The `crc` field of an [`EncodedChunk`] is the crc32 of the plaintext when
//! the chunk is not sealed. When it is sealed, the plaintext checksum travels
//! inside the sealed box (so it does not leak a fingerprint of the data) and
//! the `crc` field holds the crc32 of the sealed bytes, which lets the remote
//! tell a bit flipped in transit ([`CodecError::Checksum`]) from a peer using
//! another key ([`CodecError::WrongKey`]) and from a forgery
//! ([`CodecError::Unsealed`]).
//!
//! Both functions are pure and `Key` is `Sync`: encode and decode workers call
//! them concurrently.

use bytes::Bytes;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::{Epoch, Seq};

/// Largest plaintext a single chunk may claim; bounds what a decoder allocates.
pub const MAX_CHUNK: usize = 4 << 20;

/// Bytes the seal adds (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

/// How a chunk's payload is represented.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChunkFlags(u8);

impl ChunkFlags {
    /// Payload is snap-compressed (inside the seal, when sealed).
    pub const COMPRESSED: ChunkFlags = ChunkFlags(1);
    /// Payload is sealed with the volume key.
    pub const SEALED: ChunkFlags = ChunkFlags(2);
    /// The chunk is all zeros; no data travels.
    pub const ZERO: ChunkFlags = ChunkFlags(4);
    const ALL: u8 = 7;

    pub const fn empty() -> Self {
        ChunkFlags(0)
    }
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// `None` if unknown bits or an impossible combination are set.
    pub fn from_bits(bits: u8) -> Option<Self> {
        let f = ChunkFlags(bits);
        if bits & !Self::ALL != 0 || (f.contains(Self::ZERO) && f.contains(Self::COMPRESSED)) {
            None
        } else {
            Some(f)
        }
    }
    pub const fn contains(self, other: ChunkFlags) -> bool {
        self.0 & other.0 == other.0
    }
    fn with(self, other: ChunkFlags) -> Self {
        ChunkFlags(self.0 | other.0)
    }
}

/// Where a chunk belongs in the write stream; the nonce is derived from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId {
    pub epoch: Epoch,
    pub seq: Seq,
    pub index: u32,
}

/// A chunk as it is buffered and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedChunk {
    pub flags: ChunkFlags,
    /// Bytes of plaintext this chunk stands for.
    pub plain_len: u32,
    /// See the module header: plaintext crc, or sealed-bytes crc when sealed.
    pub crc: u32,
    /// Identifies the key that sealed it (0 when not sealed).
    pub key_id: u32,
    pub payload: Bytes,
}

/// The per-volume sealing key.
#[derive(Clone)]
pub struct Key {
    cipher: XChaCha20Poly1305,
    id: u32,
    fingerprint: u64,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key(id {:08x})", self.id)
    }
}

impl Key {
    pub fn from_bytes(bytes: &[u8; 32]) -> Key {
        let cipher = XChaCha20Poly1305::new(bytes.into());
        // A nonce no chunk can use (chunk nonces end in eight zero bytes)
        // gives a public fingerprint of the key without revealing it.
        let probe = cipher
            .encrypt(
                &XNonce::from([0xff; 24]),
                Payload {
                    msg: b"",
                    aad: b"dtu key id",
                },
            )
            .expect("sealing an empty message cannot fail");
        let id = u32::from_be_bytes([probe[0], probe[1], probe[2], probe[3]]);
        let fingerprint = u64::from_be_bytes(probe[0..8].try_into().expect("the tag is 16 bytes"));
        Key {
            cipher,
            id,
            fingerprint,
        }
    }

    /// A short public fingerprint of the key, carried in every sealed chunk.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// A longer public fingerprint (never 0), compared by the two DTUs at
    /// connect so that a pair holding different keys refuses to start
    /// instead of refusing every chunk.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint.max(1)
    }
}

/// How to encode.
#[derive(Debug, Clone, Copy, Default)]
pub struct EncodeOptions<'a> {
    pub compress: bool,
    pub key: Option<&'a Key>,
}

/// Why a chunk could not be turned back into plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("checksum mismatch: chunk says {stored:#010x}, data gives {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("chunk was sealed with key {chunk:08x}, this side holds key {ours:08x}")]
    WrongKey { chunk: u32, ours: u32 },
    #[error("chunk is sealed but this side has no volume key")]
    MissingKey,
    #[error("chunk is not sealed but this side requires sealing")]
    NotSealed,
    #[error("sealed chunk failed authentication (forged or damaged under a matching checksum)")]
    Unsealed,
    #[error("compressed payload is damaged: {0}")]
    Decompress(String),
    #[error("chunk claims {claimed} bytes of plaintext but holds {actual}")]
    Length { claimed: usize, actual: usize },
    #[error("chunk claims {0} bytes of plaintext, more than the {MAX_CHUNK}-byte maximum")]
    TooLarge(usize),
}

fn nonce(id: ChunkId) -> XNonce {
    let mut n = [0u8; 24];
    n[0..4].copy_from_slice(&id.epoch.to_be_bytes());
    n[4..12].copy_from_slice(&id.seq.to_be_bytes());
    n[12..16].copy_from_slice(&id.index.to_be_bytes());
    XNonce::from(n)
}

fn aad(id: ChunkId, offset: u64, plain_len: u32, flags: ChunkFlags) -> [u8; 29] {
    let mut a = [0u8; 29];
    a[0..4].copy_from_slice(&id.epoch.to_be_bytes());
    a[4..12].copy_from_slice(&id.seq.to_be_bytes());
    a[12..16].copy_from_slice(&id.index.to_be_bytes());
    a[16..24].copy_from_slice(&offset.to_be_bytes());
    a[24..28].copy_from_slice(&plain_len.to_be_bytes());
    a[28] = flags.bits();
    a
}

fn is_zero(data: &[u8]) -> bool {
    // Word-sized comparisons: this runs on every chunk.
    let mut words = data.chunks_exact(8);
    words
        .by_ref()
        .all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// crc32 of `len` zero bytes, without materialising them all at once.
fn zero_crc(len: usize) -> u32 {
    const BLOCK: [u8; 4096] = [0u8; 4096];
    let mut h = crc32fast::Hasher::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(BLOCK.len());
        h.update(&BLOCK[..n]);
        left -= n;
    }
    h.finalize()
}

/// Encodes one chunk of plaintext. `offset` is the chunk's volume offset.
pub fn encode_chunk(
    plain: &[u8],
    id: ChunkId,
    offset: u64,
    opts: &EncodeOptions<'_>,
) -> EncodedChunk {
    assert!(plain.len() <= MAX_CHUNK, "chunk larger than MAX_CHUNK");
    let plain_len = plain.len() as u32;
    let plain_crc = crc32fast::hash(plain);

    if is_zero(plain) {
        let mut flags = ChunkFlags::ZERO;
        let (payload, key_id, crc) = match opts.key {
            Some(key) => {
                flags = flags.with(ChunkFlags::SEALED);
                let tag = key
                    .cipher
                    .encrypt(
                        &nonce(id),
                        Payload {
                            msg: b"",
                            aad: &aad(id, offset, plain_len, flags),
                        },
                    )
                    .expect("sealing cannot fail");
                let crc = crc32fast::hash(&tag);
                (Bytes::from(tag), key.id, crc)
            }
            None => (Bytes::new(), 0, plain_crc),
        };
        return EncodedChunk {
            flags,
            plain_len,
            crc,
            key_id,
            payload,
        };
    }

    let mut flags = ChunkFlags::empty();
    let compressed = if opts.compress {
        snap::raw::Encoder::new()
            .compress_vec(plain)
            .ok()
            .filter(|c| c.len() <= plain.len() - plain.len() / 8)
    } else {
        None
    };
    if compressed.is_some() {
        flags = flags.with(ChunkFlags::COMPRESSED);
    }

    match opts.key {
        None => EncodedChunk {
            flags,
            plain_len,
            crc: plain_crc,
            key_id: 0,
            payload: match compressed {
                Some(c) => Bytes::from(c),
                None => Bytes::copy_from_slice(plain),
            },
        },
        Some(key) => {
            flags = flags.with(ChunkFlags::SEALED);
            let body: &[u8] = compressed.as_deref().unwrap_or(plain);
            let mut boxed = Vec::with_capacity(4 + body.len() + TAG_LEN);
            boxed.extend_from_slice(&plain_crc.to_be_bytes());
            boxed.extend_from_slice(body);
            let sealed = key
                .cipher
                .encrypt(
                    &nonce(id),
                    Payload {
                        msg: &boxed,
                        aad: &aad(id, offset, plain_len, flags),
                    },
                )
                .expect("sealing cannot fail");
            EncodedChunk {
                flags,
                plain_len,
                crc: crc32fast::hash(&sealed),
                key_id: key.id,
                payload: Bytes::from(sealed),
            }
        }
    }
}

/// Turns an encoded chunk back into its plaintext, checking everything.
/// When `key` is given, unsealed chunks are refused: a remote configured
/// with a key never applies data that was not sealed with it.
pub fn decode_chunk(
    chunk: &EncodedChunk,
    id: ChunkId,
    offset: u64,
    key: Option<&Key>,
) -> Result<Bytes, CodecError> {
    let plain_len = chunk.plain_len as usize;
    if plain_len > MAX_CHUNK {
        return Err(CodecError::TooLarge(plain_len));
    }
    let sealed = chunk.flags.contains(ChunkFlags::SEALED);
    let body: Bytes = if sealed {
        let computed = crc32fast::hash(&chunk.payload);
        if computed != chunk.crc {
            return Err(CodecError::Checksum {
                stored: chunk.crc,
                computed,
            });
        }
        let key = key.ok_or(CodecError::MissingKey)?;
        if chunk.key_id != key.id {
            return Err(CodecError::WrongKey {
                chunk: chunk.key_id,
                ours: key.id,
            });
        }
        let opened = key
            .cipher
            .decrypt(
                &nonce(id),
                Payload {
                    msg: &chunk.payload,
                    aad: &aad(id, offset, chunk.plain_len, chunk.flags),
                },
            )
            .map_err(|_| CodecError::Unsealed)?;
        if chunk.flags.contains(ChunkFlags::ZERO) {
            if !opened.is_empty() {
                return Err(CodecError::Unsealed);
            }
            return Ok(Bytes::from(vec![0u8; plain_len]));
        }
        if opened.len() < 4 {
            return Err(CodecError::Length {
                claimed: plain_len,
                actual: 0,
            });
        }
        let inner_crc = u32::from_be_bytes([opened[0], opened[1], opened[2], opened[3]]);
        let plain = unpack(Bytes::from(opened).slice(4..), chunk.flags, plain_len)?;
        let computed = crc32fast::hash(&plain);
        if computed != inner_crc {
            return Err(CodecError::Checksum {
                stored: inner_crc,
                computed,
            });
        }
        return Ok(plain);
    } else {
        if key.is_some() {
            return Err(CodecError::NotSealed);
        }
        if chunk.flags.contains(ChunkFlags::ZERO) {
            let computed = zero_crc(plain_len);
            if computed != chunk.crc {
                return Err(CodecError::Checksum {
                    stored: chunk.crc,
                    computed,
                });
            }
            return Ok(Bytes::from(vec![0u8; plain_len]));
        }
        unpack(chunk.payload.clone(), chunk.flags, plain_len)?
    };
    let computed = crc32fast::hash(&body);
    if computed != chunk.crc {
        return Err(CodecError::Checksum {
            stored: chunk.crc,
            computed,
        });
    }
    Ok(body)
}

/// Undoes compression, checking the length before allocating.
fn unpack(body: Bytes, flags: ChunkFlags, plain_len: usize) -> Result<Bytes, CodecError> {
    if !flags.contains(ChunkFlags::COMPRESSED) {
        if body.len() != plain_len {
            return Err(CodecError::Length {
                claimed: plain_len,
                actual: body.len(),
            });
        }
        return Ok(body);
    }
    let len =
        snap::raw::decompress_len(&body).map_err(|e| CodecError::Decompress(e.to_string()))?;
    if len != plain_len {
        return Err(CodecError::Length {
            claimed: plain_len,
            actual: len,
        });
    }
    snap::raw::Decoder::new()
        .decompress_vec(&body)
        .map(Bytes::from)
        .map_err(|e| CodecError::Decompress(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: ChunkId = ChunkId {
        epoch: 3,
        seq: 42,
        index: 1,
    };

    fn key(b: u8) -> Key {
        Key::from_bytes(&[b; 32])
    }

    #[test]
    fn compression_is_kept_only_when_it_saves_an_eighth() {
        let text = b"abcdefgh".repeat(1000);
        let c = encode_chunk(
            &text,
            ID,
            0,
            &EncodeOptions {
                compress: true,
                key: None,
            },
        );
        assert!(c.flags.contains(ChunkFlags::COMPRESSED));
        assert!(c.payload.len() < text.len() / 4);

        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let c = encode_chunk(
            &noise,
            ID,
            0,
            &EncodeOptions {
                compress: true,
                key: None,
            },
        );
        assert!(!c.flags.contains(ChunkFlags::COMPRESSED));
        assert_eq!(c.payload.len(), noise.len());
    }

    #[test]
    fn zero_chunks_carry_no_data() {
        let zeros = vec![0u8; 65536];
        let c = encode_chunk(&zeros, ID, 0, &EncodeOptions::default());
        assert_eq!(c.flags, ChunkFlags::ZERO);
        assert!(c.payload.is_empty());
        assert_eq!(decode_chunk(&c, ID, 0, None).unwrap(), &zeros[..]);

        let k = key(1);
        let c = encode_chunk(
            &zeros,
            ID,
            0,
            &EncodeOptions {
                compress: true,
                key: Some(&k),
            },
        );
        assert_eq!(c.payload.len(), TAG_LEN);
        assert_eq!(decode_chunk(&c, ID, 0, Some(&k)).unwrap(), &zeros[..]);
    }

    #[test]
    fn wrong_key_flipped_bit_and_forgery_are_told_apart() {
        let data = b"mirror me".repeat(100);
        let k1 = key(1);
        let k2 = key(2);
        let opts = EncodeOptions {
            compress: true,
            key: Some(&k1),
        };
        let c = encode_chunk(&data, ID, 4096, &opts);
        assert_eq!(decode_chunk(&c, ID, 4096, Some(&k1)).unwrap(), &data[..]);
        assert!(matches!(
            decode_chunk(&c, ID, 4096, Some(&k2)),
            Err(CodecError::WrongKey { .. })
        ));

        let mut flipped = c.clone();
        let mut p = flipped.payload.to_vec();
        p[3] ^= 0x10;
        flipped.payload = Bytes::from(p.clone());
        assert!(matches!(
            decode_chunk(&flipped, ID, 4096, Some(&k1)),
            Err(CodecError::Checksum { .. })
        ));

        // A forger who also fixes the outer checksum still fails the seal.
        flipped.crc = crc32fast::hash(&p);
        assert_eq!(
            decode_chunk(&flipped, ID, 4096, Some(&k1)),
            Err(CodecError::Unsealed)
        );

        // Replaying the chunk at another offset or seq fails the seal too.
        assert_eq!(
            decode_chunk(&c, ID, 8192, Some(&k1)),
            Err(CodecError::Unsealed)
        );
        let other = ChunkId { seq: 43, ..ID };
        assert_eq!(
            decode_chunk(&c, other, 4096, Some(&k1)),
            Err(CodecError::Unsealed)
        );
    }

    #[test]
    fn unsealed_chunk_is_refused_when_a_key_is_required() {
        let c = encode_chunk(b"plain", ID, 0, &EncodeOptions::default());
        assert_eq!(
            decode_chunk(&c, ID, 0, Some(&key(1))),
            Err(CodecError::NotSealed)
        );
        let sealed = encode_chunk(
            b"plain",
            ID,
            0,
            &EncodeOptions {
                compress: false,
                key: Some(&key(1)),
            },
        );
        assert_eq!(
            decode_chunk(&sealed, ID, 0, None),
            Err(CodecError::MissingKey)
        );
    }

    #[test]
    fn a_flipped_bit_in_plain_data_is_a_checksum_error() {
        let data = vec![7u8; 1000];
        let mut c = encode_chunk(&data, ID, 0, &EncodeOptions::default());
        let mut p = c.payload.to_vec();
        p[500] ^= 1;
        c.payload = Bytes::from(p);
        assert!(matches!(
            decode_chunk(&c, ID, 0, None),
            Err(CodecError::Checksum { .. })
        ));
    }

    #[test]
    fn a_huge_claimed_length_is_refused_before_allocating() {
        let c = EncodedChunk {
            flags: ChunkFlags::ZERO,
            plain_len: u32::MAX,
            crc: 0,
            key_id: 0,
            payload: Bytes::new(),
        };
        assert_eq!(
            decode_chunk(&c, ID, 0, None),
            Err(CodecError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn key_ids_differ_between_keys() {
        assert_ne!(key(1).id(), key(2).id());
        assert_eq!(key(1).id(), key(1).id());
    }
}
