//! `dtu init`: everything a new pair needs, in one directory: a key pair
//! and self-signed certificate per side, each side pinning the other's
//! fingerprint, a volume id, a sealing key, the NBD listener's TLS files
//! (`nbd-tls/`: a CA, a server certificate for the listener's names, a
//! client certificate for the host), and the two config files.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rand::RngCore;

use crate::config::*;
use crate::identity::{fingerprint, Identity};

/// What `dtu init` is asked for.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    /// Directory for the keys, certificates and config files.
    #[arg(long, default_value = "dtu-pair")]
    pub dir: PathBuf,
    /// Size of the mirrored volume.
    #[arg(long, default_value = "1GiB")]
    pub volume_size: String,
    /// Where the remote listens (UDP).
    #[arg(long, default_value = "127.0.0.1:7001")]
    pub remote_listen: String,
    /// Where the primary sends to: the remote's address, or a link
    /// emulator in front of it. Defaults to --remote-listen.
    #[arg(long)]
    pub remote_addr: Option<String>,
    /// Where the primary's site listens once it is demoted to a remote
    /// (`demoted.toml`). Defaults to --remote-listen's host, one port up.
    #[arg(long)]
    pub primary_listen: Option<String>,
    /// Where the remote's site sends to once it is promoted to a primary
    /// (`promoted.toml`): the old primary's --primary-listen, or a link
    /// emulator in front of it. Defaults to --primary-listen.
    #[arg(long)]
    pub primary_addr: Option<String>,
    /// Keep a local copy of the volume on the primary (`primary.img`):
    /// reads are served locally, a dead link is bridged by the
    /// changed-block map, and a demoted primary keeps the volume.
    #[arg(long)]
    pub local_copy: bool,
    /// Size of the primary's nvbuf.
    #[arg(long, default_value = "1GiB")]
    pub nvbuf_size: String,
    /// Link rate (e.g. 1.544Mbit, 100Mbit, 1Gbit): the default `rate`
    /// congestion controller paces at it, and it sizes QUIC's windows;
    /// `unlimited` if unknown (the controller is then cubic).
    #[arg(long, default_value = "1Gbit")]
    pub link_rate: String,
    /// Link round-trip time (e.g. 40ms).
    #[arg(long, default_value = "20ms")]
    pub link_rtt: String,
    /// The primary's NBD export over TCP.
    #[arg(long, default_value = "127.0.0.1:10809")]
    pub nbd_tcp: String,
    /// Do not seal payloads with a volume key (QUIC still encrypts the link).
    #[arg(long)]
    pub no_seal: bool,
    /// How the replica is first brought to the primary's volume (with a
    /// local copy): `full` copies every extent (holes and zeros cost
    /// nothing), `checksum` sends only blocks whose digests differ (a
    /// replica seeded by truck or from an earlier pair), `assume-in-sync`
    /// takes the replica as equal without looking (you must know it is:
    /// it is recorded in the replica's state).
    #[arg(long, default_value = "full")]
    pub initial_sync: dtu_proto::generation::InitialSync,
    /// Replace files from an earlier `dtu init` in the same directory.
    #[arg(long)]
    pub force: bool,
}

/// The NBD TLS files' directory, beside the configs.
pub const NBD_TLS_DIR: &str = "nbd-tls";

/// Paths `dtu init` wrote.
pub struct Pair {
    pub primary: PathBuf,
    pub remote: PathBuf,
    /// The remote's site as a primary, once promoted.
    pub promoted: PathBuf,
    /// The primary's site as a remote, once demoted.
    pub demoted: PathBuf,
}

