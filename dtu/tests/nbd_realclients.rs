//! The NBD server driven by the real clients a host would use: qemu-io,
//! qemu-img, nbdinfo, nbdcopy and fio (its libnbd engine), over a unix
//! socket and over TCP on 127.0.0.1, against a `FileExport` on a temporary
//! file. Every check ends by reading the file itself, so a client that
//! merely believes it succeeded does not pass.
//!
//! The clients are Debian packages that `.ci/run` installs; a missing one
//! fails the test with that hint. Each runs under a deadline and is killed
//! on drop.

mod nbd_harness;

use std::time::Duration;

use nbd_harness::*;

const LIMIT: Duration = Duration::from_secs(120);
const MIB: usize = 1 << 20;

fn qemu_io(uri: &str, read_only: bool, cmds: &[&str]) -> Run {
    let mut args = vec!["-f", "raw"];
    if read_only {
        args.push("-r");
    }
    args.push(uri);
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    run_tool("qemu-io", &args, LIMIT)
}

/// qemu-io reports a failed command on its output; its exit status alone
/// is not enough on every version.
#[track_caller]
fn assert_qemu_io_clean(r: &Run, what: &str) {
    r.assert_ok(what);
    let out = r.output();
    for bad in ["failed", "error", "Error"] {
        assert!(!out.contains(bad), "{what}: qemu-io said {bad:?}:\n{out}");
    }
}

fn check_patterns(img: &[u8]) {
    assert!(
        img[64 << 10..MIB].iter().all(|&b| b == 0xab),
        "0xab pattern outside the discarded head"
    );
    assert!(
        img[MIB..MIB + (64 << 10)].iter().all(|&b| b == 0xcd),
        "FUA write"
    );
    assert!(
        img[2 * MIB..2 * MIB + (128 << 10)].iter().all(|&b| b == 0),
        "write -z range is not zero"
    );
    assert!(
        img[3 * MIB..3 * MIB + 4096].iter().all(|&b| b == 0x5e),
        "unaligned write"
    );
}

#[test]
fn qemu_io_writes_reads_flushes_and_discards_over_unix_and_tcp() {
    for tcp in [false, true] {
        // Start from junk so zeroing has to happen for real.
        let junk = vec![0x11u8; 16 * MIB];
        let s = Served::start(ServeOpts {
            initial: Some(&junk),
            ..ServeOpts::default()
        });
        let uri = if tcp { s.tcp_uri() } else { s.unix_uri() };
        let r = qemu_io(
            &uri,
            false,
            &[
                "write -P 0xab 0 1M",
                "read -P 0xab 0 1M",
                "write -f -P 0xcd 1M 64k",
                "read -P 0xcd 1M 64k",
                "flush",
                "discard 0 64k",
                "write -z 2M 128k",
                "read -P 0 2M 128k",
                "write -P 0x5e 3145728 4096",
                "read -P 0x11 4M 4k",
                "aio_write -P 0x77 8M 256k",
                "aio_write -P 0x78 9M 256k",
                "aio_flush",
                "read -P 0x77 8M 256k",
                "read -P 0x78 9M 256k",
            ],
        );
        assert_qemu_io_clean(
            &r,
            if tcp {
                "qemu-io over TCP"
            } else {
                "qemu-io over unix"
            },
        );
        let img = s.image_bytes();
        check_patterns(&img);
        assert!(
            img[4 * MIB..5 * MIB].iter().all(|&b| b == 0x11),
            "untouched"
        );
        assert!(img[8 * MIB..8 * MIB + (256 << 10)]
            .iter()
            .all(|&b| b == 0x77));
        assert!(img[9 * MIB..9 * MIB + (256 << 10)]
            .iter()
            .all(|&b| b == 0x78));
        s.shutdown_within(Duration::from_secs(10));
    }
}

