//! Files holding the host's data are created owner-only (mode 0600), like
//! the keys, whatever the umask: the replica and the primary's local copy
//! (the whole volume in plaintext), the nvbuf (sealed payloads behind plain
//! headers) and the replica's state file. The test runs with a permissive
//! umask (0), under which std would create them 0666.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dtu::nvbuf::{Nvbuf, NvbufConfig};
use dtu::replica::{FileReplica, VolumeState};

const VOLUME: [u8; 16] = *b"file-modes-test!";

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn host_data_files_are_created_owner_only_under_any_umask() {
    // This test binary has no other test, so changing the process umask
    // cannot race with anything.
    rustix::process::umask(rustix::fs::Mode::empty());
    let dir = tempfile::tempdir().unwrap();

    let replica_path = dir.path().join("replica.img");
    let replica = FileReplica::open(&replica_path, 1 << 20).unwrap();
    assert_eq!(mode(&replica_path), 0o600, "replica");

    // The primary's local copy is opened the same way (`nbd.local`).
    let local_path = dir.path().join("local.img");
    drop(FileReplica::open(&local_path, 1 << 20).unwrap());
    assert_eq!(mode(&local_path), 0o600, "local copy");

    let state_path = dir.path().join("replica.img.state");
    drop(VolumeState::open(&state_path, VOLUME, &replica, false).unwrap());
    assert_eq!(mode(&state_path), 0o600, "replica state");

    let nvbuf_path = dir.path().join("primary.nvbuf");
    let cfg = NvbufConfig::new(VOLUME).with_size(dtu::nvbuf::format::MIN_SIZE);
    drop(Nvbuf::open_or_create(&nvbuf_path, &cfg).unwrap());
    assert_eq!(mode(&nvbuf_path), 0o600, "nvbuf");

    // A file made by the same process under this umask is world-writable,
    // so the modes above are the DTU's doing, not the environment's.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, b"x").unwrap();
    assert_eq!(mode(&plain), 0o666);
}
