//! Structured replies, the `base:allocation` metadata context and
//! NBD_CMD_BLOCK_STATUS, sparse reads and NBD_CMD_CACHE: byte by byte through
//! a raw client, then as real clients use them (`nbdinfo --map`, `qemu-img
//! map`, `nbdcopy` skipping holes), against a `FileExport` on a sparse file
//! whose holes come from `SEEK_DATA`/`SEEK_HOLE`.

mod nbd_harness;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use nbd_harness::*;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const LIMIT: Duration = Duration::from_secs(120);

/// A 16 MiB export on a sparse file holding data only at 1 MiB (64 KiB of
/// 0x5a) and at 8 MiB (1 MiB of random bytes).
fn sparse_served() -> (Served, Vec<u8>) {
    let s = Served::start(ServeOpts::default());
    let mut want = vec![0u8; 16 * MIB as usize];
    let mut c = RawClient::transmission_unix(&s.socket, "vol").0;
    let a = vec![0x5au8; 64 * KIB as usize];
    let b = random_bytes(MIB as usize, 4);
    assert_eq!(c.write(1, MIB, &a, FLAG_FUA), 0);
    assert_eq!(c.write(2, 8 * MIB, &b, FLAG_FUA), 0);
    want[MIB as usize..(MIB + 64 * KIB) as usize].copy_from_slice(&a);
    want[8 * MIB as usize..9 * MIB as usize].copy_from_slice(&b);
    (s, want)
}

/// Fixed newstyle, structured replies, `base:allocation` selected, then GO.
fn structured_client(s: &Served, meta: bool) -> (RawClient, u16) {
    let mut c = RawClient::negotiated_unix(&s.socket);
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_replies()[0].1, REP_ACK);
    if meta {
        c.option(
            OPT_SET_META_CONTEXT,
            &RawClient::meta_payload(b"vol", &[b"base:allocation"]),
        );
        let r = c.option_replies();
        assert_eq!(r[0].1, REP_META_CONTEXT, "{r:?}");
    }
    let (_, flags) = c.go("vol", &[]).expect("GO");
    (c, flags)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// Block status for `offset..offset+len`: the (length, flags) descriptors.
fn block_status(
    c: &mut RawClient,
    handle: u64,
    flags: u16,
    offset: u64,
    len: u32,
) -> Vec<(u32, u32)> {
    c.request(CMD_BLOCK_STATUS, flags, handle, offset, len);
    let chunks = c.chunks();
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    let (f, kind, h, p) = &chunks[0];
    assert_eq!(
        (*f, *kind, *h),
        (REPLY_FLAG_DONE, REPLY_TYPE_BLOCK_STATUS, handle)
    );
    assert_eq!(be32(p), 1, "context id given at SET_META_CONTEXT");
    p[4..].chunks(8).map(|d| (be32(d), be32(&d[4..]))).collect()
}

/// A structured read, reassembled; also returns the chunk types in order.
fn structured_read(
    c: &mut RawClient,
    handle: u64,
    flags: u16,
    offset: u64,
    len: u32,
) -> (Vec<u8>, Vec<u16>) {
    c.request(CMD_READ, flags, handle, offset, len);
    let mut out = vec![0xffu8; len as usize];
    let mut covered = 0u64;
    let mut kinds = Vec::new();
    for (_, kind, h, p) in c.chunks() {
        assert_eq!(h, handle);
        kinds.push(kind);
        let at = (be64(&p) - offset) as usize;
        match kind {
            REPLY_TYPE_OFFSET_DATA => {
                out[at..at + p.len() - 8].copy_from_slice(&p[8..]);
                covered += p.len() as u64 - 8;
            }
            REPLY_TYPE_OFFSET_HOLE => {
                let n = be32(&p[8..]) as usize;
                out[at..at + n].fill(0);
                covered += n as u64;
            }
            other => panic!("unexpected chunk type {other:#x}"),
        }
    }
    assert_eq!(covered, u64::from(len), "chunks do not cover the read");
    (out, kinds)
}

const HZ: u32 = STATE_HOLE | STATE_ZERO;

