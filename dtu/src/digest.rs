//! Block digests, the one way both sides compare their copies of the volume
//! (initial sync with checksum-skip, resync, online verify).
//!
//! BLAKE3, cut to its first 128 bits: cryptographically strong (a copy that
//! differs cannot pass for equal by accident or by design; 128 bits keep
//! 2^64 collision resistance, far beyond the number of blocks any volume
//! holds), and fast on one core (SIMD, over a gigabyte per second), so a
//! verify is bounded by the disk, not the hash. It is a kept crate with a
//! pure Rust fallback. xxh3-128 is faster still but not collision-resistant
//! against crafted data, and a replica's contents come from the host.

use dtu_proto::frame::DIGEST_LEN;

use crate::replica::Replica;

/// One block's digest.
pub type Digest = [u8; DIGEST_LEN];

/// The digest of one block's bytes.
pub fn digest(data: &[u8]) -> Digest {
    let full = blake3::hash(data);
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&full.as_bytes()[..DIGEST_LEN]);
    d
}

/// The digests of `data` cut into blocks of `block` bytes (the last may be
/// shorter).
pub fn block_digests(data: &[u8], block: usize) -> Vec<Digest> {
    data.chunks(block.max(1)).map(digest).collect()
}

/// Reads `offset..offset+len` of `replica` and digests it block by block.
pub fn replica_digests(
    replica: &dyn Replica,
    offset: u64,
    len: u32,
    block: u32,
) -> std::io::Result<Vec<Digest>> {
    let mut buf = vec![0u8; len as usize];
    replica.read_at(offset, &mut buf)?;
    Ok(block_digests(&buf, block as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_and_their_digests() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let d = block_digests(&data, 4096);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], digest(&data[..4096]));
        assert_eq!(d[2], digest(&data[8192..]));
        assert_ne!(d[0], d[1]);
        let mut other = data.clone();
        other[5000] ^= 1;
        let e = block_digests(&other, 4096);
        assert_eq!((d[0], d[2]), (e[0], e[2]));
        assert_ne!(d[1], e[1]);
    }
}