#[test]
fn qemu_io_pattern_mismatch_is_detected() {
    // The check above relies on qemu-io noticing a wrong pattern: make sure
    // it does against this server.
    let s = Served::start(ServeOpts::default());
    let r = qemu_io(
        &s.unix_uri(),
        false,
        &["write -P 0x01 0 64k", "read -P 0x02 0 64k"],
    );
    assert!(
        r.output().contains("Pattern verification failed"),
        "qemu-io did not flag a wrong pattern:\n{}",
        r.output()
    );
}

#[test]
fn qemu_io_out_of_range_read_fails_and_the_next_request_works() {
    let s = Served::start(ServeOpts {
        size: MIB as u64,
        ..ServeOpts::default()
    });
    let r = qemu_io(
        &s.unix_uri(),
        false,
        &["write -P 0x42 0 4k", "read 1M 512", "read -P 0x42 0 4k"],
    );
    let out = r.output();
    assert!(
        out.contains("read failed") || out.contains("Input/output error"),
        "the read past the end did not fail:\n{out}"
    );
    assert!(
        out.contains("read 4096/4096 bytes at offset 0")
            && !out.contains("Pattern verification failed"),
        "the request after the failure did not work:\n{out}"
    );
}

#[test]
fn read_only_export_refuses_writes_and_serves_reads() {
    let content = random_bytes(4 * MIB, 7);
    let s = Served::start(ServeOpts {
        size: 4 * MIB as u64,
        read_only: true,
        initial: Some(&content),
        ..ServeOpts::default()
    });
    // Read-write: qemu sees NBD_FLAG_READ_ONLY and refuses to open.
    let rw = qemu_io(&s.unix_uri(), false, &["write -P 0x01 0 4k"]);
    assert!(
        !rw.ok(),
        "qemu-io wrote to a read-only export:\n{}",
        rw.output()
    );
    assert!(
        rw.output().contains("Permission denied") || rw.output().contains("read-only"),
        "unexpected refusal: {}",
        rw.output()
    );
    // Read-only open: writes are refused, reads serve the file's bytes.
    let pattern_file = s.dir.path().join("first64k.bin");
    std::fs::write(&pattern_file, &content[..64 << 10]).unwrap();
    let ro = qemu_io(&s.tcp_uri(), true, &["write -P 0x01 0 4k", "read -v 0 16"]);
    assert!(ro.output().contains("read-only"), "{}", ro.output());
    let hex: String = content[..16].iter().map(|b| format!("{b:02x} ")).collect();
    assert!(
        ro.output().contains(hex.trim_end()),
        "read served other bytes than the file's: want {hex}\n{}",
        ro.output()
    );
    // qemu-img compare reads the whole export against the file.
    let src = s.dir.path().join("src.img");
    std::fs::write(&src, &content).unwrap();
    run_tool(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            &s.unix_uri(),
        ],
        LIMIT,
    )
    .assert_ok("qemu-img compare against the read-only export");
    assert_eq!(s.image_bytes(), content, "the read-only image changed");
}

fn nbdinfo_json(args: &[&str]) -> serde_json::Value {
    let r = run_tool("nbdinfo", args, LIMIT);
    r.assert_ok("nbdinfo");
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("nbdinfo JSON: {e}\n{}", r.stdout))
}

