//! The SDK's `Connect` call on an HTTP/2 connection of its own (the h2 crate).
//!
//! tonic's client runs a streaming call on three tasks: hyper's connection task, a task
//! that pipes the request body into the HTTP/2 stream, and the caller's. A frame a
//! device published woke the pipe task to encode it, which woke the connection task to
//! write it. Here [`Endpoint::open`] makes the connection and the call, and the client's
//! driver task polls the connection and the writer ([`write`]) together: a publish,
//! encoded by the publisher (`publish.rs`), wakes one task, which writes it to the
//! socket in the same poll, as a NATS client's connection task does. The [`Reader`]
//! runs in a task of its own, so a subscriber that takes a heavy stream has the socket
//! read and its frames routed on two cores at once. On the wire it is the same gRPC call the server's tonic service
//! answers: each message framed by a compression flag and a 4-byte length, the call's
//! status in the trailers.
//!
//! # Invariants
//!
//! - The writer takes frames from the request queue only while the stream has send
//!   capacity (the server's HTTP/2 window), at most [`WRITE_CHUNK_BYTES`] at a time, so
//!   a server that stops reading leaves at most one chunk buffered beyond its window and
//!   the bounded queue holds the rest (publishers wait on it).
//! - The reader buffers at most one incomplete frame, bounded by
//!   [`MAX_SERVER_FRAME_BYTES`], plus one received chunk; it hands HTTP/2 window back
//!   as it takes chunks, and takes the next only once every whole frame before it was
//!   routed, so a full subscription holds the server back through the window.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::{Connection, SendRequest};
use h2::{RecvStream, SendStream};
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, TE};
use http::{Method, Request, Uri};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

use super::shared::Room;
use super::{CLIENT_STREAM_WINDOW_BYTES, ClientError, ClientOptions};
use crate::proto::streambus::v1 as pb;

/// The `Connect` method's path.
const CONNECT_PATH: &str = "/streambus.v1.Bus/Connect";
/// Encoded frames the writer hands HTTP/2 at once, at most (a frame larger than this
/// goes alone).
const WRITE_CHUNK_BYTES: usize = 64 * 1024;
/// The largest server frame the client takes. The server cuts delivery batches to
/// about 1 MiB and a single message to its `max_message_bytes`; a longer length prefix
/// is a broken or hostile peer, and ends the call rather than the client's memory.
pub(super) const MAX_SERVER_FRAME_BYTES: usize = 256 * 1024 * 1024;
/// gRPC's frame header: a compression flag and a big-endian length.
pub(super) const FRAME_HEADER_BYTES: usize = 5;

/// A byte stream HTTP/2 runs on: TCP, or TLS over TCP.
pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The HTTP/2 connection of one call; polled by the driver beside the call, it reads
/// and writes the socket.
pub(super) type Link = Connection<Box<dyn Io>, Bytes>;

