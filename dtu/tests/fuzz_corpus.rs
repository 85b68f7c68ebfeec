//! Replays the dtu fuzz corpora (dtu/fuzz/corpus/{nbd_requests,nvbuf_recovery,config_control})
//! with the fuzz targets' own checks, so every seed, every input the fuzzer
//! kept and every crash it found and we fixed runs in CI without cargo-fuzz.
//!
//! The seeds are written by `write_seed_corpus` (ignored; run it with
//! `cargo test -p dtu --test fuzz_corpus -- --ignored` to regenerate them).
//! Regression inputs of fixed crashes sit beside them, named after the bug.

use std::path::{Path, PathBuf};

use dtu::fuzzing::{
    config_control, config_control_mode as mode, nbd_requests, nvbuf_recovery, NVBUF_VOLUME,
};
use dtu::nbd::ConnectionEnd;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(corpus(target))
        .expect("corpus directory")
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    out.sort();
    out
}

#[test]
fn nbd_requests_corpus_replays_cleanly() {
    let files = files("nbd_requests");
    assert!(files.len() >= 20, "corpus has only {} files", files.len());
    let (mut disconnected, mut served) = (0, 0);
    for (name, data) in &files {
        let s = nbd_requests(data);
        eprintln!("{name}: {s:?}");
        disconnected += usize::from(matches!(s.end, Ok(ConnectionEnd::Disconnected)));
        served += usize::from(s.export_calls > 0);
        if name.contains("structured-meta-block-status") {
            // Block status, sparse reads and cache all reached the export.
            assert!(
                matches!(s.end, Ok(ConnectionEnd::Disconnected)) && s.export_calls >= 5,
                "{name}: {s:?}"
            );
        }
    }
    // The valid sessions among the seeds must still get through the
    // handshake to requests, or the corpus has gone stale.
    assert!(
        disconnected >= 5 && served >= 5,
        "{disconnected} sessions ended by NBD_CMD_DISC, {served} reached the export"
    );
}

#[test]
fn nvbuf_recovery_corpus_replays_cleanly() {
    let files = files("nvbuf_recovery");
    assert!(files.len() >= 15, "corpus has only {} files", files.len());
    let mut recovering = 0;
    for (name, data) in &files {
        let records = nvbuf_recovery(data);
        eprintln!("{name}: {records} records recovered");
        recovering += usize::from(records > 0);
    }
    assert!(
        recovering >= 8,
        "only {recovering} inputs recovered any record"
    );
}

#[test]
fn config_control_corpus_replays_cleanly() {
    let files = files("config_control");
    assert!(files.len() >= 20, "corpus has only {} files", files.len());
    let (mut configs_ok, mut configs_refused) = (0, 0);
    let (mut requests_ok, mut requests_refused) = (0, 0);
    for (name, data) in &files {
        let run = config_control(data);
        eprintln!("{name}: {run:?}");
        configs_ok += run.configs_ok;
        configs_refused += run.configs_refused;
        requests_ok += run.requests_ok;
        requests_refused += run.requests_refused;
    }
    // The seeds must still reach both sides of every check, or the
    // corpus has gone stale (a template no longer valid, say).
    assert!(
        configs_ok >= 2 && configs_refused >= 10 && requests_ok >= 5 && requests_refused >= 5,
        "configs {configs_ok} accepted, {configs_refused} refused; \
         requests {requests_ok} accepted, {requests_refused} refused"
    );
}

// ---------------------------------------------------------------------------
// Seeds.

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
const REQUEST_MAGIC: u32 = 0x2560_9513;

fn option(opt: u32, payload: &[u8]) -> Vec<u8> {
    option_len(opt, payload.len() as u32, payload)
}

fn option_len(opt: u32, len: u32, payload: &[u8]) -> Vec<u8> {
    [
        &IHAVEOPT.to_be_bytes()[..],
        &opt.to_be_bytes(),
        &len.to_be_bytes(),
        payload,
    ]
    .concat()
}

