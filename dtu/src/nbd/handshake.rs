//! The fixed newstyle handshake: greeting, client flags and option haggling
//! up to NBD_OPT_EXPORT_NAME, a successful NBD_OPT_GO, or an acknowledged
//! NBD_OPT_STARTTLS (after which the caller wraps the stream in TLS and
//! haggles again, from a clean slate, over it).
//!
//! Supported options: EXPORT_NAME, ABORT, LIST, INFO and GO (with
//! NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE always, NBD_INFO_NAME and
//! NBD_INFO_DESCRIPTION when asked), STARTTLS where the listener has TLS,
//! STRUCTURED_REPLY, and LIST/SET_META_CONTEXT for `base:allocation`. Every
//! other option is read past and answered NBD_REP_ERR_UNSUP, as the baseline
//! requires. Where TLS is required, every option but STARTTLS and ABORT gets
//! NBD_REP_ERR_TLS_REQD and EXPORT_NAME ends the session (proto.md's
//! FORCEDTLS). Payloads above [`MAX_OPTION_LEN`] are read and refused; above
//! [`OPTION_DISCARD_LIMIT`] the connection is dropped, as are clients that
//! send too many options.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::server::{wait_for_shutdown, NbdError};
use super::wire::*;

/// What the handshake tells the client about the one export.
pub(crate) struct ExportInfo<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    pub size: u64,
    pub read_only: bool,
    pub block_sizes: (u32, u32, u32),
}

impl ExportInfo<'_> {
    /// The empty name is the default export, which is this one.
    fn answers_to(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }
}

/// How the handshake ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Negotiated {
    /// The export was chosen: the transmission phase starts, shaped by
    /// what was agreed.
    Transmission(Caps),
    /// NBD_OPT_STARTTLS was acknowledged: TLS starts now.
    StartTls,
    /// The client aborted, or the server is shutting down.
    Closed,
}

/// Where this connection stands with TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsState {
    /// The listener has no TLS (proto.md's NOTLS).
    Unavailable,
    /// The client may start TLS or go on in plaintext.
    Offered,
    /// Nothing but STARTTLS and ABORT until TLS runs (FORCEDTLS).
    Required,
    /// TLS is running.
    Active,
}

/// What the client said in reply to the greeting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientFlags {
    fixed: bool,
    no_zeroes: bool,
}

/// Sends the greeting and reads the client's flags.
pub(crate) async fn greet<S>(s: &mut S) -> Result<ClientFlags, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&NBDMAGIC.to_be_bytes());
    out.extend_from_slice(&IHAVEOPT.to_be_bytes());
    out.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    send(s, &mut out).await?;

    let client_flags = s.read_u32().await?;
    // proto.md: the server MUST drop the connection on a flag it does not
    // know or did not advertise; both known flags are advertised.
    if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(NbdError::ClientFlags(client_flags));
    }
    let fixed = client_flags & FLAG_C_FIXED_NEWSTYLE != 0;
    let no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
    tracing::debug!(fixed, no_zeroes, "NBD client flags");
    Ok(ClientFlags { fixed, no_zeroes })
}