#[test]
fn negotiation_orders_structured_replies_before_meta_contexts() {
    let s = Served::start(ServeOpts::default());
    let mut c = RawClient::negotiated_unix(&s.socket);
    let set = RawClient::meta_payload(b"vol", &[b"base:allocation"]);
    // Before structured replies: refused.
    c.option(OPT_SET_META_CONTEXT, &set);
    assert_eq!(c.option_replies()[0].1, REP_ERR_INVALID);
    c.option(OPT_STRUCTURED_REPLY, b"x");
    assert_eq!(
        c.option_replies()[0].1,
        REP_ERR_INVALID,
        "payload on STRUCTURED_REPLY"
    );
    c.option(OPT_STRUCTURED_REPLY, &[]);
    assert_eq!(c.option_replies()[0].1, REP_ACK);
    // LIST with no query names every context, id reserved as 0.
    c.option(OPT_LIST_META_CONTEXT, &RawClient::meta_payload(b"vol", &[]));
    let r = c.option_replies();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].1, REP_META_CONTEXT);
    assert_eq!(
        r[0].2,
        [&0u32.to_be_bytes()[..], b"base:allocation"].concat()
    );
    // A foreign namespace selects nothing and is no error.
    c.option(
        OPT_SET_META_CONTEXT,
        &RawClient::meta_payload(b"vol", &[b"qemu:dirty-bitmap:b0"]),
    );
    assert_eq!(c.option_replies().len(), 1);
    // No namespace at all: invalid. Unknown export: unknown.
    c.option(
        OPT_SET_META_CONTEXT,
        &RawClient::meta_payload(b"vol", &[b"allocation"]),
    );
    assert_eq!(c.option_replies()[0].1, REP_ERR_INVALID);
    c.option(
        OPT_SET_META_CONTEXT,
        &RawClient::meta_payload(b"nope", &[b"base:allocation"]),
    );
    assert_eq!(c.option_replies()[0].1, REP_ERR_UNKNOWN);
    c.option(OPT_SET_META_CONTEXT, &set[..set.len() - 1]);
    assert_eq!(c.option_replies()[0].1, REP_ERR_INVALID, "truncated query");
    c.option(OPT_SET_META_CONTEXT, &set);
    let r = c.option_replies();
    assert_eq!(r[0].1, REP_META_CONTEXT);
    assert_eq!(be32(&r[0].2), 1);
    assert_eq!(&r[0].2[4..], b"base:allocation");
    assert_eq!(r[1].1, REP_ACK);
    let (_, flags) = c.go("vol", &[]).expect("GO");
    assert_ne!(flags & TFLAG_SEND_DF, 0, "DF comes with structured replies");
    assert_ne!(flags & TFLAG_SEND_CACHE, 0);
    // A client that did not ask gets neither.
    let (_, _, plain) = RawClient::transmission_unix(&s.socket, "vol");
    assert_eq!(plain & TFLAG_SEND_DF, 0);
}

#[test]
fn block_status_reports_the_holes_of_the_file() {
    let (s, _) = sparse_served();
    let (mut c, _) = structured_client(&s, true);
    assert_eq!(
        block_status(&mut c, 1, 0, 0, 16 * MIB as u32),
        [
            (MIB as u32, HZ),
            (64 * KIB as u32, 0),
            ((7 * MIB - 64 * KIB) as u32, HZ),
            (MIB as u32, 0),
            (7 * MIB as u32, HZ),
        ]
    );
    // A range starting inside data, and REQ_ONE.
    assert_eq!(
        block_status(&mut c, 2, 0, MIB + 32 * KIB, 64 * KIB as u32),
        [(32 * KIB as u32, 0), (32 * KIB as u32, HZ)]
    );
    assert_eq!(
        block_status(&mut c, 3, FLAG_REQ_ONE, 0, 16 * MIB as u32),
        [(MIB as u32, HZ)]
    );
    // A trim punches the hole back and block status sees it.
    assert_eq!(c.simple(CMD_TRIM, 0, 4, MIB, 64 * KIB as u32), 0);
    assert_eq!(
        block_status(&mut c, 5, 0, 0, 8 * MIB as u32),
        [(8 * MIB as u32, HZ)]
    );
    // Past the end: a structured error, and the connection goes on.
    c.request(CMD_BLOCK_STATUS, 0, 6, 16 * MIB, 1);
    let e = c.chunks();
    assert_eq!(e[0].1, REPLY_TYPE_ERROR, "{e:?}");
    assert_eq!(be32(&e[0].3), EINVAL);
    // Without a selected context, block status is invalid.
    let (mut c2, _) = structured_client(&s, false);
    c2.request(CMD_BLOCK_STATUS, 0, 7, 0, 4096);
    let e = c2.chunks();
    assert_eq!((e[0].1, be32(&e[0].3)), (REPLY_TYPE_ERROR, EINVAL));
}

#[test]
fn structured_reads_send_holes_as_holes_and_df_in_one_chunk() {
    let (s, want) = sparse_served();
    let (mut c, _) = structured_client(&s, true);
    let (got, kinds) = structured_read(&mut c, 1, 0, 0, 2 * MIB as u32);
    assert_eq!(got, want[..2 * MIB as usize]);
    assert_eq!(
        kinds,
        [
            REPLY_TYPE_OFFSET_HOLE,
            REPLY_TYPE_OFFSET_DATA,
            REPLY_TYPE_OFFSET_HOLE
        ]
    );
    // Don't fragment: one data chunk, zeros included.
    let (got, kinds) = structured_read(&mut c, 2, 4, 960 * KIB, 128 * KIB as u32);
    assert_eq!(got, want[960 * KIB as usize..1088 * KIB as usize]);
    assert_eq!(kinds, [REPLY_TYPE_OFFSET_DATA]);
    let (got, _) = structured_read(&mut c, 3, 0, 7 * MIB + 3, 2 * MIB as u32);
    assert_eq!(got, want[(7 * MIB + 3) as usize..(9 * MIB + 3) as usize]);
    // An empty read is one NONE chunk.
    c.request(CMD_READ, 0, 4, 0, 0);
    let n = c.chunks();
    assert_eq!((n.len(), n[0].1), (1, REPLY_TYPE_NONE));
    // Errors on reads are structured too (a simple reply would be
    // ambiguous), and the connection stays in step.
    c.request(CMD_READ, 0, 5, 16 * MIB - 1, 2);
    let e = c.chunks();
    assert_eq!((e[0].1, be32(&e[0].3)), (REPLY_TYPE_ERROR, EINVAL));
    let msg_len = u16::from_be_bytes([e[0].3[4], e[0].3[5]]) as usize;
    assert!(String::from_utf8_lossy(&e[0].3[6..6 + msg_len]).contains("refused"));
    // Writes and cache stay simple replies, which is allowed.
    assert_eq!(c.simple(CMD_CACHE, 0, 6, 0, MIB as u32), 0);
    assert_eq!(c.write(7, 0, b"hello", 0), 0);
    let (got, _) = structured_read(&mut c, 8, 0, 0, 5);
    assert_eq!(got, b"hello");
}