/// One server URL of a client, ready to open calls to.
#[derive(Clone)]
pub(super) struct Endpoint {
    /// The URL as the application gave it (for logs).
    pub(super) url: String,
    /// `host:port` to connect to.
    addr: String,
    /// The `Connect` method's URI on this server.
    uri: Uri,
    /// For `https://`: the connector (the server's CA, the client's certificate) and
    /// the name the server's certificate must carry.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// The `authorization` header, if the client has credentials.
    authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A call just opened: its connection, its two directions, and the server's `welcome`.
pub(super) struct Call {
    /// Reads and writes the socket; must be polled for anything to move.
    pub(super) link: Link,
    /// Kept so the connection stays open for the call's life.
    pub(super) requests: SendRequest<Bytes>,
    /// The request stream (client frames).
    pub(super) send: SendStream<Bytes>,
    /// The response stream (server frames), after `welcome`.
    pub(super) reader: Reader,
}

fn url_error(url: &str, reason: impl std::fmt::Display) -> ClientError {
    ClientError::Url {
        url: url.to_owned(),
        reason: reason.to_string(),
    }
}

fn transport(error: impl std::fmt::Display) -> ClientError {
    ClientError::Transport(error.to_string())
}

impl Endpoint {
    /// The endpoint of `url` with `options`' credentials and TLS. An `https://` URL needs
    /// [`ClientOptions::tls`], and TLS settings need an `https://` URL.
    pub(super) fn new(url: &str, options: &ClientOptions) -> Result<Endpoint, ClientError> {
        let parsed: Uri = url.parse().map_err(|e| url_error(url, e))?;
        let secure = match parsed.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(url_error(url, "the scheme must be http:// or https://")),
        };
        let authority = parsed.authority().ok_or_else(|| url_error(url, "no host"))?.clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let uri = Uri::builder()
            .scheme(parsed.scheme_str().unwrap_or("http"))
            .authority(authority.clone())
            .path_and_query(CONNECT_PATH)
            .build()
            .map_err(|e| url_error(url, e))?;
        let tls = match (&options.tls, secure) {
            (Some(tls), true) => {
                let config = tls.rustls_config().map_err(|e| url_error(url, e))?;
                let name = tls.domain.clone().unwrap_or_else(|| host.clone());
                let name = ServerName::try_from(name).map_err(|e| url_error(url, e))?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            (None, true) => {
                return Err(url_error(
                    url,
                    "https:// needs the client's TLS settings (the server's CA)",
                ));
            }
            (Some(_), false) => return Err(url_error(url, "TLS settings need an https:// URL")),
            (None, false) => None,
        };
        let authorization = match options.auth.header_text() {
            Some(text) => {
                let mut value = HeaderValue::try_from(text).map_err(|e| url_error(url, e))?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Endpoint {
            url: url.to_owned(),
            addr,
            uri,
            tls,
            authorization,
        })
    }

    /// Connects, opens the `Connect` call, sends `hello` and waits for the server's
    /// `welcome` (no timeout here: the caller bounds it).
    pub(super) async fn open(&self, hello: &pb::ClientFrame) -> Result<(Call, pb::Welcome), ClientError> {
        let tcp = TcpStream::connect(&self.addr).await.map_err(transport)?;
        tcp.set_nodelay(true).map_err(transport)?;
        let io: Box<dyn Io> = match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await.map_err(transport)?),
            None => Box::new(tcp),
        };
        let (requests, mut link) = h2::client::Builder::new()
            // Room for whole delivery frames in flight (see the server's windows).
            .initial_window_size(CLIENT_STREAM_WINDOW_BYTES)
            .initial_connection_window_size(CLIENT_STREAM_WINDOW_BYTES * 4)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(transport)?;
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(())
            .map_err(transport)?;
        if let Some(value) = &self.authorization {
            request.headers_mut().insert(AUTHORIZATION, value.clone());
        }
        // The connection must be polled while the call starts.
        let start = async {
            let mut requests = requests.ready().await.map_err(transport)?;
            let (response, mut send) = requests.send_request(request, false).map_err(transport)?;
            send_now(&mut send, std::slice::from_ref(hello))?;
            let response = response.await.map_err(transport)?;
            // A refusal before any message (bad credentials) is a trailers-only response.
            if let Some(status) = status_of(response.headers())
                && status.code() != tonic::Code::Ok
            {
                return Err(ClientError::Status(status));
            }
            if response.status() != http::StatusCode::OK {
                return Err(ClientError::Protocol(format!("HTTP status {}", response.status())));
            }
            let mut reader = Reader::new(response.into_body());
            match reader.message().await? {
                Some(pb::ServerFrame {
                    frame: Some(pb::server_frame::Frame::Welcome(welcome)),
                }) => Ok((requests, send, reader, welcome)),
                other => Err(ClientError::Protocol(format!("expected welcome, got {other:?}"))),
            }
        };
        let mut start = std::pin::pin!(start);
        let (requests, send, reader, welcome) = tokio::select! {
            started = &mut start => started?,
            ended = &mut link => {
                // What arrived before the close is buffered: a refusal the server sent
                // just before closing is the better reason, and it takes no more I/O.
                if let Some(Err(refused)) = futures::FutureExt::now_or_never(start.as_mut()) {
                    return Err(refused);
                }
                return Err(link_ended(ended));
            }
        };
        let call = Call {
            link,
            requests,
            send,
            reader,
        };
        Ok((call, welcome))
    }
}

/// Why a call ends when its connection does.
pub(super) fn link_ended(ended: Result<(), h2::Error>) -> ClientError {
    match ended {
        Ok(()) => ClientError::Transport("the server closed the connection".into()),
        Err(e) => transport(e),
    }
}