#[test]
fn nbdinfo_shows_size_name_flags_and_lists_the_export() {
    let s = Served::start(ServeOpts {
        name: "mirror0",
        size: 48 * MIB as u64,
        description: Some("dtu test volume"),
        ..ServeOpts::default()
    });
    for uri in [s.unix_uri(), s.tcp_uri()] {
        let v = nbdinfo_json(&["--json", &uri]);
        assert_eq!(v["protocol"], "newstyle-fixed", "{v}");
        assert_eq!(
            v["structured"], true,
            "libnbd asks for structured replies: {v}"
        );
        let e = &v["exports"][0];
        assert_eq!(e["export-name"], "mirror0", "{v}");
        assert_eq!(e["export-size"], 48 * MIB as u64, "{v}");
        assert_eq!(e["description"], "dtu test volume", "{v}");
        assert_eq!(e["is_read_only"], false, "{v}");
        for cap in [
            "can_flush",
            "can_fua",
            "can_trim",
            "can_zero",
            "can_multi_conn",
            "can_cache",
            "can_df",
        ] {
            assert_eq!(e[cap], true, "{cap}: {v}");
        }
        assert!(
            e["contexts"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c == "base:allocation")),
            "base:allocation not offered: {v}"
        );
        assert_eq!(e["can_fast_zero"], false, "{v}");
        assert_eq!(e["block_size_minimum"], 1, "{v}");
        assert_eq!(e["block_size_preferred"], 4096, "{v}");
        assert_eq!(e["block_size_maximum"], 32 * MIB as u64, "{v}");
    }
    // The plain-text form, as a user reads it.
    let text = run_tool("nbdinfo", &[&s.unix_uri()], LIMIT);
    text.assert_ok("nbdinfo");
    assert!(
        text.stdout.contains("export=\"mirror0\""),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("export-size: 50331648"),
        "{}",
        text.stdout
    );

    // NBD_OPT_LIST.
    let list_uri = format!("nbd+unix://?socket={}", s.socket.display());
    let v = nbdinfo_json(&["--list", "--json", &list_uri]);
    let exports = v["exports"].as_array().expect("exports");
    assert_eq!(exports.len(), 1, "{v}");
    assert_eq!(exports[0]["export-name"], "mirror0", "{v}");
    assert_eq!(exports[0]["description"], "dtu test volume", "{v}");
    let text = run_tool(
        "nbdinfo",
        &["--list", &format!("nbd://127.0.0.1:{}", s.tcp.port())],
        LIMIT,
    );
    text.assert_ok("nbdinfo --list over TCP");
    assert!(text.stdout.contains("mirror0"), "{}", text.stdout);

    // The empty name is the default export.
    let v = nbdinfo_json(&["--json", &list_uri]);
    assert_eq!(v["exports"][0]["export-size"], 48 * MIB as u64, "{v}");

    // An unknown name is refused with NBD_REP_ERR_UNKNOWN, which libnbd reports.
    let bad = run_tool(
        "nbdinfo",
        &[&format!("nbd+unix:///nosuch?socket={}", s.socket.display())],
        LIMIT,
    );
    assert!(!bad.ok(), "nbdinfo accepted an unknown export");
    assert!(
        bad.stderr.to_lowercase().contains("unknown") || bad.stderr.contains("nosuch"),
        "{}",
        bad.stderr
    );
}

#[test]
fn nbdinfo_reports_read_only() {
    let s = Served::start(ServeOpts {
        read_only: true,
        size: MIB as u64,
        ..ServeOpts::default()
    });
    let v = nbdinfo_json(&["--json", &s.unix_uri()]);
    assert_eq!(v["exports"][0]["is_read_only"], true, "{v}");
}

