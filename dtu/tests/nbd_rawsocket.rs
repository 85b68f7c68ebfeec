//! The NBD server at the byte level, through a raw socket client: every
//! handshake and transmission rule of proto.md that a well-behaved client
//! never exercises — bad lengths, unknown options and commands, bad magic,
//! out-of-range and oversized requests, pipelining, disconnect with requests
//! in flight, shutdown — with the connection's state checked after each.

mod nbd_harness;

use std::time::{Duration, Instant};

use nbd_harness::*;

const MIB: u64 = 1 << 20;

fn served(size: u64, read_only: bool) -> Served {
    let content = random_bytes(size as usize, 99);
    Served::start(ServeOpts {
        size,
        read_only,
        initial: Some(&content),
        description: Some("raw socket tests"),
        ..ServeOpts::default()
    })
}

// ----------------------------------------------------------------- handshake

#[test]
fn greeting_is_fixed_newstyle_with_no_zeroes() {
    let s = served(MIB, false);
    let (_c, flags) = RawClient::connect_unix(&s.socket);
    assert_eq!(flags, 0b11);
    let (_c, flags) = RawClient::connect_tcp(s.tcp);
    assert_eq!(flags, 0b11);
}

#[test]
fn unknown_client_flags_drop_the_connection() {
    let s = served(MIB, false);
    let (mut c, _) = RawClient::connect_unix(&s.socket);
    c.put(&(3u32 | 1 << 7).to_be_bytes());
    assert!(
        c.closed_by_server(),
        "server kept a client with unknown flags"
    );
}

