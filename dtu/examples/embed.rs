//! A storage stack embedding dtu: a `Primary` and a `Remote` in one
//! process, the remote's replica an in-memory `Replica` the stack owns, the
//! host's writes issued from one thread and mirrored over QUIC on
//! 127.0.0.1 to the other side, each answered only once the remote has
//! stored it. Exits non-zero if the replica differs from what was written.
//!
//! ```sh
//! cargo run -p dtu --example embed
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
// Only the library's curated surface (no `internals` feature needed).
use dtu::config::Volume;
use dtu::identity::Identity;
use dtu::{
    AckPolicy, InitialSync, LinkTuning, MemReplica, MirrorOptions, Primary, PrimaryOptions, Remote,
    RemoteOptions, Replica, Trigger,
};

const SIZE: u64 = 16 << 20;

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let primary_id = Identity::generate("embed-primary")?;
    let remote_id = Identity::generate("embed-remote")?;
    let volume = Volume {
        id: *b"embedded-volume1",
        size: SIZE,
        block_size: 4096,
        key: Some([7; 32]),
    };
    // The stack's own storage for the replica.
    let replica = Arc::new(MemReplica::new(SIZE as usize));
    let port = std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}").parse()?;
    let tuning = LinkTuning {
        rtt: Duration::from_millis(1),
        ..LinkTuning::default()
    };

    let remote = Remote::start(RemoteOptions {
        volume: volume.clone(),
        identity: remote_id.clone(),
        peer: primary_id.fingerprint(),
        listen: addr,
        tuning,
        replica: "in-memory".into(),
        state: dir.path().join("replica.state"),
        workers: 2,
        adopt_replica: false,
        undo: None,
        storage: Some(replica.clone() as Arc<dyn Replica>),
        split_brain: Default::default(),
        discard_my_data: false,
    })
    .context("starting the remote")?;

    let primary = Arc::new(
        Primary::start(PrimaryOptions {
            volume,
            identity: primary_id,
            peer: remote_id.fingerprint(),
            remote: addr,
            server_name: "dtu-remote".into(),
            tuning,
            lanes: 2,
            nvbuf_path: dir.path().join("primary.nvbuf"),
            nvbuf_size: 16 << 20,
            workers: 2,
            chunk_size: 64 << 10,
            compress: true,
            policy: AckPolicy {
                trigger: Trigger::RemoteStored,
                spoofing: false,
                ..AckPolicy::default()
            },
            local: None,
            read_timeout: Duration::from_secs(30),
            accept_nvbuf_loss: false,
            peer_lost: false,
            restore_from_remote: false,
            mirror: MirrorOptions {
                initial_sync: InitialSync::AssumeInSync,
                ..MirrorOptions::default()
            },
        })
        .context("starting the primary")?,
    );

    // The host: another thread writing 256 blocks of 64 KiB and a flush.
    let host = {
        let primary = primary.clone();
        std::thread::spawn(move || -> Result<Vec<u8>> {
            let mut image = vec![0u8; SIZE as usize];
            let mut pending = Vec::new();
            for i in 0..256u64 {
                let off = (i * 61 % 256) * (64 << 10);
                let data: Vec<u8> = (0..64 << 10).map(|j| (i as u8) ^ (j as u8)).collect();
                image[off as usize..off as usize + data.len()].copy_from_slice(&data);
                pending.push(primary.write(off, Bytes::from(data))?);
            }
            pending.push(primary.flush()?);
            for p in pending {
                // remote-stored: the replica has it, synced.
                p.wait()?;
            }
            Ok(image)
        })
    };
    let began = Instant::now();
    let image = host.join().expect("the host thread")?;
    println!(
        "256 writes of 64 KiB answered at remote-stored in {:.2} s",
        began.elapsed().as_secs_f64()
    );
    if replica.working_image() != image {
        bail!("the in-memory replica differs from what the host wrote");
    }
    println!("the in-memory replica equals the host's writes");
    match Arc::try_unwrap(primary) {
        Ok(p) => p.shutdown(),
        Err(_) => bail!("the primary is still shared"),
    }
    remote.shutdown();
    Ok(())
}
