//! Lets gRPC's C core (py-spiffe, grpc-java, Ruby, PHP…) reach the server.
//!
//! Over a Unix socket those clients send the socket path, percent-encoded,
//! as `:authority`. The `http` crate refuses such an authority, so h2
//! resets every stream with PROTOCOL_ERROR (hyperium/h2#487, open). Every
//! Workload API client must work, so each connection passes through this
//! shim: client-to-server HTTP/2 frames are forwarded as they are, except
//! header blocks, which are decoded and encoded again with an unusable
//! `:authority` replaced by `localhost` (what grpc-go and the kubelet send
//! over Unix sockets). Server-to-client bytes are copied untouched.
//!
//! Every block is re-encoded, not only those that change: the re-encoding
//! never uses the dynamic table, so the server's table stays empty and can
//! never disagree with what a client's later blocks refer to. Malformed
//! input closes the connection, as h2 itself would.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The server's SETTINGS_MAX_FRAME_SIZE (h2's default, the protocol's
/// minimum): no client may send larger frames, and re-encoded blocks are
/// split at this size.
const MAX_FRAME: usize = 16_384;
/// Bound on one header block across its CONTINUATION frames.
const MAX_BLOCK: usize = 64 * 1024;
/// The server's SETTINGS_HEADER_TABLE_SIZE (h2's default), which bounds the
/// client's dynamic table.
const TABLE_SIZE: usize = 4096;
const FALLBACK_AUTHORITY: &[u8] = b"localhost";

fn malformed(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

/// A header block being gathered from HEADERS and CONTINUATION frames.
struct Pending {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

/// Forward the client's side of one connection from `from` to `to`.
pub(super) async fn forward_requests(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
) -> io::Result<()> {
    let mut preface = [0u8; 24];
    from.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(malformed("not an HTTP/2 connection preface"));
    }
    to.write_all(&preface).await?;
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    let mut pending: Option<Pending> = None;
    loop {
        let mut head = [0u8; 9];
        match from.read_exact(&mut head).await {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return to.shutdown().await,
            other => other?,
        };
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        if length > MAX_FRAME {
            return Err(malformed("frame larger than SETTINGS_MAX_FRAME_SIZE"));
        }
        let mut payload = vec![0u8; length];
        from.read_exact(&mut payload).await?;
        let (kind, flags) = (head[3], head[4]);
        let stream = [head[5], head[6], head[7], head[8]];
        let done = match (kind, pending.as_mut()) {
            (HEADERS, None) => {
                let started = start_block(flags, stream, &payload)?;
                pending = Some(started);
                flags & END_HEADERS != 0
            }
            (CONTINUATION, Some(p)) if p.stream == stream => {
                if p.block.len() + payload.len() > MAX_BLOCK {
                    return Err(malformed("header block too large"));
                }
                p.block.extend_from_slice(&payload);
                flags & END_HEADERS != 0
            }
            (_, Some(_)) | (CONTINUATION, None) => {
                return Err(malformed("a header block was interrupted"));
            }
            _ => {
                to.write_all(&head).await?;
                to.write_all(&payload).await?;
                continue;
            }
        };
        if done {
            if let Some(p) = pending.take() {
                let frames = reencode(&mut decoder, &p)?;
                to.write_all(&frames).await?;
            }
        }
    }
}

/// The header block fragment of a HEADERS frame, without padding and
/// priority fields.
fn start_block(flags: u8, stream: [u8; 4], payload: &[u8]) -> io::Result<Pending> {
    let mut body = payload;
    let mut padding = 0;
    if flags & PADDED != 0 {
        let (&pad, rest) = body
            .split_first()
            .ok_or_else(|| malformed("short HEADERS"))?;
        padding = usize::from(pad);
        body = rest;
    }
    let priority = if flags & PRIORITY != 0 {
        let (fields, rest) = body
            .split_first_chunk::<5>()
            .ok_or_else(|| malformed("short HEADERS"))?;
        body = rest;
        Some(*fields)
    } else {
        None
    };
    let fragment = body
        .len()
        .checked_sub(padding)
        .map(|end| &body[..end])
        .ok_or_else(|| malformed("padding longer than HEADERS"))?;
    Ok(Pending {
        stream,
        end_stream: flags & END_STREAM != 0,
        priority,
        block: fragment.to_vec(),
    })
}

/// Decode a complete block, fix `:authority`, and frame it again.
fn reencode(decoder: &mut loona_hpack::Decoder<'_>, p: &Pending) -> io::Result<Vec<u8>> {
    let mut block = Vec::with_capacity(p.block.len() + 64);
    decoder
        .decode_with_cb(&p.block, |name, value| {
            let value: &[u8] = if &*name == b":authority" && !usable_authority(&value) {
                FALLBACK_AUTHORITY
            } else {
                &value
            };
            encode_literal(&name, value, &mut block);
        })
        .map_err(|e| malformed(&format!("header block: {e}")))?;
    Ok(frame(p, &block))
}

fn usable_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// RFC 7541 §6.2.2: a literal header field without indexing, new name,
/// no Huffman coding.
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    encode_string(name, out);
    encode_string(value, out);
}

