//! A primary and a remote in one process, as `dtu demo` and the benchmark
//! harness (`dtu-bench` in the tests crate) run them: fresh identities that
//! pin each other, a sealed volume, the link tuning a link preset implies,
//! and [`PrimaryOptions`] / [`RemoteOptions`] with the demo's defaults that
//! callers adjust field by field before starting each side.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use dtu_proto::{AckPolicy, VolumeId};
use dtu_sim::presets::Preset;

use crate::config::{CongestionChoice, Volume};
use crate::identity::{Identity, IdentityError};
use crate::primary::{Primary, PrimaryOptions};
use crate::remote::{Remote, RemoteOptions};
use crate::status::{PrimaryStatus, RemoteStatus, Status};
use crate::transport::LinkTuning;

/// Both sides' identities and the volume they mirror.
#[derive(Clone)]
pub struct PairSetup {
    pub primary_id: Identity,
    pub remote_id: Identity,
    pub volume: Volume,
}

impl PairSetup {
    /// New identities and a volume of `size` bytes sealed with a random key.
    pub fn generate(volume_id: VolumeId, size: u64) -> Result<PairSetup, IdentityError> {
        Ok(PairSetup {
            primary_id: Identity::generate("dtu-primary")?,
            remote_id: Identity::generate("dtu-remote")?,
            volume: Volume {
                id: volume_id,
                size,
                block_size: 4096,
                key: Some(rand::random()),
            },
        })
    }

    /// A remote listening on `listen`, its replica and state file in `dir`.
    pub fn remote_options(
        &self,
        listen: SocketAddr,
        tuning: LinkTuning,
        dir: &Path,
    ) -> RemoteOptions {
        RemoteOptions {
            volume: self.volume.clone(),
            identity: self.remote_id.clone(),
            peer: self.primary_id.fingerprint(),
            listen,
            tuning,
            replica: dir.join("replica.img"),
            state: dir.join("replica.img.state"),
            workers: 2,
            adopt_replica: false,
            undo: Some(crate::remote::UndoOptions::beside(&dir.join("replica.img"))),
            storage: None,
            split_brain: Default::default(),
            discard_my_data: false,
        }
    }

    /// A primary sending to `remote`, its nvbuf (64 MiB) and local image in
    /// `dir`, 4 lanes, 2 encode workers, 64 KiB chunks, compression on.
    pub fn primary_options(
        &self,
        remote: SocketAddr,
        tuning: LinkTuning,
        dir: &Path,
        policy: AckPolicy,
    ) -> PrimaryOptions {
        PrimaryOptions {
            volume: self.volume.clone(),
            identity: self.primary_id.clone(),
            peer: self.remote_id.fingerprint(),
            remote,
            server_name: "dtu-remote".into(),
            tuning,
            lanes: 4,
            nvbuf_path: dir.join("primary.nvbuf"),
            nvbuf_size: 64 << 20,
            workers: 2,
            chunk_size: 64 << 10,
            compress: true,
            policy,
            local: Some(dir.join("source.img")),
            read_timeout: Duration::from_secs(30),
            accept_nvbuf_loss: false,
            peer_lost: false,
            restore_from_remote: false,
            mirror: crate::primary::MirrorOptions::default(),
        }
    }
}

/// What the DTUs are told about a preset's link: the up direction's rate
/// and the round trip of both delays (at least 1 ms), the default `rate`
/// controller (cubic on an unlimited preset).
pub fn preset_tuning(preset: &Preset) -> LinkTuning {
    let rtt = preset.up.delay + preset.down.delay;
    LinkTuning {
        rate_bps: preset.up.rate_bps,
        rtt: rtt.max(Duration::from_millis(1)),
        congestion: CongestionChoice::Rate,
        ..LinkTuning::default()
    }
}

/// The primary's status structure.
pub fn primary_status(p: &Primary) -> PrimaryStatus {
    match p.status() {
        Status::Primary(s) => *s,
        Status::Remote(_) => unreachable!("a primary reports a primary status"),
    }
}

/// The remote's status structure.
pub fn remote_status(r: &Remote) -> RemoteStatus {
    match r.status() {
        Status::Remote(s) => *s,
        Status::Primary(_) => unreachable!("a remote reports a remote status"),
    }
}