fn info(name: &[u8], infos: &[u16]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

fn request(cmd: u16, flags: u16, handle: u64, offset: u64, len: u32) -> Vec<u8> {
    [
        &REQUEST_MAGIC.to_be_bytes()[..],
        &flags.to_be_bytes(),
        &cmd.to_be_bytes(),
        &handle.to_be_bytes(),
        &offset.to_be_bytes(),
        &len.to_be_bytes(),
    ]
    .concat()
}

fn write(handle: u64, offset: u64, len: u32, flags: u16) -> Vec<u8> {
    let mut r = request(1, flags, handle, offset, len);
    r.extend((0..len).map(|i| (i as u8) ^ (handle as u8)));
    r
}

fn disc() -> Vec<u8> {
    request(2, 0, 0, 0, 0)
}

/// Fixed newstyle with no zeroes, then NBD_OPT_GO for the default export.
fn go() -> Vec<u8> {
    [3u32.to_be_bytes().to_vec(), option(7, &info(b"", &[3]))].concat()
}

fn nbd_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let rw = [
        go(),
        write(1, 0, 512, 0),
        request(0, 0, 2, 0, 512),
        request(3, 0, 3, 0, 0),
        disc(),
    ]
    .concat();
    vec![
        ("go-write-read-flush-disc", rw),
        (
            "export-name-fua-trim-zeroes-cache-disc",
            [
                3u32.to_be_bytes().to_vec(),
                option(1, b"vol"),
                write(1, 4096, 1024, 1),
                request(4, 1, 2, 0, 4096),
                request(6, 2, 3, 8192, 65536 - 8192),
                request(5, 0, 4, 0, 4096),
                request(0, 0, 5, 65536 - 512, 512),
                disc(),
            ]
            .concat(),
        ),
        (
            "old-newstyle-export-name-read-disc",
            [
                0u32.to_be_bytes().to_vec(),
                option(1, b""),
                request(0, 0, 1, 0, 4096),
                disc(),
            ]
            .concat(),
        ),
        (
            "list-info-go-wrong-name-then-go",
            [
                3u32.to_be_bytes().to_vec(),
                option(3, b""),
                option(3, b"x"),
                option(6, &info(b"vol", &[0, 1, 2, 3])),
                option(7, &info(b"other", &[])),
                option(7, &info(b"vol", &[1])),
                write(9, 100, 10, 0),
                request(0, 0, 10, 100, 10),
                disc(),
            ]
            .concat(),
        ),
        (
            "unsupported-options-then-go",
            [
                3u32.to_be_bytes().to_vec(),
                option(5, b""),
                option(8, b""),
                option(9, b"\0\0\0\0\0\0\0\0"),
                option(10, b""),
                option(11, b""),
                option(0x7fff_0000, b"abc"),
                option(6, b"\0\0\0\x09short"),
                go()[4..].to_vec(),
                request(3, 0, 1, 0, 0),
                disc(),
            ]
            .concat(),
        ),
        (
            "pipelined-writes-reads",
            [
                go(),
                write(1, 0, 4096, 0),
                write(2, 4096, 4096, 1),
                request(0, 0, 3, 0, 8192),
                write(4, 60000, 5536, 0),
                request(0, 0, 5, 1, 65535),
                request(3, 1, 6, 0, 0),
                request(0, 0, 7, 0, 1),
                disc(),
            ]
            .concat(),
        ),
        (
            "abort",
            [3u32.to_be_bytes().to_vec(), option(2, b"")].concat(),
        ),
        ("bad-client-flags", 0x8000_0003u32.to_be_bytes().to_vec()),
        (
            "bad-option-magic",
            [3u32.to_be_bytes().to_vec(), vec![0x49; 16]].concat(),
        ),
        (
            "option-too-big-read-and-refused",
            [
                3u32.to_be_bytes().to_vec(),
                option(6, &vec![7; 5000]),
                go()[4..].to_vec(),
                disc(),
            ]
            .concat(),
        ),
        (
            "option-above-discard-limit",
            [3u32.to_be_bytes().to_vec(), option_len(7, 70_000, b"x")].concat(),
        ),
        (
            "export-name-unknown",
            [3u32.to_be_bytes().to_vec(), option(1, b"nope")].concat(),
        ),
        (
            "old-newstyle-sends-go",
            [0u32.to_be_bytes().to_vec(), option(7, &info(b"", &[]))].concat(),
        ),
        (
            "too-many-options",
            [
                3u32.to_be_bytes().to_vec(),
                (0..70).flat_map(|_| option(3, b"")).collect(),
            ]
            .concat(),
        ),
        (
            "truncated-handshake",
            [
                3u32.to_be_bytes().to_vec(),
                option(7, &info(b"vol", &[]))[..20].to_vec(),
            ]
            .concat(),
        ),
        (
            "bad-request-magic",
            [go(), write(1, 0, 16, 0), vec![0x25; 28]].concat(),
        ),
        (
            "write-past-end-discarded",
            [
                go(),
                write(1, 65536 - 8, 16, 0),
                write(2, u64::MAX - 4, 8, 0),
                request(0, 0, 3, 65536 - 8, 8),
                disc(),
            ]
            .concat(),
        ),
        (
            "write-above-maximum-closes",
            [go(), request(1, 0, 1, 0, (32 << 20) + 1), vec![1; 100]].concat(),
        ),
        (
            "bad-flags-and-commands",
            [
                go(),
                request(0, 4, 1, 0, 512),
                request(3, 0, 2, 0, 1),
                request(3, 0, 3, 1, 0),
                request(7, 0, 4, 0, 512),
                request(99, 0, 5, 0, 0),
                request(6, 16, 6, 0, 512),
                request(4, 0, 7, 65536, 1),
                request(0, 0, 8, 0, 64 << 20),
                request(5, 0, 9, 0, (32 << 20) + 1),
                write(10, 0, 8, 2),
                disc(),
            ]
            .concat(),
        ),
        (
            "truncated-write-payload",
            [go(), request(1, 0, 1, 0, 4096), vec![9; 1000]].concat(),
        ),
        (
            "eof-mid-request-header",
            [go(), request(0, 0, 1, 0, 512)[..13].to_vec()].concat(),
        ),
        ("empty", Vec::new()),
        (
            "structured-meta-block-status-sparse-read-cache",
            [
                3u32.to_be_bytes().to_vec(),
                option(8, b""),
                option(9, &meta(b"", &[])),
                option(10, &meta(b"vol", &[b"base:allocation", b"x-other:thing"])),
                option(7, &info(b"vol", &[3])),
                write(1, 4096, 1024, 0),
                request(7, 0, 2, 0, 65536),
                request(7, 8, 3, 0, 65536),
                request(0, 0, 4, 0, 65536),
                request(0, 4, 5, 0, 16384),
                request(0, 0, 6, 0, 0),
                request(5, 0, 7, 0, 65536),
                request(0, 0, 8, 65536 - 4, 8),
                request(7, 0, 9, 0, 0),
                disc(),
            ]
            .concat(),
        ),
        (
            "meta-before-structured-and-malformed",
            [
                3u32.to_be_bytes().to_vec(),
                option(10, &meta(b"vol", &[b"base:allocation"])),
                option(8, b"x"),
                option(8, b""),
                option(10, &meta(b"vol", &[b"base:allocation"])[..20]),
                option(10, &meta(b"vol", &[b"allocation"])),
                option(10, &meta(b"other", &[b"base:allocation"])),
                option(9, &meta(b"vol", &[b"base:"])),
                option(10, &{
                    let mut m = meta(b"", &[]);
                    m.truncate(4);
                    m.extend_from_slice(&u32::MAX.to_be_bytes());
                    m
                }),
                go()[4..].to_vec(),
                request(7, 0, 1, 0, 4096),
                request(0, 4, 2, 0, 512),
                disc(),
            ]
            .concat(),
        ),
        (
            "starttls-refused-or-started-then-go",
            [
                3u32.to_be_bytes().to_vec(),
                option(5, b""),
                go()[4..].to_vec(),
                write(1, 0, 100, 1),
                disc(),
            ]
            .concat(),
        ),
        (
            "starttls-then-clienthello-garbage",
            [
                3u32.to_be_bytes().to_vec(),
                option(5, b""),
                vec![0x16, 0x03, 0x01, 0x00, 0x40],
                (0..64u8).collect(),
            ]
            .concat(),
        ),
        (
            "tls-required-options-then-export-name",
            [
                3u32.to_be_bytes().to_vec(),
                option(3, b""),
                option(6, &info(b"vol", &[0])),
                option(8, b""),
                option(5, b"unexpected"),
                option(1, b"vol"),
                request(0, 0, 1, 0, 512),
                disc(),
            ]
            .concat(),
        ),
    ]
}

