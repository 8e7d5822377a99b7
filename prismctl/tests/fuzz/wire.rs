//! A deliberately dumb HTTP/1.1 client over a plain TCP socket: it writes exactly the bytes
//! it is given (any method, any request target, invalid UTF-8, repeated or malformed
//! headers, any body and framing) and reads the answer back. An HTTP library would
//! normalise or refuse most of what the fuzz test wants to send.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Most bytes of an answer's body kept for checks and reports.
const BODY_KEPT: usize = 64 * 1024;
/// Most bytes of an answer's status line and headers.
const HEAD_MAX: usize = 256 * 1024;

/// An answer as it came over the wire.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked), at most [`BODY_KEPT`] bytes of it.
    pub body: Vec<u8>,
    /// A `text/event-stream` answer whose stream was cut after its first bytes.
    pub streamed: bool,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The media type without parameters, in lower case (`""` without a Content-Type).
    pub fn media_type(&self) -> String {
        self.header("content-type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }
}

/// What became of a request.
#[derive(Debug)]
pub enum Outcome {
    Answered(Answer),
    /// Connected, but no complete answer: the connection was closed or reset, or the
    /// answer did not come in time. `sent_all` says whether the whole request was written.
    NoAnswer {
        why: String,
        sent_all: bool,
    },
    /// Nobody accepted the connection: the service is gone.
    Refused(String),
}

/// Sends `request` (the complete bytes of one HTTP/1.1 request) to `address` and reads the
/// answer, within `limit`. A `text/event-stream` answer is read for `stream_read` after
/// its head, then cut.
pub async fn exchange(
    address: &str,
    request: &[u8],
    head_only: bool,
    limit: Duration,
    stream_read: Duration,
) -> Outcome {
    let deadline = Instant::now() + limit;
    let stream = match tokio::time::timeout(limit, TcpStream::connect(address)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Outcome::Refused(e.to_string()),
        Err(_) => return Outcome::Refused(format!("no connection within {limit:?}")),
    };
    let (mut reader, mut writer) = stream.into_split();
    // The body is written while the answer is read: a server may answer (413) before it
    // has read a large body, and close.
    let request = request.to_vec();
    let writing = tokio::spawn(async move {
        let written = writer.write_all(&request).await.is_ok();
        // Keep the write half open: closing it would tell the server we are done.
        (written, writer)
    });
    let read =
        tokio::time::timeout_at(deadline, read_answer(&mut reader, head_only, stream_read)).await;
    let sent_all = if writing.is_finished() {
        matches!(writing.await, Ok((true, _)))
    } else {
        writing.abort();
        false
    };
    match read {
        Ok(Ok(answer)) => Outcome::Answered(answer),
        Ok(Err(why)) => Outcome::NoAnswer { why, sent_all },
        Err(_) => Outcome::NoAnswer {
            why: format!("no complete answer within {limit:?}"),
            sent_all,
        },
    }
}

async fn read_answer(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    head_only: bool,
    stream_read: Duration,
) -> Result<Answer, String> {
    let mut buffer = Vec::new();
    loop {
        let (status, headers, rest) = read_head(reader, &mut buffer).await?;
        buffer = rest;
        if (100..200).contains(&status) {
            continue; // 100 Continue: the real answer follows.
        }
        let mut answer = Answer {
            status,
            headers,
            body: Vec::new(),
            streamed: false,
        };
        if head_only || status == 204 || status == 304 {
            return Ok(answer);
        }
        let chunked = answer
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let length = answer
            .header("content-length")
            .and_then(|v| v.trim().parse::<usize>().ok());
        if answer.media_type() == "text/event-stream" {
            // A stream never ends: what arrives in `stream_read` is enough.
            let _ = tokio::time::timeout(stream_read, read_some(reader, &mut buffer)).await;
            answer.body = buffer;
            answer.streamed = true;
            return Ok(answer);
        }
        answer.body = if chunked {
            read_chunked(reader, buffer).await?
        } else if let Some(length) = length {
            read_exactly(reader, buffer, length).await?
        } else {
            read_to_end(reader, buffer).await?
        };
        return Ok(answer);
    }
}

async fn read_some(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buffer: &mut Vec<u8>,
) -> Result<usize, String> {
    let mut chunk = [0_u8; 16 * 1024];
    let n = reader
        .read(&mut chunk)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    buffer.extend_from_slice(&chunk[..n]);
    Ok(n)
}

type Head = (u16, Vec<(String, String)>, Vec<u8>);

async fn read_head(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    buffer: &mut Vec<u8>,
) -> Result<Head, String> {
    loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
            let rest = buffer[end + 4..].to_vec();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status = status_line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse::<u16>().ok())
                .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
            let headers = lines
                .filter_map(|line| line.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            return Ok((status, headers, rest));
        }
        if buffer.len() > HEAD_MAX {
            return Err(format!("an answer head over {HEAD_MAX} bytes"));
        }
        if read_some(reader, buffer).await? == 0 {
            return Err(if buffer.is_empty() {
                "the connection was closed without an answer".to_owned()
            } else {
                format!(
                    "the connection was closed in the answer's head: {:?}",
                    String::from_utf8_lossy(buffer)
                )
            });
        }
    }
}

async fn read_exactly(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    mut buffer: Vec<u8>,
    length: usize,
) -> Result<Vec<u8>, String> {
    let mut total = buffer.len();
    buffer.truncate(BODY_KEPT);
    let mut chunk = [0_u8; 16 * 1024];
    while total < length {
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        if n == 0 {
            return Err(format!(
                "the connection was closed after {total} of {length} body bytes"
            ));
        }
        total += n;
        keep(&mut buffer, &chunk[..n]);
    }
    Ok(buffer)
}

async fn read_to_end(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    mut buffer: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut chunk = [0_u8; 16 * 1024];
    loop {
        let n = reader
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        if n == 0 {
            return Ok(buffer);
        }
        keep(&mut buffer, &chunk[..n]);
    }
}

async fn read_chunked(
    reader: &mut tokio::net::tcp::OwnedReadHalf,
    mut raw: Vec<u8>,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        // The size line.
        let line_end = loop {
            if let Some(end) = find(&raw[at..], b"\r\n") {
                break at + end;
            }
            if read_some(reader, &mut raw).await? == 0 {
                return Err("the connection was closed in a chunked body".into());
            }
        };
        let size_text = String::from_utf8_lossy(&raw[at..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("a bad chunk size line: {size_text:?}"))?;
        at = line_end + 2;
        if size == 0 {
            return Ok(body);
        }
        while raw.len() < at + size + 2 {
            if read_some(reader, &mut raw).await? == 0 {
                return Err("the connection was closed in a chunk".into());
            }
        }
        keep(&mut body, &raw[at..at + size]);
        at += size + 2;
        // Forget what was read, so a long body does not pile up.
        raw.drain(..at);
        at = 0;
    }
}

fn keep(buffer: &mut Vec<u8>, bytes: &[u8]) {
    let room = BODY_KEPT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