/// RFC 7541 §5.2: a 7-bit-prefix length (not Huffman-coded), then the
/// octets.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    // Writing into a Vec cannot fail.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// One HEADERS frame, then CONTINUATION frames, none above [`MAX_FRAME`].
fn frame(p: &Pending, block: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(block.len() + 32);
    let prefix: &[u8] = p.priority.as_ref().map_or(&[], |f| f.as_slice());
    let first_room = MAX_FRAME - prefix.len();
    let (first, mut rest) = block.split_at(block.len().min(first_room));
    let mut flags = if p.end_stream { END_STREAM } else { 0 };
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    push_frame(&mut out, HEADERS, flags, p.stream, &[prefix, first]);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(MAX_FRAME));
        rest = tail;
        let flags = if rest.is_empty() { END_HEADERS } else { 0 };
        push_frame(&mut out, CONTINUATION, flags, p.stream, &[chunk]);
    }
    out
}

fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: [u8; 4], parts: &[&[u8]]) {
    let length: usize = parts.iter().map(|p| p.len()).sum();
    let length = u32::try_from(length).unwrap_or(u32::MAX).to_be_bytes();
    out.extend_from_slice(&length[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream);
    for part in parts {
        out.extend_from_slice(part);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's header block, from an encoder that indexes into the
    /// dynamic table as real clients do.
    fn client_block(encoder: &mut loona_hpack::Encoder<'_>, authority: &[u8]) -> Vec<u8> {
        encoder.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":scheme", b"http"),
            (b":path", b"/SpiffeWorkloadAPI/FetchX509SVID"),
            (b":authority", authority),
            (b"workload.spiffe.io", b"true"),
        ])
    }

    fn headers_frame(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_frame(&mut out, HEADERS, flags, [0, 0, 0, 1], &[payload]);
        out
    }

    /// Run the shim over `input` and decode the header blocks it emits.
    async fn through(input: Vec<u8>) -> io::Result<(Vec<Vec<(Vec<u8>, Vec<u8>)>>, Vec<u8>)> {
        let mut out = Vec::new();
        forward_requests(&input[..], &mut out).await?;
        assert_eq!(&out[..24], PREFACE);
        let mut decoder = loona_hpack::Decoder::new();
        let (mut blocks, mut others, mut at) = (Vec::new(), Vec::new(), 24);
        let mut block = Vec::new();
        while at < out.len() {
            let len = usize::from(out[at]) << 16
                | usize::from(out[at + 1]) << 8
                | usize::from(out[at + 2]);
            let (kind, flags) = (out[at + 3], out[at + 4]);
            let payload = &out[at + 9..at + 9 + len];
            match kind {
                HEADERS | CONTINUATION => {
                    let skip = if flags & PRIORITY != 0 { 5 } else { 0 };
                    block.extend_from_slice(&payload[skip..]);
                    if flags & END_HEADERS != 0 {
                        blocks.push(decoder.decode(&block).expect("valid HPACK"));
                        block.clear();
                    }
                }
                _ => others.extend_from_slice(&out[at..at + 9 + len]),
            }
            at += 9 + len;
        }
        Ok((blocks, others))
    }

    fn authority_of(block: &[(Vec<u8>, Vec<u8>)]) -> &[u8] {
        &block
            .iter()
            .find(|(n, _)| n == b":authority")
            .expect("authority")
            .1
    }

    #[tokio::test]
    async fn a_percent_encoded_socket_path_becomes_localhost_and_the_rest_is_kept() {
        let mut encoder = loona_hpack::Encoder::new();
        let mut input = PREFACE.to_vec();
        // A SETTINGS frame passes through byte for byte.
        push_frame(&mut input, 0x4, 0, [0; 4], &[&[0, 3, 0, 0, 0, 100]]);
        input.extend(headers_frame(
            END_HEADERS,
            &client_block(&mut encoder, b"tmp%2Fagent.sock"),
        ));
        // The second block refers to entries the first put in the table.
        input.extend(headers_frame(
            END_HEADERS | END_STREAM,
            &client_block(&mut encoder, b"tmp%2Fagent.sock"),
        ));
        input.extend(headers_frame(
            END_HEADERS,
            &client_block(&mut encoder, b"localhost:8080"),
        ));
        let (blocks, others) = through(input).await.expect("forwarded");
        assert_eq!(others[..9], [0, 0, 6, 4, 0, 0, 0, 0, 0]);
        assert_eq!(blocks.len(), 3);
        assert_eq!(authority_of(&blocks[0]), b"localhost");
        assert_eq!(authority_of(&blocks[1]), b"localhost");
        assert_eq!(
            authority_of(&blocks[2]),
            b"localhost:8080",
            "a valid one is kept"
        );
        assert!(blocks[1]
            .iter()
            .any(|(n, v)| n == b"workload.spiffe.io" && v == b"true"));
        assert_eq!(blocks[0].len(), 5);
    }

    #[tokio::test]
    async fn padding_priority_and_continuations_are_understood() {
        let mut encoder = loona_hpack::Encoder::new();
        let block = client_block(&mut encoder, b"%2Frun%2Fa.sock");
        let (one, two) = block.split_at(block.len() / 2);
        let mut payload = vec![3u8]; // pad length
        payload.extend_from_slice(&[0, 0, 0, 0, 7]); // priority
        payload.extend_from_slice(one);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(headers_frame(PADDED | PRIORITY, &payload));
        push_frame(&mut input, CONTINUATION, END_HEADERS, [0, 0, 0, 1], &[two]);
        let (blocks, _) = through(input).await.expect("forwarded");
        assert_eq!(authority_of(&blocks[0]), b"localhost");
    }

    #[tokio::test]
    async fn malformed_input_closes_the_connection() {
        let not_h2 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n....".to_vec();
        assert!(through(not_h2).await.is_err());
        let mut garbage = PREFACE.to_vec();
        garbage.extend(headers_frame(END_HEADERS, &[0xff, 0xff, 0xff]));
        assert!(through(garbage).await.is_err());
        let mut interrupted = PREFACE.to_vec();
        interrupted.extend(headers_frame(0, &[0x82]));
        push_frame(&mut interrupted, 0x0, 0, [0, 0, 0, 1], &[b"data"]);
        assert!(through(interrupted).await.is_err());
    }

    #[test]
    fn long_strings_use_the_multi_octet_length() {
        let mut out = Vec::new();
        encode_string(&[b'a'; 300], &mut out);
        assert_eq!(&out[..3], &[127, 173, 1]); // 300 - 127 = 173 = 0b1010_1101
        assert_eq!(out.len(), 303);
    }

    #[test]
    fn a_large_block_is_split_into_continuations() {
        let p = Pending {
            stream: [0, 0, 0, 3],
            end_stream: true,
            priority: None,
            block: Vec::new(),
        };
        let frames = frame(&p, &vec![0u8; MAX_FRAME + 10]);
        assert_eq!(frames[3], HEADERS);
        assert_eq!(frames[4], END_STREAM, "no END_HEADERS on the first frame");
        let second = 9 + MAX_FRAME;
        assert_eq!(frames[second + 3], CONTINUATION);
        assert_eq!(frames[second + 4], END_HEADERS);
        assert_eq!(frames[second + 2], 10);
    }
}
