//! A small HTTP/1.1 client for the command line's talk to a running daemon
//! on loopback (`dharti status`, `offer`, ...): one request per connection,
//! `Connection: close`, plain or chunked bodies. Loopback only, so no TLS.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{Context, bail};

/// How long the CLI waits for the daemon.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The status code and body of one request to `base` (like `http://127.0.0.1:8080`).
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let (status, bytes) = request_bytes(base, method, path, token, body)?;
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// [`request`] with the body as bytes (a snapshot, say).
pub fn request_bytes(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let host = base
        .strip_prefix("http://")
        .with_context(|| format!("{base} is not an http:// URL"))?
        .trim_end_matches('/');
    let mut stream =
        TcpStream::connect(host).with_context(|| format!("cannot reach the daemon at {base}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    if let Some(token) = token {
        head.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("no answer from the daemon at {base}"))?;
    parse_response(&raw)
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("the daemon's answer has no header end");
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let body = &raw[end + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the daemon's answer has no status code")?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    Ok((status, body))
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("bad chunk")?;
        let size = std::str::from_utf8(&body[..line_end]).context("bad chunk size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
        let rest = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).context("short chunk")?);
        body = rest.get(size + 2..).context("short chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_chunked_bodies() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) = parse_response(
            b"HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((s, b.as_slice()), (401, &b"abcde"[..]));
    }
}