#[test]
fn unsupported_options_get_err_unsup_and_their_payload_is_skipped() {
    let s = served(MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    // TLS (not configured on this server), extended headers and two
    // options nobody defined.
    let cases: Vec<(u32, Vec<u8>)> = vec![
        (OPT_STARTTLS, vec![]),
        (OPT_EXTENDED_HEADERS, vec![]),
        (4, vec![1, 2, 3]),
        (0x1234_5678, vec![0xa5; 3000]),
    ];
    for (opt, payload) in cases {
        c.option(opt, &payload);
        let r = c.option_replies();
        assert_eq!(r.len(), 1, "option {opt}: {r:?}");
        assert_eq!(r[0].0, opt, "reply must echo the option");
        assert_eq!(r[0].1, REP_ERR_UNSUP, "option {opt}");
    }
    // Still in step: the export can be chosen and used.
    let (size, _) = c.go("vol", &[]).expect("GO after refusals");
    assert_eq!(size, MIB);
    assert!(c.read(1, 0, 512).is_ok());
}

#[test]
fn malformed_info_and_go_payloads_get_err_invalid_and_the_session_goes_on() {
    let s = served(MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    let good = RawClient::info_payload(b"vol", &[INFO_NAME]);
    let mut name_too_long = good.clone();
    name_too_long[3] = 200; // name length beyond the option length - 6
    let mut count_too_big = good.clone();
    let at = 4 + 3;
    count_too_big[at..at + 2].copy_from_slice(&5u16.to_be_bytes());
    let mut trailing = good.clone();
    trailing.push(0);
    let cases = [
        vec![],
        vec![0, 0, 0],
        vec![0, 0, 0, 0, 0],
        name_too_long,
        count_too_big,
        trailing,
        good[..good.len() - 1].to_vec(),
    ];
    for opt in [OPT_INFO, OPT_GO] {
        for p in &cases {
            c.option(opt, p);
            let r = c.option_replies();
            assert_eq!(r.len(), 1, "{p:?}: {r:?}");
            assert_eq!((r[0].0, r[0].1), (opt, REP_ERR_INVALID), "payload {p:?}");
        }
    }
    // NBD_OPT_LIST takes no data.
    c.option(OPT_LIST, b"x");
    assert_eq!(c.option_replies()[0].1, REP_ERR_INVALID);
    assert!(c.go("vol", &[]).is_ok());
}

#[test]
fn unknown_export_names_get_err_unknown_and_empty_name_is_the_default() {
    let s = served(MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    for opt in [OPT_INFO, OPT_GO] {
        c.option(opt, &RawClient::info_payload(b"other", &[]));
        let r = c.option_replies();
        assert_eq!(r.len(), 1, "no NBD_REP_INFO before ERR_UNKNOWN: {r:?}");
        assert_eq!(r[0].1, REP_ERR_UNKNOWN);
    }
    // Non-UTF-8 bytes are just another unknown name.
    c.option(OPT_GO, &RawClient::info_payload(&[0xff, 0xfe, 0], &[]));
    assert_eq!(c.option_replies()[0].1, REP_ERR_UNKNOWN);
    let (size, _) = c.go("", &[]).expect("the default export");
    assert_eq!(size, MIB);
}

#[test]
fn info_answers_what_was_asked_and_does_not_enter_transmission() {
    let s = served(3 * MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    c.option(
        OPT_INFO,
        &RawClient::info_payload(b"", &[INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE, 0x7777]),
    );
    let r = c.option_replies();
    let (size, flags) = export_info(&r).expect("INFO ends with ACK and NBD_INFO_EXPORT");
    assert_eq!(size, 3 * MIB);
    let want = TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        | TFLAG_SEND_CACHE
        | TFLAG_CAN_MULTI_CONN;
    assert_eq!(flags, want, "transmission flags {flags:#x}");
    assert_eq!(
        info_of(&r, INFO_NAME).as_deref(),
        Some(&b"vol"[..]),
        "canonical name"
    );
    assert_eq!(
        info_of(&r, INFO_DESCRIPTION).as_deref(),
        Some(&b"raw socket tests"[..])
    );
    let bs = info_of(&r, INFO_BLOCK_SIZE).expect("block sizes");
    assert_eq!(bs.len(), 12);
    let min = u32::from_be_bytes(bs[0..4].try_into().unwrap());
    let pref = u32::from_be_bytes(bs[4..8].try_into().unwrap());
    let max = u32::from_be_bytes(bs[8..12].try_into().unwrap());
    // proto.md "Block size constraints".
    assert!(min.is_power_of_two() && min <= 1 << 16, "min {min}");
    assert!(
        pref.is_power_of_two() && pref >= min.max(512),
        "preferred {pref}"
    );
    assert!(max % min == 0 && max >= pref && max >= 1 << 20, "max {max}");
    for (_, kind, d) in &r {
        if *kind == REP_INFO {
            let t = u16::from_be_bytes([d[0], d[1]]);
            assert!(t <= INFO_BLOCK_SIZE, "unknown info type {t} sent back");
        }
    }
    // Still negotiating: LIST works, then GO.
    c.option(OPT_LIST, &[]);
    let l = c.option_replies();
    assert_eq!(l.len(), 2, "{l:?}");
    assert_eq!(l[0].1, REP_SERVER);
    let name_len = u32::from_be_bytes(l[0].2[0..4].try_into().unwrap()) as usize;
    assert_eq!(&l[0].2[4..4 + name_len], b"vol");
    assert_eq!(&l[0].2[4 + name_len..], b"raw socket tests");
    assert_eq!(l[1].1, REP_ACK);
    let (size2, flags2) = c.go("vol", &[]).unwrap();
    assert_eq!((size2, flags2), (size, flags));
    assert_eq!(c.read(9, 0, 16).unwrap().len(), 16);
}

#[test]
fn oversized_options_are_refused_and_absurd_ones_drop_the_connection() {
    let s = served(MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    // 5 KiB: above the 4 KiB bound, read and refused.
    for opt in [OPT_GO, OPT_INFO, OPT_LIST] {
        let mut p = RawClient::info_payload(&[b'n'; 5000], &[]);
        if opt == OPT_LIST {
            p = vec![0; 5 << 10];
        }
        c.option(opt, &p);
        let r = c.option_replies();
        assert_eq!(r.len(), 1);
        assert!(
            r[0].1 == REP_ERR_TOO_BIG || r[0].1 == REP_ERR_INVALID,
            "option {opt}: reply {:#x}",
            r[0].1
        );
    }
    assert!(c.go("vol", &[]).is_ok(), "session unusable after a refusal");

    // A claimed 2 GiB payload is not read: the server hangs up.
    let mut c = RawClient::negotiated_unix(&s.socket);
    let mut b = Vec::new();
    b.extend_from_slice(&IHAVEOPT.to_be_bytes());
    b.extend_from_slice(&OPT_GO.to_be_bytes());
    b.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
    c.put(&b);
    let _ = c.try_put(&[0u8; 64 << 10]);
    assert!(c.closed_by_server(), "server kept a 2 GiB option");
}

#[test]
fn bad_option_magic_closes_the_connection() {
    let s = served(MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    let mut b = Vec::new();
    b.extend_from_slice(b"IHAVEOPS");
    b.extend_from_slice(&OPT_LIST.to_be_bytes());
    b.extend_from_slice(&0u32.to_be_bytes());
    c.put(&b);
    assert!(c.closed_by_server());
}

#[test]
fn abort_is_acknowledged_then_the_server_closes() {
    let s = served(MIB, false);
    let mut c = RawClient::negotiated_unix(&s.socket);
    c.option(OPT_ABORT, b"ignored data");
    let r = c.option_reply();
    assert_eq!((r.0, r.1), (OPT_ABORT, REP_ACK));
    assert!(c.closed_by_server());
}

#[test]
fn export_name_honours_no_zeroes_and_refuses_unknown_names_by_closing() {
    let s = served(2 * MIB, false);
    // Old newstyle client (no flags): 124 zero bytes follow size and flags.
    let (mut c, _) = RawClient::connect_unix(&s.socket);
    c.put(&0u32.to_be_bytes());
    c.option(OPT_EXPORT_NAME, b"vol");
    assert_eq!(c.u64(), 2 * MIB);
    assert_ne!(c.u16() & TFLAG_HAS_FLAGS, 0);
    assert_eq!(c.bytes(124), vec![0u8; 124]);
    assert_eq!(c.read(1, 0, 8).unwrap().len(), 8);

    // NO_ZEROES agreed: the first request follows size and flags directly
    // (a stray zero would desynchronise the reply).
    let mut c = RawClient::negotiated_unix(&s.socket);
    c.option(OPT_EXPORT_NAME, b"");
    assert_eq!(c.u64(), 2 * MIB);
    let _flags = c.u16();
    let data = c.read(2, 4096, 512).unwrap();
    assert_eq!(data, random_bytes(2 * MIB as usize, 99)[4096..4608]);

    // A name that does not exist: EXPORT_NAME cannot error, so it hangs up.
    let mut c = RawClient::negotiated_unix(&s.socket);
    c.option(OPT_EXPORT_NAME, b"missing");
    assert!(c.closed_by_server());

    // Without FIXED_NEWSTYLE a client has no option replies to read.
    let (mut c, _) = RawClient::connect_unix(&s.socket);
    c.put(&0u32.to_be_bytes());
    c.option(OPT_LIST, &[]);
    assert!(c.closed_by_server());
}

// -------------------------------------------------------------- transmission

#[test]
fn out_of_range_read_gets_einval_and_the_next_read_works() {
    let s = served(MIB, false);
    let content = random_bytes(MIB as usize, 99);
    for tcp in [false, true] {
        let mut c = if tcp {
            let mut c = RawClient::connect_tcp(s.tcp).0;
            c.put(&3u32.to_be_bytes());
            c.go("vol", &[]).unwrap();
            c
        } else {
            RawClient::transmission_unix(&s.socket, "vol").0
        };
        assert_eq!(c.read(1, MIB - 256, 512), Err(EINVAL));
        assert_eq!(c.read(2, MIB, 1), Err(EINVAL));
        assert_eq!(
            c.read(3, u64::MAX - 10, 512),
            Err(EINVAL),
            "offset + len overflows"
        );
        assert_eq!(
            c.read(4, MIB - 512, 512).unwrap(),
            &content[MIB as usize - 512..]
        );
        // Over the 32 MiB maximum: EINVAL, no payload, connection usable.
        assert_eq!(c.read(5, 0, (32 << 20) + 1), Err(EINVAL));
        assert_eq!(
            c.read(6, 0, 0).unwrap(),
            Vec::<u8>::new(),
            "zero-length read"
        );
        assert_eq!(c.read(7, 100, 28).unwrap(), &content[100..128]);
    }
}

#[test]
fn refused_writes_have_their_payload_consumed() {
    let s = served(MIB, false);
    let before = s.image_bytes();
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    let junk = vec![0xa5u8; 8192];
    assert_eq!(
        c.write(1, MIB - 4096, &junk, 0),
        ENOSPC,
        "write past the end"
    );
    assert_eq!(
        c.write(2, u64::MAX - 4095, &junk, 0),
        ENOSPC,
        "overflowing write"
    );
    assert_eq!(
        c.write(3, 0, &junk, FLAG_DF),
        EINVAL,
        "flag not valid on write"
    );
    assert_eq!(c.write(4, 0, &junk, 1 << 9), EINVAL, "unknown flag");
    // Had any payload been taken for a header, this would desynchronise.
    assert_eq!(c.write(5, 4096, b"hello", FLAG_FUA), 0);
    assert_eq!(c.read(6, 4096, 5).unwrap(), b"hello");
    assert_eq!(c.simple(CMD_FLUSH, 0, 7, 0, 0), 0);
    let after = s.image_bytes();
    assert_eq!(&after[4096..4101], b"hello");
    assert_eq!(&after[..4096], &before[..4096]);
    assert_eq!(
        &after[4101..],
        &before[4101..],
        "a refused write reached the file"
    );
}

#[test]
fn read_only_export_refuses_writes_trims_and_zeroes_with_eperm() {
    let s = served(MIB, true);
    let before = s.image_bytes();
    let (mut c, _, flags) = RawClient::transmission_unix(&s.socket, "vol");
    assert_ne!(flags & TFLAG_READ_ONLY, 0, "READ_ONLY flag");
    assert_eq!(c.write(1, 0, &[1u8; 4096], 0), EPERM);
    assert_eq!(c.write(2, 0, &[1u8; 4096], FLAG_FUA), EPERM);
    assert_eq!(c.simple(CMD_TRIM, 0, 3, 0, 4096), EPERM);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 4, 0, 4096), EPERM);
    assert_eq!(c.simple(CMD_FLUSH, 0, 5, 0, 0), 0, "flush is fine");
    assert_eq!(c.read(6, 0, 4096).unwrap(), &before[..4096]);
    assert_eq!(s.image_bytes(), before);
}

#[test]
fn unknown_and_unnegotiated_commands_get_einval() {
    let s = served(MIB, false);
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    assert_eq!(c.simple(CMD_BLOCK_STATUS, 0, 1, 0, 4096), EINVAL);
    assert_eq!(c.simple(42, 0, 2, 0, 0), EINVAL);
    assert_eq!(c.simple(0xffff, 0, 3, 0, 4096), EINVAL);
    assert_eq!(
        c.simple(CMD_WRITE_ZEROES, FLAG_FAST_ZERO, 4, 0, 4096),
        EINVAL
    );
    assert_eq!(
        c.simple(CMD_TRIM, 0, 5, MIB, 1),
        EINVAL,
        "trim past the end"
    );
    assert_eq!(c.simple(CMD_WRITE_ZEROES, 0, 6, MIB - 1, 2), ENOSPC);
    assert_eq!(c.simple(CMD_CACHE, 0, 7, 0, 4096), 0, "cache is a no-op");
    assert_eq!(c.simple(CMD_CACHE, 0, 8, MIB, 4096), EINVAL);
    assert_eq!(c.read(9, 0, 4).unwrap().len(), 4);
}

#[test]
fn write_zeroes_trim_and_fua_take_effect() {
    let s = served(MIB, false);
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    assert_eq!(c.simple(CMD_WRITE_ZEROES, FLAG_NO_HOLE, 1, 8192, 8192), 0);
    assert_eq!(c.simple(CMD_WRITE_ZEROES, FLAG_FUA, 2, 65536, 1000), 0);
    assert_eq!(c.simple(CMD_TRIM, FLAG_FUA, 3, 131072, 65536), 0);
    assert_eq!(c.simple(CMD_TRIM, 0, 4, 0, 0), 0, "zero-length trim");
    assert_eq!(c.write(5, 0, &[], 0), 0, "zero-length write");
    assert_eq!(c.read(6, 8192, 8192).unwrap(), vec![0u8; 8192]);
    assert_eq!(c.read(7, 65536, 1000).unwrap(), vec![0u8; 1000]);
    let img = s.image_bytes();
    assert!(img[8192..16384].iter().all(|&b| b == 0));
    assert!(img[65536..66536].iter().all(|&b| b == 0));
    assert_eq!(
        img[66536],
        random_bytes(MIB as usize, 99)[66536],
        "zeroed too far"
    );
}

#[test]
fn bad_request_magic_closes_the_connection() {
    let s = served(MIB, false);
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    let mut b = request_bytes(CMD_READ, 0, 1, 0, 512);
    b[0] = 0x12; // the historic 0x12560953 is reserved, not accepted
    b[1] = 0x56;
    b[2] = 0x09;
    b[3] = 0x53;
    c.put(&b);
    assert!(c.closed_by_server());
}

#[test]
fn a_write_over_32_mib_is_answered_then_the_connection_closes() {
    let s = served(40 * MIB, false);
    let before = s.image_bytes();
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    // Exactly 32 MiB is the advertised maximum: accepted.
    let big = random_bytes(32 << 20, 5);
    assert_eq!(c.write(1, 0, &big, 0), 0);
    assert_eq!(
        c.read(2, (32 << 20) - 16, 16).unwrap(),
        &big[(32 << 20) - 16..]
    );
    // One byte more: EINVAL, then the server hangs up without reading it.
    c.request(CMD_WRITE, 0, 3, 0, (32 << 20) + 1);
    let _ = c.try_put(&vec![0x77u8; 1 << 20]);
    let (err, h) = c.reply();
    assert_eq!((err, h), (EINVAL, 3));
    assert!(c.closed_by_server(), "connection stayed open");
    let img = s.image_bytes();
    assert_eq!(&img[..32 << 20], &big[..]);
    assert_eq!(&img[32 << 20..], &before[32 << 20..]);
    // The server still serves new connections.
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    assert_eq!(c.read(4, 0, 16).unwrap(), &big[..16]);
}

#[test]
fn pipelined_requests_all_get_exactly_one_reply() {
    let s = served(16 * MIB, false);
    let initial = random_bytes(16 * MIB as usize, 99);
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    // 200 writes sent back to back (more than the in-flight bound), then
    // 200 reads of other blocks (a client must not overlap requests in
    // flight); replies may come in any order but each handle exactly once,
    // reads with their block's data.
    let n = 200u64;
    let mut wire = Vec::new();
    for i in 0..n {
        wire.extend_from_slice(&request_bytes(CMD_WRITE, 0, i, i * 32768, 32768));
        wire.extend_from_slice(&vec![(i % 251) as u8; 32768]);
    }
    let writer_data = wire;
    // Send on another thread so this one can drain replies (the server
    // stops reading when its in-flight budget is spent).
    let mut writer = c.s.try_clone_box();
    let t = std::thread::spawn(move || {
        use std::io::Write;
        writer.write_all(&writer_data).unwrap();
        let mut reads = Vec::new();
        for i in 0..n {
            let at = 8 * MIB + i * 32768;
            reads.extend_from_slice(&request_bytes(CMD_READ, 0, 1000 + i, at, 32768));
        }
        writer.write_all(&reads).unwrap();
    });
    let mut seen = std::collections::HashSet::new();
    let mut writes_done = 0;
    while seen.len() < (2 * n) as usize {
        let (err, h) = c.reply();
        assert_eq!(err, 0, "handle {h}");
        assert!(seen.insert(h), "handle {h} answered twice");
        if h < 1000 {
            writes_done += 1;
        } else {
            let i = h - 1000;
            assert!(i < n, "unknown handle {h}");
            let data = c.bytes(32768);
            let at = (8 * MIB + i * 32768) as usize;
            assert!(data == initial[at..at + 32768], "read {i}");
        }
    }
    assert_eq!(writes_done, n);
    t.join().unwrap();
    assert_eq!(c.simple(CMD_FLUSH, 0, 5000, 0, 0), 0);
    let img = s.image_bytes();
    for i in 0..n as usize {
        let block = &img[i * 32768..(i + 1) * 32768];
        assert!(block.iter().all(|&b| b == (i % 251) as u8), "write {i}");
    }
}

#[test]
fn disconnect_finishes_requests_in_flight_then_closes() {
    let s = served(4 * MIB, false);
    let (mut c, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    let mut wire = Vec::new();
    for i in 0..16u64 {
        wire.extend_from_slice(&request_bytes(CMD_WRITE, FLAG_FUA, i, i * 65536, 65536));
        wire.extend_from_slice(&vec![0xd0 + i as u8; 65536]);
    }
    // A read of a block no write touches (requests in flight must not
    // overlap).
    wire.extend_from_slice(&request_bytes(CMD_READ, 0, 100, 2 * MIB, 4096));
    wire.extend_from_slice(&request_bytes(CMD_DISC, 0, 101, 0, 0));
    c.put(&wire);
    let initial = random_bytes(4 * MIB as usize, 99);
    let mut handles = Vec::new();
    for _ in 0..17 {
        let (err, h) = c.reply();
        assert_eq!(err, 0);
        if h == 100 {
            assert_eq!(c.bytes(4096), &initial[2 << 20..(2 << 20) + 4096]);
        }
        handles.push(h);
    }
    handles.sort();
    assert_eq!(handles, (0..16).chain([100]).collect::<Vec<_>>());
    assert!(c.closed_by_server(), "no close after NBD_CMD_DISC");
    let img = s.image_bytes();
    for i in 0..16usize {
        assert!(img[i * 65536..(i + 1) * 65536]
            .iter()
            .all(|&b| b == 0xd0 + i as u8));
    }
}

#[test]
fn several_connections_write_disjoint_ranges_at_once() {
    let s = served(16 * MIB, false);
    let threads: Vec<_> = (0..4u64)
        .map(|k| {
            let sock = s.socket.clone();
            std::thread::spawn(move || {
                let (mut c, _, _) = RawClient::transmission_unix(&sock, "vol");
                let data = random_bytes(4 * MIB as usize, 1000 + k);
                for (j, chunk) in data.chunks(256 << 10).enumerate() {
                    let off = k * 4 * MIB + j as u64 * (256 << 10);
                    assert_eq!(c.write(j as u64, off, chunk, 0), 0);
                }
                assert_eq!(c.simple(CMD_FLUSH, 0, 999, 0, 0), 0);
                c.request(CMD_DISC, 0, 1000, 0, 0);
                data
            })
        })
        .collect();
    let mut want = Vec::new();
    for t in threads {
        want.extend(t.join().unwrap());
    }
    assert_eq!(first_difference(&s.image_bytes(), &want), None);
}

#[test]
fn shutdown_closes_idle_connections_and_serve_returns() {
    let s = served(MIB, false);
    let (mut idle, _, _) = RawClient::transmission_unix(&s.socket, "vol");
    let (mut haggling, _) = RawClient::connect_tcp(s.tcp);
    haggling.put(&3u32.to_be_bytes());
    let t = Instant::now();
    let sock = s.socket.clone();
    s.shutdown_within(Duration::from_secs(10));
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(idle.closed_by_server(), "idle connection left open");
    assert!(
        haggling.closed_by_server(),
        "handshaking connection left open"
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&sock)
            .map(|mut c| {
                use std::io::Read;
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut b = [0u8; 1];
                matches!(c.read(&mut b), Ok(0) | Err(_))
            })
            .unwrap_or(true),
        "new client served after shutdown"
    );
}