/// The gRPC status in `headers`, if there is one. Its binary details are left out:
/// tonic's parser panics on details that are not base64, and the SDK has no use for them.
fn status_of(headers: &http::HeaderMap) -> Option<tonic::Status> {
    headers.get("grpc-status")?;
    let mut headers = headers.clone();
    headers.remove("grpc-status-details-bin");
    tonic::Status::from_header_map(&headers)
}

/// Appends `frame` to `out` in gRPC's framing (uncompressed).
fn encode(frame: &pb::ClientFrame, out: &mut BytesMut) {
    let len = frame.encoded_len();
    out.reserve(FRAME_HEADER_BYTES + len);
    put_header(len, out);
    frame.encode_raw(out);
}

/// Appends gRPC's header of a frame of `len` bytes: no compression, the length.
pub(super) fn put_header(len: usize, out: &mut BytesMut) {
    out.put_u8(0);
    // A client frame is far below 4 GiB: the SDK cuts batches to the server's limits.
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
}

/// `frame` in gRPC's framing, in a buffer of its own: what the request queue carries.
pub(super) fn framed(frame: pb::client_frame::Frame) -> Bytes {
    let mut out = BytesMut::new();
    encode(&pb::ClientFrame { frame: Some(frame) }, &mut out);
    out.freeze()
}

/// The client frame in `bytes` (one frame in gRPC's framing, as [`framed`] makes it).
#[cfg(test)]
pub(super) fn unframed(mut bytes: Bytes) -> pb::client_frame::Frame {
    assert_eq!(frame_len(&bytes).unwrap(), Some(bytes.len() - FRAME_HEADER_BYTES));
    bytes.advance(FRAME_HEADER_BYTES);
    pb::ClientFrame::decode(bytes).unwrap().frame.unwrap()
}

/// Queues `frames` on the request stream at once (a new call's `hello`, and its
/// resubscribes before the request queue opens: as many as the client has
/// subscriptions).
pub(super) fn send_now(send: &mut SendStream<Bytes>, frames: &[pb::ClientFrame]) -> Result<(), ClientError> {
    let mut out = BytesMut::new();
    for frame in frames {
        encode(frame, &mut out);
    }
    if out.is_empty() {
        return Ok(());
    }
    send.send_data(out.freeze(), false).map_err(transport)
}

/// Writes the request queue's frames (each already in gRPC's framing) to the stream as
/// the server's window allows, giving their bytes back to the queue's room as it takes
/// them; once the queue closes (the client closed, or the connection is being dropped)
/// ends the stream and waits. Returns only on a transport failure.
pub(super) async fn write(
    send: &mut SendStream<Bytes>,
    queue: &mut mpsc::Receiver<Bytes>,
    queued: &Room,
) -> ClientError {
    let mut out = BytesMut::new();
    // The stream's send capacity as last read, less what was sent since: read again
    // (each read takes the connection's stream lock) only once it runs low, not per
    // frame.
    let mut room = 0;
    loop {
        // Room in the server's window first: what waits stays in the bounded queue.
        if room < WRITE_CHUNK_BYTES / 2 {
            send.reserve_capacity(WRITE_CHUNK_BYTES);
            room = send.capacity();
            while room == 0 {
                match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                    Some(Ok(_)) => room = send.capacity(),
                    Some(Err(e)) => return transport(e),
                    None => return ClientError::Disconnected,
                }
            }
        }
        let Some(first) = queue.recv().await else {
            // CloseSend: the server ends the session and then the call.
            if let Err(e) = send.send_data(Bytes::new(), true) {
                return transport(e);
            }
            return std::future::pending().await;
        };
        // A frame alone goes as it was encoded; frames that waited together go as one
        // chunk of at most about `WRITE_CHUNK_BYTES`.
        let chunk = match queue.try_recv() {
            Err(_) => first,
            Ok(second) => {
                out.reserve(first.len() + second.len());
                out.extend_from_slice(&first);
                out.extend_from_slice(&second);
                while out.len() < WRITE_CHUNK_BYTES
                    && let Ok(frame) = queue.try_recv()
                {
                    out.extend_from_slice(&frame);
                }
                out.split().freeze()
            }
        };
        // Out of the queue: its senders may fill that room again.
        queued.give(chunk.len());
        room = room.saturating_sub(chunk.len());
        if let Err(e) = send.send_data(chunk, false) {
            return transport(e);
        }
    }
}