#[test]
fn clients_without_structured_replies_still_get_simple_ones() {
    let (s, want) = sparse_served();
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    assert_eq!(
        c.read(1, 0, 2 * MIB as u32).unwrap(),
        want[..2 * MIB as usize]
    );
    assert_eq!(c.simple(CMD_CACHE, 0, 2, 0, 4096), 0);
    assert_eq!(c.read(3, 16 * MIB, 1), Err(EINVAL));
    assert_eq!(c.simple(CMD_BLOCK_STATUS, 0, 4, 0, 4096), EINVAL);
}

// ------------------------------------------------------------ real clients

/// `nbdinfo --map --json`: (offset, length, type) per extent.
fn nbdinfo_map(uri: &str) -> Vec<(u64, u64, u64)> {
    let r = run_tool("nbdinfo", &["--map", "--json", uri], LIMIT);
    r.assert_ok("nbdinfo --map");
    let v: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("nbdinfo JSON: {e}\n{}", r.stdout));
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn nbdinfo_map_shows_holes_and_data() {
    let (s, _) = sparse_served();
    for uri in [s.unix_uri(), s.tcp_uri()] {
        assert_eq!(
            nbdinfo_map(&uri),
            [
                (0, MIB, 3),
                (MIB, 64 * KIB, 0),
                (MIB + 64 * KIB, 7 * MIB - 64 * KIB, 3),
                (8 * MIB, MIB, 0),
                (9 * MIB, 7 * MIB, 3),
            ],
            "{uri}"
        );
    }
    // The human form says it in words.
    let r = run_tool("nbdinfo", &["--map", &s.unix_uri()], LIMIT);
    r.assert_ok("nbdinfo --map");
    assert!(
        r.stdout.contains("hole,zero") && r.stdout.contains("data"),
        "{}",
        r.stdout
    );
}

#[test]
fn qemu_img_map_shows_data_and_zero_ranges() {
    let (s, _) = sparse_served();
    let r = run_tool(
        "qemu-img",
        &["map", "--output=json", "-f", "raw", &s.unix_uri()],
        LIMIT,
    );
    r.assert_ok("qemu-img map");
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let map: Vec<(u64, u64, bool, bool)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["start"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["data"].as_bool().unwrap(),
                e["zero"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        map,
        [
            (0, MIB, false, true),
            (MIB, 64 * KIB, true, false),
            (MIB + 64 * KIB, 7 * MIB - 64 * KIB, false, true),
            (8 * MIB, MIB, true, false),
            (9 * MIB, 7 * MIB, false, true),
        ],
        "{}",
        r.stdout
    );
}

/// Bytes a file really occupies on disk.
fn allocated(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn nbdcopy_skips_the_holes_of_the_export() {
    let (s, want) = sparse_served();
    // `--sparse=0` turns off nbdcopy's own scanning for zero blocks, so the
    // only way it can leave holes in the copy is the export's block status.
    let copy = |extra: &[&str], name: &str| {
        let dst = s.dir.path().join(name);
        let mut args = vec!["--sparse=0"];
        args.extend_from_slice(extra);
        let uri = s.unix_uri();
        args.push(&uri);
        let d = dst.to_str().unwrap().to_string();
        args.push(&d);
        run_tool("nbdcopy", &args, LIMIT).assert_ok("nbdcopy from the export");
        assert_eq!(std::fs::read(&dst).unwrap(), want, "{name}: copy differs");
        allocated(&dst)
    };
    let with_extents = copy(&[], "with-extents.img");
    let without = copy(&["--no-extents"], "no-extents.img");
    assert!(
        with_extents <= 2 * MIB,
        "the copy holds {with_extents} bytes for 1.06 MiB of data: holes were copied as zeros"
    );
    // The control: the same copy without block status fills every hole,
    // so the measurement above can tell the two apart.
    assert!(
        without >= 15 * MIB,
        "control copy holds only {without} bytes"
    );
}