/// A meta context option's payload.
fn meta(name: &[u8], queries: &[&[u8]]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(&(queries.len() as u32).to_be_bytes());
    for q in queries {
        p.extend_from_slice(&(q.len() as u32).to_be_bytes());
        p.extend_from_slice(q);
    }
    p
}

mod nv {
    //! Builders of nvbuf seed images through the real API.
    use super::NVBUF_VOLUME;
    use dtu::nvbuf::format::MIN_SIZE;
    use dtu::nvbuf::{MemStore, Nvbuf, NvbufConfig, RecordHeader, Wait};

    pub fn fresh() -> Nvbuf<MemStore> {
        let cfg = NvbufConfig::new(NVBUF_VOLUME).with_size(MIN_SIZE);
        Nvbuf::create_in(MemStore::new(MIN_SIZE as usize), &cfg).unwrap()
    }

    /// Appends one seq per entry of `seqs` (its chunks' payload lengths) and
    /// syncs.
    pub fn append(nv: &Nvbuf<MemStore>, seqs: &[&[usize]]) {
        let mut lsn = 0;
        for sizes in seqs {
            let seq = nv.next_seq();
            for (i, &len) in sizes.iter().enumerate() {
                let h = RecordHeader {
                    seq,
                    epoch: nv.epoch(),
                    offset: seq * 4096,
                    length: len as u32,
                    flags: 7,
                    chunk_index: i as u32,
                    chunk_count: sizes.len() as u32,
                };
                let p: Vec<u8> = (0..len).map(|j| (j as u8) ^ (seq as u8)).collect();
                lsn = nv
                    .append(&h, &p, std::time::Instant::now(), Wait::Forever)
                    .unwrap();
            }
        }
        nv.sync_to(lsn).unwrap();
    }