/// What a buffer starts with: a whole frame of `usize` bytes (after the header), or not
/// enough yet.
fn frame_len(buf: &[u8]) -> Result<Option<usize>, ClientError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(None);
    };
    if header[0] != 0 {
        return Err(ClientError::Protocol(
            "a compressed frame, which was not asked for".into(),
        ));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len > MAX_SERVER_FRAME_BYTES {
        return Err(ClientError::Protocol(format!(
            "a frame of {len} bytes, over the client's limit of {MAX_SERVER_FRAME_BYTES}"
        )));
    }
    Ok((buf.len() >= FRAME_HEADER_BYTES + len).then_some(len))
}

/// A whole frame (header included) decoded.
fn decode(mut frame: Bytes) -> Result<pb::ServerFrame, ClientError> {
    frame.advance(FRAME_HEADER_BYTES);
    pb::ServerFrame::decode(frame).map_err(|e| ClientError::Protocol(format!("undecodable server frame: {e}")))
}

/// The response stream, cut into server frames.
pub(super) struct Reader {
    /// The response body.
    body: RecvStream,
    /// What was received and not yet decoded.
    frames: Frames,
}

/// Received bytes cut into whole gRPC frames. Frames inside one chunk are cut from it in
/// place (their payloads then share the chunk, no copy); only a frame that spans chunks
/// is gathered into a buffer of its own.
#[derive(Default)]
struct Frames {
    /// The rest of the chunk last received.
    chunk: Bytes,
    /// A frame that spans chunks, gathered (empty otherwise).
    partial: BytesMut,
}

impl Frames {
    /// Adds a received chunk.
    fn push(&mut self, chunk: Bytes) {
        if self.partial.is_empty() && self.chunk.is_empty() {
            self.chunk = chunk;
        } else {
            self.partial.extend_from_slice(&self.chunk);
            self.chunk = Bytes::new();
            self.partial.extend_from_slice(&chunk);
        }
    }

    /// The next whole frame, header included, if it has arrived.
    fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        if self.partial.is_empty() {
            return Ok(frame_len(&self.chunk)?.map(|len| self.chunk.split_to(FRAME_HEADER_BYTES + len)));
        }
        let Some(len) = frame_len(&self.partial)? else {
            return Ok(None);
        };
        let frame = self.partial.split_to(FRAME_HEADER_BYTES + len).freeze();
        // What followed it is cut in place again.
        self.chunk = self.partial.split().freeze();
        Ok(Some(frame))
    }

    /// Whether nothing is left over.
    fn is_empty(&self) -> bool {
        self.partial.is_empty() && self.chunk.is_empty()
    }
}

impl Reader {
    fn new(body: RecvStream) -> Reader {
        Reader {
            body,
            frames: Frames::default(),
        }
    }

    /// The next server frame; `None` once the server ended the call with status OK.
    pub(super) async fn message(&mut self) -> Result<Option<pb::ServerFrame>, ClientError> {
        loop {
            if let Some(frame) = self.frames.next()? {
                return decode(frame).map(Some);
            }
            match self.body.data().await {
                Some(Ok(chunk)) => {
                    // The window is handed back at once: this chunk is all the reader
                    // holds, and the next is asked for only after its frames are routed.
                    let _ = self.body.flow_control().release_capacity(chunk.len());
                    self.frames.push(chunk);
                }
                Some(Err(e)) => return Err(transport(e)),
                None => return self.end().await,
            }
        }
    }

