//! dtu frames over QUIC streams: writing one frame or pre-encoded frame
//! bytes, and reading frames back out of a receive stream.
//!
//! A QUIC stream is a byte stream, so frames arrive split and merged at any
//! boundary; [`FrameStream`] reassembles them with the protocol's
//! [`FrameReader`], which checks each header (and refuses oversized bodies)
//! before buffering the body.

use dtu_proto::frame::{Frame, FrameReader, DEFAULT_MAX_FRAME};

use super::TransportError;

/// Writes one frame to a stream.
pub async fn write_frame(send: &mut quinn::SendStream, f: &Frame) -> Result<(), TransportError> {
    // `to_bytes` encodes once into a buffer quinn can keep without copying.
    send.write_chunk(f.to_bytes()).await?;
    Ok(())
}

/// Writes bytes that already hold whole encoded frames (records read back
/// from the nvbuf).
pub async fn write_bytes(send: &mut quinn::SendStream, bytes: &[u8]) -> Result<(), TransportError> {
    send.write_all(bytes).await?;
    Ok(())
}

/// Reads frames from a QUIC receive stream.
pub struct FrameStream {
    recv: quinn::RecvStream,
    reader: FrameReader,
}

impl FrameStream {
    /// Frames with bodies up to [`DEFAULT_MAX_FRAME`] bytes.
    pub fn new(recv: quinn::RecvStream) -> Self {
        FrameStream::with_max_frame(recv, DEFAULT_MAX_FRAME)
    }

    /// Frames with bodies up to `max_frame` bytes; a larger header is an
    /// error before any of its body is buffered.
    pub fn with_max_frame(recv: quinn::RecvStream, max_frame: usize) -> Self {
        FrameStream {
            recv,
            reader: FrameReader::new(max_frame),
        }
    }

    /// The next frame; `Ok(None)` when the peer finished the stream cleanly
    /// between frames. A stream that ends inside a frame, a reset stream
    /// and a malformed frame are errors.
    pub async fn next(&mut self) -> Result<Option<Frame>, TransportError> {
        loop {
            if let Some(f) = self.reader.next_frame()? {
                return Ok(Some(f));
            }
            // Unordered chunks would need reassembly here; ordered ones come
            // without a copy into an intermediate buffer.
            match self.recv.read_chunk(usize::MAX, true).await? {
                Some(chunk) => self.reader.push(&chunk.bytes),
                None if self.reader.buffered() == 0 => return Ok(None),
                None => return Err(TransportError::Truncated(self.reader.buffered())),
            }
        }
    }

    /// The underlying stream, e.g. to `stop` it.
    pub fn recv_mut(&mut self) -> &mut quinn::RecvStream {
        &mut self.recv
    }
}