/// A 16 MiB source: random data with a zero run (so the copy tool may use
/// NBD_CMD_WRITE_ZEROES or TRIM for it) and an unaligned tail.
fn source_image(seed: u64) -> Vec<u8> {
    let mut src = random_bytes(16 * MIB, seed);
    src[5 * MIB..7 * MIB].fill(0);
    src[16 * MIB - 1000..].fill(0x3c);
    src
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = first_difference(got, want) {
        panic!(
            "{what}: the export differs from the source at byte {at} (len {} vs {})",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn nbdcopy_multi_conn_copies_a_random_image_byte_for_byte() {
    for tcp in [false, true] {
        let src = source_image(if tcp { 2 } else { 1 });
        // Junk in the target: zero runs must be written, not assumed.
        let junk = vec![0xeeu8; 16 * MIB];
        let s = Served::start(ServeOpts {
            initial: Some(&junk),
            ..ServeOpts::default()
        });
        let src_path = s.dir.path().join("src.img");
        std::fs::write(&src_path, &src).unwrap();
        let uri = if tcp { s.tcp_uri() } else { s.unix_uri() };
        let r = run_tool(
            "nbdcopy",
            &[
                "--connections=4",
                "--requests=16",
                "--flush",
                src_path.to_str().unwrap(),
                &uri,
            ],
            LIMIT,
        );
        r.assert_ok("nbdcopy");
        assert_same(&s.image_bytes(), &src, "nbdcopy");
        // And back out again through the server.
        let back = s.dir.path().join("back.img");
        run_tool(
            "nbdcopy",
            &["--connections=4", &uri, back.to_str().unwrap()],
            LIMIT,
        )
        .assert_ok("nbdcopy from the export");
        assert_same(&std::fs::read(&back).unwrap(), &src, "nbdcopy read-back");
        s.shutdown_within(Duration::from_secs(10));
    }
}

#[test]
fn qemu_img_convert_copies_a_random_image_byte_for_byte() {
    let src = source_image(3);
    let junk = vec![0x99u8; 16 * MIB];
    let s = Served::start(ServeOpts {
        initial: Some(&junk),
        ..ServeOpts::default()
    });
    let src_path = s.dir.path().join("src.img");
    std::fs::write(&src_path, &src).unwrap();
    for uri in [s.unix_uri(), s.tcp_uri()] {
        run_tool(
            "qemu-img",
            &[
                "convert",
                "-n",
                "-f",
                "raw",
                "-O",
                "raw",
                "-W",
                "-m",
                "8",
                src_path.to_str().unwrap(),
                &uri,
            ],
            LIMIT,
        )
        .assert_ok("qemu-img convert -n");
        assert_same(&s.image_bytes(), &src, "qemu-img convert");
        run_tool(
            "qemu-img",
            &[
                "compare",
                "-f",
                "raw",
                "-F",
                "raw",
                src_path.to_str().unwrap(),
                &uri,
            ],
            LIMIT,
        )
        .assert_ok("qemu-img compare");
        std::fs::write(&s.image, &junk).unwrap();
    }
}

#[test]
fn fio_nbd_engine_randwrite_with_crc32c_verify_passes() {
    let s = Served::start(ServeOpts::default());
    let fio = run_tool("fio", &["--enghelp=nbd"], LIMIT);
    assert!(
        fio.output().contains("uri"),
        "this fio has no nbd engine (libnbd):\n{}",
        fio.output()
    );
    for uri in [s.unix_uri(), s.tcp_uri()] {
        let uri_arg = format!("--uri={uri}");
        let r = run_tool(
            "fio",
            &[
                "--name=dtu-nbd-verify",
                "--ioengine=nbd",
                &uri_arg,
                "--rw=randwrite",
                "--bs=4k",
                "--bsrange=4k-256k",
                "--size=16M",
                "--iodepth=16",
                "--verify=crc32c",
                "--do_verify=1",
                "--verify_fatal=1",
                // No verify state file in the working directory.
                "--verify_state_save=0",
                "--output-format=json",
            ],
            LIMIT,
        );
        r.assert_ok("fio");
        let json_start = r.stdout.find('{').expect("fio JSON");
        let v: serde_json::Value = serde_json::from_str(&r.stdout[json_start..])
            .unwrap_or_else(|e| panic!("fio JSON: {e}\n{}", r.stdout));
        let job = &v["jobs"][0];
        assert_eq!(job["error"], 0, "{}", r.output());
        assert!(
            job["write"]["io_bytes"].as_u64().unwrap_or(0) >= 16 * MIB as u64,
            "{job}"
        );
        // The verify phase read everything back.
        assert!(
            job["read"]["io_bytes"].as_u64().unwrap_or(0) > 0,
            "no verify reads: {job}"
        );
        assert!(!r.output().contains("verify: bad"), "{}", r.output());
    }
}

/// Copies one random image with nbdcopy into a FileExport and into
/// `nbdkit file` on the same file system; prints MB/s for both. A sanity
/// figure, not a timed assertion beyond a generous ratio.
///
/// `cargo test -p dtu --test nbd_realclients -- --ignored --nocapture`
/// (set `DTU_NBD_BENCH_DIRS` to a colon-separated list of directories, e.g.
/// `/dev/shm:/var/tmp`).
#[test]
#[ignore]
fn nbdcopy_throughput_against_nbdkit_file() {
    require_tool("nbdkit");
    let dirs = std::env::var("DTU_NBD_BENCH_DIRS").unwrap_or_else(|_| "/dev/shm:/var/tmp".into());
    let size = 256 * MIB;
    let src_dir = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let src = src_dir.path().join("src.img");
    std::fs::write(&src, random_bytes(size, 11)).unwrap();
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        let Ok(td) = tempfile::tempdir_in(dir) else {
            eprintln!("skip {dir}: not writable");
            continue;
        };
        let mut ours = Vec::new();
        let mut kit = Vec::new();
        for _round in 0..3 {
            let s = Served::start(ServeOpts {
                size: size as u64,
                image_dir: Some(td.path()),
                ..ServeOpts::default()
            });
            let r = run_tool(
                "nbdcopy",
                &["--flush", src.to_str().unwrap(), &s.unix_uri()],
                LIMIT,
            );
            r.assert_ok("nbdcopy into FileExport");
            ours.push(size as f64 / 1e6 / r.elapsed.as_secs_f64());
            drop(s);

            let target = td.path().join("kit.img");
            std::fs::write(&target, []).unwrap();
            std::fs::File::options()
                .write(true)
                .open(&target)
                .unwrap()
                .set_len(size as u64)
                .unwrap();
            // nbdkit runs as a server of its own, so only the copy is timed
            // in both cases.
            let sock = td.path().join("kit.sock");
            let pid = td.path().join("kit.pid");
            let kit_server = spawn_background(
                "nbdkit",
                &[
                    "-f",
                    "-U",
                    sock.to_str().unwrap(),
                    "-P",
                    pid.to_str().unwrap(),
                    "file",
                    target.to_str().unwrap(),
                ],
                LIMIT,
            );
            // nbdkit writes its pid file once it accepts connections.
            wait_for_file(&pid, Duration::from_secs(20));
            let kit_uri = format!("nbd+unix:///?socket={}", sock.display());
            let r = run_tool(
                "nbdcopy",
                &["--flush", src.to_str().unwrap(), &kit_uri],
                LIMIT,
            );
            r.assert_ok("nbdcopy into nbdkit file");
            kit.push(size as f64 / 1e6 / r.elapsed.as_secs_f64());
            drop(kit_server);
            let _ = std::fs::remove_file(&sock);
            let _ = std::fs::remove_file(&pid);
            std::fs::remove_file(&target).unwrap();
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            v[v.len() / 2]
        };
        let (o, k) = (med(&mut ours), med(&mut kit));
        eprintln!(
            "nbdcopy 256 MiB into {dir}: FileExport {o:.0} MB/s, nbdkit file {k:.0} MB/s (ratio {:.2})",
            o / k
        );
        assert!(
            o > k / 20.0,
            "FileExport is more than 20x slower than nbdkit"
        );
    }
}

/// Regression: libnbd's nbdcopy sends one write-zeroes for a whole 100 MiB
/// hole, above the advertised 32 MiB maximum; refusing it failed the copy.
/// The server splits it instead, and the garbage under the hole must go.
#[test]
fn nbdcopy_zeroes_a_hole_larger_than_the_maximum_request() {
    require_tool("nbdcopy");
    let size = 128u64 << 20;
    let garbage = random_bytes(size as usize, 6);
    let srv = Served::start(ServeOpts {
        size,
        initial: Some(&garbage),
        ..ServeOpts::default()
    });
    let src = srv.dir.path().join("sparse.img");
    let f = std::fs::File::create(&src).unwrap();
    f.set_len(size).unwrap();
    let tail = random_bytes(28 << 20, 7);
    std::os::unix::fs::FileExt::write_all_at(&f, &tail, 100 << 20).unwrap();
    drop(f);
    run_tool(
        "nbdcopy",
        &[src.to_str().unwrap(), &srv.unix_uri()],
        Duration::from_secs(60),
    )
    .assert_ok("nbdcopy of a sparse image");
    let disk = srv.image_bytes();
    assert!(
        disk[..100 << 20].iter().all(|&b| b == 0),
        "the hole was not zeroed"
    );
    assert!(disk[100 << 20..] == tail[..]);
}