    /// The call's end: its status from the trailers.
    async fn end(&mut self) -> Result<Option<pb::ServerFrame>, ClientError> {
        if !self.frames.is_empty() {
            return Err(ClientError::Protocol("the call ended inside a frame".into()));
        }
        let trailers = self.body.trailers().await.map_err(transport)?;
        match trailers.as_ref().and_then(status_of) {
            Some(status) if status.code() == tonic::Code::Ok => Ok(None),
            Some(status) => Err(ClientError::Status(status)),
            None => Err(ClientError::Protocol("the call ended without a status".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The framing is gRPC's: flag 0, big-endian length, then the protobuf.
    #[test]
    fn frames_carry_a_flag_and_a_length() {
        let ping = pb::client_frame::Frame::Ping(pb::Ping { nonce: 7 });
        let bytes = framed(ping.clone());
        let body = pb::ClientFrame {
            frame: Some(ping.clone()),
        }
        .encode_to_vec();
        assert_eq!(bytes[0], 0);
        assert_eq!(
            u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize,
            body.len()
        );
        assert_eq!(&bytes[5..], &body[..]);
        assert_eq!(frame_len(&bytes).unwrap(), Some(body.len()));
        assert_eq!(frame_len(&bytes[..bytes.len() - 1]).unwrap(), None);
        assert_eq!(frame_len(&bytes[..3]).unwrap(), None);
        assert_eq!(unframed(bytes), ping);
    }

    /// A compressed frame or an absurd length ends the call with a protocol error.
    #[test]
    fn bad_headers_are_refused() {
        assert!(matches!(frame_len(&[1, 0, 0, 0, 0]), Err(ClientError::Protocol(_))));
        assert!(matches!(
            frame_len(&[0, 255, 255, 255, 255]),
            Err(ClientError::Protocol(_))
        ));
    }

    proptest::proptest! {
        /// However the stream is cut into chunks, the same frames come out, whole and in
        /// order, and nothing is left over.
        #[test]
        fn frames_survive_any_chunking(
            sizes in proptest::collection::vec(0usize..40_000, 1..12),
            cuts in proptest::collection::vec(1usize..20_000, 1..40),
        ) {
            let mut stream = BytesMut::new();
            let mut want = Vec::new();
            for (i, size) in sizes.iter().enumerate() {
                let body = vec![i as u8; *size];
                stream.put_u8(0);
                stream.put_u32(*size as u32);
                stream.extend_from_slice(&body);
                want.push(body);
            }
            let mut stream = stream.freeze();
            let mut frames = Frames::default();
            let mut got = Vec::new();
            let mut cut = cuts.iter().cycle();
            while !stream.is_empty() {
                let n = (*cut.next().unwrap()).min(stream.len());
                frames.push(stream.split_to(n));
                while let Some(mut frame) = frames.next().unwrap() {
                    frame.advance(FRAME_HEADER_BYTES);
                    got.push(frame.to_vec());
                }
            }
            proptest::prop_assert!(frames.is_empty());
            proptest::prop_assert_eq!(got, want);
        }
    }

    /// URLs: scheme, default port, IPv6, and TLS settings that must match the scheme.
    #[test]
    fn endpoints_check_their_url() {
        let options = ClientOptions::new("http://x");
        let e = Endpoint::new("http://127.0.0.1:50051", &options).unwrap();
        assert_eq!(e.addr, "127.0.0.1:50051");
        assert_eq!(e.uri.path(), CONNECT_PATH);
        assert_eq!(
            Endpoint::new("http://bus.local", &options).unwrap().addr,
            "bus.local:80"
        );
        assert_eq!(Endpoint::new("http://[::1]:9", &options).unwrap().addr, "[::1]:9");
        assert!(matches!(
            Endpoint::new("ftp://h:1", &options),
            Err(ClientError::Url { .. })
        ));
        assert!(matches!(
            Endpoint::new("not a url", &options),
            Err(ClientError::Url { .. })
        ));
        assert!(matches!(
            Endpoint::new("https://h:1", &options),
            Err(ClientError::Url { .. })
        ));
        let with_tls = ClientOptions::new("http://x").tls(super::super::ClientTls::default());
        assert!(matches!(
            Endpoint::new("http://h:1", &with_tls),
            Err(ClientError::Url { .. })
        ));
    }

    /// A status is read from its headers; malformed details from a server are ignored,
    /// not a panic.
    #[test]
    fn statuses_survive_bad_details() {
        let mut headers = http::HeaderMap::new();
        assert!(status_of(&headers).is_none());
        headers.insert("grpc-status", HeaderValue::from_static("16"));
        headers.insert("grpc-message", HeaderValue::from_static("no%20entry"));
        headers.insert("grpc-status-details-bin", HeaderValue::from_static("!!not base64!!"));
        let status = status_of(&headers).unwrap();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
        assert_eq!(status.message(), "no entry");
    }
}