pub fn run(a: &InitArgs) -> Result<Pair> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let primary_toml = a.dir.join("primary.toml");
    let remote_toml = a.dir.join("remote.toml");
    let promoted_toml = a.dir.join("promoted.toml");
    let demoted_toml = a.dir.join("demoted.toml");
    for p in [&primary_toml, &remote_toml, &promoted_toml, &demoted_toml] {
        if p.exists() && !a.force {
            bail!(
                "{} exists; pass --force to replace this pair (its nvbuf and replica stay)",
                p.display()
            );
        }
    }
    // The same bounds as when the config files are read back.
    let volume_size = volume_size(&a.volume_size).context("--volume-size")?;
    if volume_size % 4096 != 0 {
        bail!("--volume-size: {volume_size} bytes is not a multiple of the 4096-byte block size");
    }
    let nbd_addr: std::net::SocketAddr = a.nbd_tcp.parse().with_context(|| {
        format!(
            "--nbd-tcp {:?} is not an address like 127.0.0.1:10809",
            a.nbd_tcp
        )
    })?;
    nvbuf_size(&a.nvbuf_size).context("--nvbuf-size")?;
    let remote_listen: std::net::SocketAddr = a
        .remote_listen
        .parse()
        .with_context(|| format!("--remote-listen {:?}", a.remote_listen))?;
    let primary_listen = match &a.primary_listen {
        Some(l) => l.clone(),
        None => std::net::SocketAddr::new(
            remote_listen.ip(),
            remote_listen.port().checked_add(1).unwrap_or(7002),
        )
        .to_string(),
    };
    link_rate(&a.link_rate).context("--link-rate")?;
    link_rtt(&a.link_rtt).context("--link-rtt")?;

    let primary_id = Identity::generate("dtu-primary")?;
    let remote_id = Identity::generate("dtu-remote")?;
    primary_id.save(&a.dir.join("primary.crt"), &a.dir.join("primary.key"))?;
    remote_id.save(&a.dir.join("remote.crt"), &a.dir.join("remote.key"))?;

    crate::nbd::tls::generate(&crate::nbd::tls::listener_names(Some(nbd_addr)))?
        .write_to(&a.dir.join(NBD_TLS_DIR))?;

    let mut rng = rand::thread_rng();
    let mut volume_id = [0u8; 16];
    rng.fill_bytes(&mut volume_id);
    let key = if a.no_seal {
        None
    } else {
        let mut k = [0u8; 32];
        rng.fill_bytes(&mut k);
        write_private(&a.dir.join("volume.key"), &format!("{}\n", hex::encode(k)))?;
        Some(PathBuf::from("volume.key"))
    };
    let volume = VolumeSection {
        id: hex::encode(volume_id),
        size: a.volume_size.clone(),
        block_size: 4096,
        key,
    };
    let link = LinkSection {
        rate: a.link_rate.clone(),
        rtt: a.link_rtt.clone(),
        ..LinkSection::default()
    };
    let mut primary = PrimaryFile {
        volume: volume.clone(),
        identity: IdentitySection {
            cert: "primary.crt".into(),
            key: "primary.key".into(),
            peer_fingerprint: fingerprint(remote_id.cert_der()).to_string(),
        },
        link: LinkSection {
            remote: Some(
                a.remote_addr
                    .clone()
                    .unwrap_or_else(|| a.remote_listen.clone()),
            ),
            ..link.clone()
        },
        nvbuf: NvbufSection {
            path: "primary.nvbuf".into(),
            size: a.nvbuf_size.clone(),
            map: None,
            map_granularity: None,
            overflow: None,
            overflow_after: None,
        },
        sync: SyncSection {
            initial: Some(a.initial_sync.name().into()),
            ..SyncSection::default()
        },
        pipeline: PipelineSection::default(),
        policy: PolicySection::default(),
        nbd: NbdSection {
            tcp: Some(a.nbd_tcp.clone()),
            unix: Some("primary.nbd.sock".into()),
            // TLS offered, plaintext still allowed: the default listener is
            // on loopback. Set "require" before binding it elsewhere.
            tls: "on".into(),
            tls_dir: Some(NBD_TLS_DIR.into()),
            ..NbdSection::default()
        },
        checkpoint: Default::default(),
        admin: AdminSection {
            control: "primary.ctl".into(),
            metrics: None,
        },
        roles: RolesSection {
            remote: Some("demoted.toml".into()),
            ..RolesSection::default()
        },
    };
    if a.local_copy {
        primary.nbd.local = Some("primary.img".into());
    }
    let remote = RemoteFile {
        volume,
        identity: IdentitySection {
            cert: "remote.crt".into(),
            key: "remote.key".into(),
            peer_fingerprint: fingerprint(primary_id.cert_der()).to_string(),
        },
        link: LinkSection {
            listen: Some(a.remote_listen.clone()),
            ..link
        },
        replica: ReplicaSection {
            path: "replica.img".into(),
            state: None,
        },
        pipeline: PipelineSection::default(),
        nbd: NbdSection::default(),
        undo: Default::default(),
        admin: AdminSection {
            control: "remote.ctl".into(),
            metrics: None,
        },
        roles: RolesSection {
            primary: Some("promoted.toml".into()),
            ..RolesSection::default()
        },
    };
    // Each site's other role: the same identity, disk and control socket;
    // the link the other way round.
    let promoted = PrimaryFile {
        identity: remote.identity.clone(),
        link: LinkSection {
            remote: Some(
                a.primary_addr
                    .clone()
                    .unwrap_or_else(|| primary_listen.clone()),
            ),
            listen: None,
            ..remote.link.clone()
        },
        nvbuf: NvbufSection {
            path: "promoted.nvbuf".into(),
            ..primary.nvbuf.clone()
        },
        nbd: NbdSection {
            tcp: None,
            unix: Some("promoted.nbd.sock".into()),
            local: Some(remote.replica.path.clone()),
            tls: "off".into(),
            tls_dir: None,
            ..NbdSection::default()
        },
        admin: remote.admin.clone(),
        roles: RolesSection {
            remote: Some("remote.toml".into()),
            ..RolesSection::default()
        },
        ..primary.clone()
    };
    let demoted = RemoteFile {
        identity: primary.identity.clone(),
        link: LinkSection {
            listen: Some(primary_listen),
            remote: None,
            ..primary.link.clone()
        },
        replica: ReplicaSection {
            path: primary
                .nbd
                .local
                .clone()
                .unwrap_or_else(|| "demoted.img".into()),
            state: None,
        },
        admin: primary.admin.clone(),
        roles: RolesSection {
            primary: Some("primary.toml".into()),
            ..RolesSection::default()
        },
        ..remote.clone()
    };
    let header =
        "# Written by `dtu init`. Every option is described in `dtu --help` and the README.\n";
    std::fs::write(
        &primary_toml,
        format!("{header}{}", toml::to_string(&primary)?),
    )?;
    std::fs::write(
        &remote_toml,
        format!("{header}{}", toml::to_string(&remote)?),
    )?;
    std::fs::write(
        &promoted_toml,
        format!("{header}{}", toml::to_string(&promoted)?),
    )?;
    std::fs::write(
        &demoted_toml,
        format!("{header}{}", toml::to_string(&demoted)?),
    )?;
    // All must parse back: an init that writes a config dtu cannot read is a bug.
    PrimaryConfig::load(&primary_toml)?;
    RemoteConfig::load(&remote_toml)?;
    PrimaryConfig::load(&promoted_toml)?;
    RemoteConfig::load(&demoted_toml)?;
    Ok(Pair {
        primary: primary_toml,
        remote: remote_toml,
        promoted: promoted_toml,
        demoted: demoted_toml,
    })
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