/// Haggles options until the export is chosen, TLS starts or the client
/// leaves; `options_left` is the connection's budget, shared by the
/// haggling before and after STARTTLS.
pub(crate) async fn negotiate<S>(
    s: &mut S,
    export: &ExportInfo<'_>,
    client: ClientFlags,
    tls: TlsState,
    options_left: &mut u32,
    shutdown: &watch::Receiver<bool>,
) -> Result<Negotiated, NbdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let ClientFlags { fixed, no_zeroes } = client;
    let mut out = Vec::with_capacity(256);
    let mut caps = Caps::default();
    while *options_left > 0 {
        *options_left -= 1;
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        tokio::select! {
            read = s.read_exact(&mut hdr) => { read?; }
            // Nothing is in flight while the client is between options.
            _ = wait_for_shutdown(shutdown) => return Ok(Negotiated::Closed),
        }
        let OptionHeader { option, len } = parse_option_header(&hdr)?;
        tracing::debug!(
            option = option_name(option),
            option_code = option,
            len,
            "NBD option"
        );
        if len > OPTION_DISCARD_LIMIT {
            return Err(NbdError::OptionTooLarge(len));
        }
        let payload = if len <= MAX_OPTION_LEN {
            let mut p = vec![0u8; len as usize];
            s.read_exact(&mut p).await?;
            Some(p)
        } else {
            discard(s, len).await?;
            None
        };

        if option == OPT_EXPORT_NAME {
            // This option cannot carry an error: an unknown name, like a
            // shutting down server, can only end the session.
            let name = payload.unwrap_or_default();
            if tls == TlsState::Required {
                return Err(NbdError::TlsRequired);
            }
            if !export.answers_to(&name) {
                return Err(NbdError::UnknownExport(printable(&name)));
            }
            if *shutdown.borrow() {
                return Ok(Negotiated::Closed);
            }
            out.extend_from_slice(&export.size.to_be_bytes());
            out.extend_from_slice(&transmission_flags(export.read_only, caps).to_be_bytes());
            if !no_zeroes {
                out.extend_from_slice(&[0u8; EXPORT_NAME_PADDING]);
            }
            send(s, &mut out).await?;
            return Ok(Negotiated::Transmission(caps));
        }
        if !fixed {
            // Plain newstyle has no option replies to refuse with.
            return Err(NbdError::NotFixedNewstyle(option));
        }
        if option == OPT_ABORT {
            put_option_reply(&mut out, option, REP_ACK, &[]);
            // The client may already have gone; the spec allows either.
            let _ = send(s, &mut out).await;
            return Ok(Negotiated::Closed);
        }
        if *shutdown.borrow() {
            error_reply(
                &mut out,
                option,
                REP_ERR_SHUTDOWN,
                "the server is shutting down",
            );
            send(s, &mut out).await?;
            continue;
        }
        let Some(payload) = payload else {
            let msg = format!("option data of {len} bytes exceeds the {MAX_OPTION_LEN}-byte limit");
            error_reply(&mut out, option, REP_ERR_TOO_BIG, &msg);
            send(s, &mut out).await?;
            continue;
        };
        if tls == TlsState::Required && option != OPT_STARTTLS {
            let msg = format!(
                "this server requires TLS: send NBD_OPT_STARTTLS before {}",
                option_name(option)
            );
            error_reply(&mut out, option, REP_ERR_TLS_REQD, &msg);
            send(s, &mut out).await?;
            continue;
        }
        let go = match option {
            OPT_STARTTLS => match tls {
                TlsState::Unavailable => {
                    let msg = "TLS is not configured on this listener (nbd.tls)";
                    error_reply(&mut out, option, REP_ERR_UNSUP, msg);
                    false
                }
                TlsState::Active => {
                    error_reply(&mut out, option, REP_ERR_INVALID, "TLS is already running");
                    false
                }
                TlsState::Offered | TlsState::Required if !payload.is_empty() => {
                    error_reply(
                        &mut out,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_STARTTLS takes no data",
                    );
                    false
                }
                TlsState::Offered | TlsState::Required => {
                    put_option_reply(&mut out, option, REP_ACK, &[]);
                    send(s, &mut out).await?;
                    return Ok(Negotiated::StartTls);
                }
            },
            OPT_STRUCTURED_REPLY => {
                if payload.is_empty() {
                    caps.structured = true;
                    put_option_reply(&mut out, option, REP_ACK, &[]);
                } else {
                    let msg = "NBD_OPT_STRUCTURED_REPLY takes no data";
                    error_reply(&mut out, option, REP_ERR_INVALID, msg);
                }
                false
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                meta_reply(&mut out, option, &payload, export, &mut caps);
                false
            }
            OPT_LIST => {
                if payload.is_empty() {
                    let name = export.name.as_bytes();
                    let desc = export.description.unwrap_or_default().as_bytes();
                    let name_len = (name.len() as u32).to_be_bytes();
                    put_option_reply(&mut out, option, REP_SERVER, &[&name_len, name, desc]);
                    put_option_reply(&mut out, option, REP_ACK, &[]);
                } else {
                    error_reply(
                        &mut out,
                        option,
                        REP_ERR_INVALID,
                        "NBD_OPT_LIST takes no data",
                    );
                }
                false
            }
            OPT_INFO | OPT_GO => info_reply(&mut out, option, &payload, export, caps),
            _ => {
                let msg = format!("{} is not supported", option_name(option));
                error_reply(&mut out, option, REP_ERR_UNSUP, &msg);
                false
            }
        };
        send(s, &mut out).await?;
        if go {
            return Ok(Negotiated::Transmission(caps));
        }
    }
    Err(NbdError::TooManyOptions)
}

/// Answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. The one
/// context is `base:allocation`; queries in other namespaces select
/// nothing, which is not an error. SET replaces the selection.
fn meta_reply(
    out: &mut Vec<u8>,
    option: u32,
    payload: &[u8],
    export: &ExportInfo<'_>,
    caps: &mut Caps,
) {
    if !caps.structured {
        // proto.md: SHOULD answer NBD_REP_ERR_INVALID before structured replies.
        let msg = "negotiate NBD_OPT_STRUCTURED_REPLY before metadata contexts";
        error_reply(out, option, REP_ERR_INVALID, msg);
        return;
    }
    let Some(req) = parse_meta_request(payload) else {
        error_reply(
            out,
            option,
            REP_ERR_INVALID,
            "malformed metadata context request",
        );
        return;
    };
    if !export.answers_to(req.name) {
        let msg = format!("no export named {:?}", printable(req.name));
        error_reply(out, option, REP_ERR_UNKNOWN, &msg);
        return;
    }
    // A query must at least name a namespace.
    if let Some(q) = req.queries.iter().find(|q| !q.contains(&b':')) {
        let msg = format!("metadata context query {:?} has no namespace", printable(q));
        error_reply(out, option, REP_ERR_INVALID, &msg);
        return;
    }
    let listing = option == OPT_LIST_META_CONTEXT;
    let selected = (listing && req.queries.is_empty())
        || req
            .queries
            .iter()
            .any(|q| query_selects_base_allocation(q, listing));
    if selected {
        // proto.md: the id in a LIST answer is reserved, SHOULD be zero.
        let id: u32 = if listing { 0 } else { BASE_ALLOCATION_ID };
        put_option_reply(
            out,
            option,
            REP_META_CONTEXT,
            &[&id.to_be_bytes(), META_BASE_ALLOCATION.as_bytes()],
        );
    }
    put_option_reply(out, option, REP_ACK, &[]);
    if !listing {
        caps.base_allocation = selected;
    }
}

/// Answers NBD_OPT_INFO or NBD_OPT_GO; true when the export was granted.
fn info_reply(
    out: &mut Vec<u8>,
    option: u32,
    payload: &[u8],
    export: &ExportInfo<'_>,
    caps: Caps,
) -> bool {
    let Some(req) = parse_info_request(payload) else {
        error_reply(
            out,
            option,
            REP_ERR_INVALID,
            "malformed NBD_OPT_INFO/GO data",
        );
        return false;
    };
    if !export.answers_to(req.name) {
        let msg = format!(
            "no export named {:?}; this server exports {:?}",
            printable(req.name),
            export.name
        );
        error_reply(out, option, REP_ERR_UNKNOWN, &msg);
        return false;
    }
    let t = INFO_EXPORT.to_be_bytes();
    put_option_reply(
        out,
        option,
        REP_INFO,
        &[
            &t,
            &export.size.to_be_bytes(),
            &transmission_flags(export.read_only, caps).to_be_bytes(),
        ],
    );
    // Sent unasked too (allowed): the 32 MiB maximum is not the default.
    let (min, pref, max) = export.block_sizes;
    put_option_reply(
        out,
        option,
        REP_INFO,
        &[
            &INFO_BLOCK_SIZE.to_be_bytes(),
            &min.to_be_bytes(),
            &pref.to_be_bytes(),
            &max.to_be_bytes(),
        ],
    );
    if req.asks_for(INFO_NAME) {
        put_option_reply(
            out,
            option,
            REP_INFO,
            &[&INFO_NAME.to_be_bytes(), export.name.as_bytes()],
        );
    }
    if let (true, Some(desc)) = (req.asks_for(INFO_DESCRIPTION), export.description) {
        put_option_reply(
            out,
            option,
            REP_INFO,
            &[&INFO_DESCRIPTION.to_be_bytes(), desc.as_bytes()],
        );
    }
    put_option_reply(out, option, REP_ACK, &[]);
    option == OPT_GO
}

fn error_reply(out: &mut Vec<u8>, option: u32, reply: u32, msg: &str) {
    tracing::debug!(
        option = option_name(option),
        reply = format_args!("{reply:#x}"),
        "{msg}"
    );
    put_option_reply(out, option, reply, &[msg.as_bytes()]);
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, out: &mut Vec<u8>) -> std::io::Result<()> {
    w.write_all(out).await?;
    w.flush().await?;
    out.clear();
    Ok(())
}

async fn discard<R: AsyncRead + Unpin>(r: &mut R, len: u32) -> std::io::Result<()> {
    let copied = tokio::io::copy(&mut r.take(u64::from(len)), &mut tokio::io::sink()).await?;
    if copied < u64::from(len) {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// An export name from the wire, safe to log and bounded in length.
fn printable(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(&name[..name.len().min(256)]);
    if name.len() > 256 {
        format!("{s}...")
    } else {
        s.into_owned()
    }
}
