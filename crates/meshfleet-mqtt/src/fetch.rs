//! A small HTTP/1.1 GET for `create` by URL: `http://` and `https://` (rustls), one request,
//! `Connection: close`, a size cap enforced while reading (a `Content-Length` above it is
//! refused before the body), a time limit, no redirects (a firmware URL that moves is an
//! operator's mistake to see, not to follow).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest a download may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest response head, bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Why a download failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchError {
    /// Not an `http(s)://host[:port]/path` URL.
    #[error("bad URL: {0}")]
    Url(&'static str),
    /// Network or TLS failure.
    #[error("{0}")]
    Io(String),
    /// The server answered something other than 200.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The response is not HTTP/1.x as we read it.
    #[error("bad response: {0}")]
    Response(&'static str),
    /// Larger than the cap.
    #[error("larger than {cap} bytes")]
    TooLarge {
        /// The cap.
        cap: usize,
    },
    /// Took too long.
    #[error("timed out")]
    Timeout,
}

struct Url<'a> {
    tls: bool,
    host: &'a str,
    port: u16,
    path: &'a str,
}

fn parse(url: &str) -> Result<Url<'_>, FetchError> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(FetchError::Url("the scheme must be http:// or https://"));
    };
    let (hostport, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if hostport.contains('@') {
        return Err(FetchError::Url("credentials in the URL are not supported"));
    }
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>().map_err(|_| FetchError::Url("bad port"))?,
        ),
        _ => (hostport, if tls { 443 } else { 80 }),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(FetchError::Url("no host"));
    }
    if path.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return Err(FetchError::Url("bad path"));
    }
    Ok(Url {
        tls,
        host,
        port,
        path,
    })
}

/// GETs `url`, at most `cap` bytes of body.
pub async fn get(
    url: &str,
    cap: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>, FetchError> {
    tokio::time::timeout(FETCH_TIMEOUT, get_inner(url, cap, tls))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn get_inner(
    url: &str,
    cap: usize,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Vec<u8>, FetchError> {
    let u = parse(url)?;
    let tcp = TcpStream::connect((u.host, u.port))
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    if u.tls {
        let config = tls.ok_or(FetchError::Url("https is not set up"))?;
        let name = rustls::pki_types::ServerName::try_from(u.host.to_owned())
            .map_err(|_| FetchError::Url("bad host name"))?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        exchange(stream, &u, cap).await
    } else {
        exchange(tcp, &u, cap).await
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    u: &Url<'_>,
    cap: usize,
) -> Result<Vec<u8>, FetchError> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: meshfleet-gateway\r\nAccept: application/octet-stream\r\nConnection: close\r\n\r\n",
        u.path, u.host
    );
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| FetchError::Io(e.to_string()))?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(FetchError::Response("head too long"));
        }
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        if n == 0 {
            return Err(FetchError::Response("closed before the head ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| FetchError::Response("head not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or(FetchError::Response("no status line"))?;
    if status != 200 {
        return Err(FetchError::Status(status));
    }
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "content-length" {
                length = Some(
                    v.parse::<usize>()
                        .map_err(|_| FetchError::Response("bad Content-Length"))?,
                );
            } else if k == "transfer-encoding" && !v.eq_ignore_ascii_case("identity") {
                return Err(FetchError::Response("chunked transfer is not supported"));
            }
        }
    }
    if length.is_some_and(|l| l > cap) {
        return Err(FetchError::TooLarge { cap });
    }
    let mut body = buf.split_off(head_end);
    loop {
        if body.len() > cap {
            return Err(FetchError::TooLarge { cap });
        }
        if length.is_some_and(|l| body.len() >= l) {
            break;
        }
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| FetchError::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    if let Some(l) = length {
        if body.len() < l {
            return Err(FetchError::Response("body shorter than Content-Length"));
        }
        body.truncate(l);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::net::TcpListener;

    async fn serve(resp: Vec<u8>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            let _ = s.write_all(&resp).await;
        });
        format!("http://{addr}/fw.mfw")
    }

    #[tokio::test]
    async fn fetches_and_caps() {
        let url = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()).await;
        assert_eq!(get(&url, 10, None).await.unwrap(), b"hello");
        let url = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nhello".to_vec()).await;
        assert_eq!(
            get(&url, 10, None).await,
            Err(FetchError::TooLarge { cap: 10 })
        );
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(std::iter::repeat(b'x').take(100));
        let url = serve(big).await;
        assert_eq!(
            get(&url, 10, None).await,
            Err(FetchError::TooLarge { cap: 10 })
        );
        let url = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec()).await;
        assert_eq!(get(&url, 10, None).await, Err(FetchError::Status(404)));
        assert!(matches!(
            get("ftp://x/y", 10, None).await,
            Err(FetchError::Url(_))
        ));
    }
}