    pub fn reopen(nv: Nvbuf<MemStore>) -> Nvbuf<MemStore> {
        Nvbuf::open_in(nv.into_store(), NVBUF_VOLUME).unwrap().0
    }

    /// A raw-mode input: the mode byte, then the image without its trailing
    /// zeros (the target zero-fills it back to the 4 MiB minimum).
    pub fn raw(mode: u8, nv: &Nvbuf<MemStore>) -> Vec<u8> {
        let mut img = nv.store().working_image();
        let end = img.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        img.truncate(end);
        [vec![mode], img].concat()
    }
}

fn nvbuf_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let empty = nv::fresh();
    out.push(("raw-empty", nv::raw(0, &empty)));
    let three = nv::fresh();
    nv::append(&three, &[&[100], &[10, 0, 30], &[200]]);
    out.push(("raw-three-seqs", nv::raw(0, &three)));
    out.push(("raw-three-seqs-fix-crc", nv::raw(2, &three)));
    // A dropped incomplete seq: the last seq's second chunk is missing.
    let torn = nv::fresh();
    nv::append(&torn, &[&[50, 50]]);
    let mut t = nv::raw(0, &torn);
    t.truncate(t.len() - 40);
    out.push(("raw-torn-last-chunk", t));
    let epochs = nv::fresh();
    nv::append(&epochs, &[&[64], &[8, 8]]);
    let epochs = nv::reopen(epochs);
    nv::append(&epochs, &[&[16], &[300]]);
    out.push(("raw-two-epochs", nv::raw(0, &epochs)));
    let released = nv::fresh();
    nv::append(&released, &[&[40], &[40], &[40], &[1000]]);
    released.release_through(2);
    released.checkpoint().unwrap();
    out.push(("raw-released-checkpointed", nv::raw(2, &released)));
    out.push(("raw-garbage", b"\0DTUNVBUF\x01\0\0\0garbage".to_vec()));

    // Structured (layout in dtu::fuzzing): chunk lengths are in units of
    // 3 bytes; `reopen` 255 means none; image 0 working bytes, 1 flushed
    // pages, 2+ torn sectors with that seed; damage ops [op, a, b, c].
    let base = Build {
        seqs: &[&[40], &[40, 0], &[10, 10, 10]],
        ..Build::default()
    };
    let wrap = |gap| Build {
        gap: Some(gap),
        ..base
    };
    let damaged = |ops: &'static [[u8; 4]]| Build {
        damage: ops,
        ..base
    };
    out.push(("struct-plain", base.bytes()));
    out.push(("struct-wrap-gap-0", wrap(0).bytes()));
    out.push(("struct-wrap-gap-48-no-marker", wrap(48).bytes()));
    out.push(("struct-wrap-gap-1024-marker", wrap(1024).bytes()));
    out.push((
        "struct-reopen-release",
        Build {
            reopen: 2,
            release: 2,
            ..base
        }
        .bytes(),
    ));
    out.push((
        "struct-unsynced-crash-image",
        Build {
            unsynced: 2,
            image: 1,
            ..base
        }
        .bytes(),
    ));
    out.push((
        "struct-wrap-unsynced-torn",
        Build {
            unsynced: 1,
            image: 77,
            ..wrap(32)
        }
        .bytes(),
    ));
    // xor in one superblock's crc (the other one is used), then in both.
    out.push((
        "struct-xor-superblock",
        damaged(&[[0, 12, 0, 0xff]]).bytes(),
    ));
    out.push((
        "struct-xor-both-superblocks",
        damaged(&[[0, 12, 0, 0xff], [0, 80, 16, 1]]).bytes(),
    ));
    // xor in the second seq's header and in the last payload.
    out.push((
        "struct-xor-log",
        damaged(&[[1, 200, 0, 0x10], [1, 150, 1, 0x80]]).bytes(),
    ));
    out.push((
        "struct-xor-anywhere",
        damaged(&[[2 | 3 << 2, 0, 0x21, 0x40], [2, 7, 7, 7]]).bytes(),
    ));
    out.push(("struct-zero-range", damaged(&[[3, 200, 0, 100]]).bytes()));
    out.push(("struct-truncate", damaged(&[[7, 0, 16, 0]]).bytes()));
    out.push((
        "struct-wrap-damage-marker",
        Build {
            // The wrap marker's lsn: 432 bytes of records, then no room.
            damage: &[[1, 0xb4, 0x01, 0xff]],
            ..wrap(512)
        }
        .bytes(),
    ));
    out
}

/// A structured-mode nvbuf input.
#[derive(Clone, Copy)]
struct Build {
    gap: Option<u16>,
    seqs: &'static [&'static [u8]],
    reopen: u8,
    release: u8,
    unsynced: u8,
    image: u8,
    damage: &'static [[u8; 4]],
}

impl Default for Build {
    fn default() -> Self {
        Build {
            gap: None,
            seqs: &[&[1]],
            reopen: 255,
            release: 0,
            unsynced: 0,
            image: 0,
            damage: &[],
        }
    }
}

impl Build {
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![1, u8::from(self.gap.is_some())];
        b.extend_from_slice(&self.gap.unwrap_or(0).to_le_bytes());
        b.push(self.seqs.len() as u8 - 1);
        for chunks in self.seqs {
            b.push(chunks.len() as u8 - 1);
            b.extend_from_slice(chunks);
        }
        b.extend_from_slice(&[self.reopen, self.release, self.unsynced, self.image]);
        b.extend(self.damage.iter().flatten());
        b
    }
}

fn config_seed(m: u8, rest: &[u8]) -> Vec<u8> {
    [&[m][..], rest].concat()
}

/// One edit of a template line: the line's position among the `key = value`
/// lines of the template, and its new raw value (empty: remove the line).
fn edit(line: u8, value: &str) -> Vec<u8> {
    [&[line][..], value.as_bytes(), b"\n"].concat()
}

/// The position of `key`'s line among the template's `key = value` lines.
fn line_of(template: &str, section: &str, key: &str) -> u8 {
    let mut in_section = false;
    let mut n = 0u8;
    for l in template.lines() {
        if l.starts_with('[') {
            in_section = l == format!("[{section}]");
        } else if l.contains(" = ") {
            if in_section && l.starts_with(&format!("{key} = ")) {
                return n;
            }
            n += 1;
        }
    }
    panic!("{section}.{key} is not in the template");
}

fn config_seeds() -> Vec<(&'static str, Vec<u8>)> {
    use dtu::fuzzing::{PRIMARY_TEMPLATE as P, REMOTE_TEMPLATE as R};
    let p = |section, key, value: &str| edit(line_of(P, section, key), value);
    let r = |section, key, value: &str| edit(line_of(R, section, key), value);
    let primary_edits = |e: Vec<u8>| config_seed(mode::PRIMARY_EDITS, &e);
    let remote_edits = |e: Vec<u8>| config_seed(mode::REMOTE_EDITS, &e);
    vec![
        (
            "primary-valid",
            config_seed(mode::PRIMARY_TEXT, P.as_bytes()),
        ),
        ("remote-valid", config_seed(mode::REMOTE_TEXT, R.as_bytes())),
        ("primary-empty", config_seed(mode::PRIMARY_TEXT, b"")),
        (
            "primary-not-toml",
            config_seed(mode::PRIMARY_TEXT, b"[volume\nid = = 3"),
        ),
        (
            "primary-unknown-key",
            config_seed(
                mode::PRIMARY_TEXT,
                format!("{P}[extra]\nbogus = 1\n").as_bytes(),
            ),
        ),
        (
            "primary-block-size-zero",
            primary_edits(p("volume", "block_size", "0")),
        ),
        (
            "primary-block-size-odd",
            primary_edits(p("volume", "block_size", "6144")),
        ),
        (
            "primary-block-size-negative",
            primary_edits(p("volume", "block_size", "-4096")),
        ),
        (
            "primary-size-huge",
            primary_edits(p("volume", "size", "\"1e30\"")),
        ),
        (
            "primary-size-not-multiple",
            primary_edits(p("volume", "size", "\"1000\"")),
        ),
        (
            "primary-delay-1e19s",
            primary_edits(p("policy", "delay", "\"1e19s\"")),
        ),
        (
            "primary-delay-negative",
            primary_edits(p("policy", "delay", "\"-1ms\"")),
        ),
        (
            "primary-delay-max",
            primary_edits(p("policy", "delay", "\"60s\"")),
        ),
        (
            "primary-threshold-nan",
            primary_edits(p("policy", "dirty_threshold", "nan")),
        ),
        (
            "primary-threshold-inf",
            primary_edits(p("policy", "dirty_threshold", "inf")),
        ),
        (
            "primary-trigger-unknown",
            primary_edits(p("policy", "trigger", "\"eventually\"")),
        ),
        (
            "primary-rtt-huge",
            primary_edits(p("link", "rtt", "\"1e19s\"")),
        ),
        (
            "primary-rate-huge",
            primary_edits(p("link", "rate", "\"1e30\"")),
        ),
        (
            "primary-rate-unlimited",
            primary_edits(p("link", "rate", "\"unlimited\"")),
        ),
        (
            "primary-lanes-huge",
            primary_edits(p("link", "lanes", "18446744073709551615")),
        ),
        (
            "primary-lanes-overflow",
            primary_edits(p("link", "lanes", "18446744073709551616")),
        ),
        (
            "primary-workers-huge",
            primary_edits(p("pipeline", "workers", "1099511627776")),
        ),
        (
            "primary-chunk-tiny",
            primary_edits(p("pipeline", "chunk_size", "\"1\"")),
        ),
        (
            "primary-nvbuf-tiny",
            primary_edits(p("nvbuf", "size", "\"4KiB\"")),
        ),
        ("primary-no-remote", primary_edits(p("link", "remote", ""))),
        (
            "primary-bad-address",
            primary_edits(p("nbd", "tcp", "\"localhost\"")),
        ),
        (
            "primary-many-edits",
            primary_edits(
                [
                    p("policy", "delay", "\"59.999s\""),
                    p("policy", "trigger", "\"received\""),
                    p("link", "rtt", "\"10s\""),
                    p("volume", "size", "\"1024TiB\""),
                ]
                .concat(),
            ),
        ),
        (
            "remote-block-size-zero",
            remote_edits(r("volume", "block_size", "0")),
        ),
        (
            "remote-rtt-negative",
            remote_edits(r("link", "rtt", "\"-5ms\"")),
        ),
        ("remote-no-listen", remote_edits(r("link", "listen", ""))),
        (
            "remote-congestion-unknown",
            remote_edits(r("link", "congestion", "\"vegas\"")),
        ),
        (
            "control-valid",
            config_seed(
                mode::CONTROL_LINES,
                dtu::fuzzing::CONTROL_TEMPLATE.as_bytes(),
            ),
        ),
        (
            "control-bad-lines",
            config_seed(
                mode::CONTROL_LINES,
                concat!(
                    "{\"op\":\"set-policy\",\"delay\":\"1e19s\"}\n",
                    "{\"op\":\"set-policy\",\"delay\":\"nan\"}\n",
                    "{\"op\":\"set-policy\",\"dirty_threshold\":1e308}\n",
                    "{\"op\":\"set-policy\",\"trigger\":\"later\"}\n",
                    "{\"op\":\"dirty\",\"pct\":-1}\n",
                    "{\"op\":\"dirty\",\"pct\":\"90\"}\n",
                    "{\"op\":\"launch\"}\n",
                    "not json\n",
                    "{}\n",
                )
                .as_bytes(),
            ),
        ),
        (
            "control-long-label",
            config_seed(
                mode::CONTROL_LINES,
                format!(
                    "{{\"op\":\"checkpoint\",\"label\":\"{}\"}}\n",
                    "x".repeat(300)
                )
                .as_bytes(),
            ),
        ),
        (
            "control-edits",
            config_seed(
                mode::CONTROL_EDITS,
                &[
                    &[1u8, 2][..],
                    b"\"1e19s\"\n",
                    &[3, 1],
                    b"1e999\n",
                    &[2, 0],
                    b"\"set-policy\"\n",
                    &[4, 1],
                    b"not json\n",
                ]
                .concat(),
            ),
        ),
    ]
}

/// Regenerates the seed files (the fuzzer's finds and regression inputs in
/// the same directories are left alone).
#[test]
#[ignore = "writes the seed corpus into the source tree"]
fn write_seed_corpus() {
    for (target, seeds) in [
        ("nbd_requests", nbd_seeds()),
        ("nvbuf_recovery", nvbuf_seeds()),
        ("config_control", config_seeds()),
    ] {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
        }
    }
}
