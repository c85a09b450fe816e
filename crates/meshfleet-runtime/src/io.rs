//! The socket tasks: listener, connectors, and a reader and a writer per link. They own
//! sockets and nothing else; everything they learn goes to the owner task as an [`Input`]
//! over one bounded channel, so a flooding peer is slowed down by TCP flow control
//! instead of growing a buffer.

use std::net::SocketAddr;
use std::time::Duration;

use meshfleet_mesh::{LinkId, Rng};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::BackoffConfig;
use crate::event::{DisconnectReason, RuntimeEvent};
use crate::ratelimit::LogLimiter;

/// Largest chunk a reader hands to the node at once. Bounds the work of one
/// `handle_bytes` call (and the memory of one [`Input::Bytes`]).
pub(crate) const READ_CHUNK: usize = 16 * 1024;

/// What the socket tasks tell the owner.
pub(crate) enum Input {
    /// The listener accepted a connection.
    Accepted { stream: TcpStream, addr: SocketAddr },
    /// A connector's attempt succeeded. Dropping `done` tells the connector the link has
    /// ended and it should reconnect.
    Connected {
        stream: TcpStream,
        addr: SocketAddr,
        done: oneshot::Sender<()>,
    },
    /// Bytes read from a link.
    Bytes { link: LinkId, data: Vec<u8> },
    /// The writer finished the batch it was given and wants the next.
    Written { link: LinkId },
    /// The connection failed or the peer closed it.
    Closed {
        link: LinkId,
        reason: DisconnectReason,
    },
}

/// Reads a link until EOF or error.
pub(crate) async fn read_loop<R>(link: LinkId, mut reader: R, tx: mpsc::Sender<Input>)
where
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; READ_CHUNK];
    let reason = loop {
        match reader.read(&mut buf).await {
            Ok(0) => break DisconnectReason::Eof,
            Ok(n) => {
                let data = buf[..n].to_vec();
                // Waiting here when the owner is busy is the backpressure: we stop
                // reading, the kernel buffer fills, the peer's TCP window closes.
                if tx.send(Input::Bytes { link, data }).await.is_err() {
                    return;
                }
            }
            Err(e) => break DisconnectReason::Io(e.kind()),
        }
    };
    let _ = tx.send(Input::Closed { link, reason }).await;
}

/// Writes what the owner hands it, one batch at a time, and asks for more after each.
///
/// The owner keeps the queue (so it can reorder and drop by priority); this task holds
/// at most the batch being written.
pub(crate) async fn write_loop<W>(
    link: LinkId,
    mut writer: W,
    mut batches: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Input>,
) where
    W: AsyncWrite + Unpin,
{
    while let Some(batch) = batches.recv().await {
        if let Err(e) = writer.write_all(&batch).await {
            let reason = DisconnectReason::Io(e.kind());
            let _ = tx.send(Input::Closed { link, reason }).await;
            return;
        }
        if tx.send(Input::Written { link }).await.is_err() {
            return;
        }
    }
    // The owner dropped our channel: the link is closing. Send a FIN after what we wrote.
    let _ = writer.shutdown().await;
}

/// Accepts connections until the owner goes away.
pub(crate) async fn accept_loop(listener: TcpListener, tx: mpsc::Sender<Input>) {
    let mut errors = LogLimiter::new(Duration::from_secs(10));
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                set_nodelay(&stream, addr);
                if tx.send(Input::Accepted { stream, addr }).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // EMFILE/ENFILE persist until a descriptor is freed: pause instead of
                // spinning on the error. Transient ones (ECONNABORTED) cost one pause.
                if let Some(suppressed) = errors.check(Instant::now()) {
                    warn!(error = %e, suppressed, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The library's AP side sets TCP_NODELAY; without it on either side, a frame written
/// after a small one waits for the delayed ACK (40 ms stalls, PROTOCOL.md §4.1).
fn set_nodelay(stream: &TcpStream, addr: SocketAddr) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(peer = %addr, error = %e, "cannot set TCP_NODELAY");
    }
}

/// Everything one connector needs.
pub(crate) struct Connector {
    pub(crate) target: String,
    pub(crate) backoff: BackoffConfig,
    pub(crate) connect_timeout: Duration,
    pub(crate) rng: Rng,
    pub(crate) inputs: mpsc::Sender<Input>,
    pub(crate) events: broadcast::Sender<RuntimeEvent>,
}

impl Connector {
    /// Keeps one connection to the target open: connect, hand it over, wait until the
    /// owner reports it ended, back off, repeat. Ends when the owner goes away.
    pub(crate) async fn run(self) {
        let Self {
            target,
            backoff: cfg,
            connect_timeout,
            rng,
            inputs,
            events,
        } = self;
        let mut backoff = Backoff::new(cfg, rng);
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let _ = events.send(RuntimeEvent::Connecting {
                target: target.clone(),
                attempt,
            });
            debug!(%target, attempt, "connecting");
            let error = match tokio::time::timeout(
                connect_timeout,
                TcpStream::connect(target.as_str()),
            )
            .await
            {
                Ok(Ok(stream)) => {
                    let addr = match stream.peer_addr() {
                        Ok(a) => a,
                        // Reset between connect and here: treat as a failed attempt.
                        Err(e) => {
                            self::fail(&events, &target, &e.to_string(), &mut backoff).await;
                            continue;
                        }
                    };
                    set_nodelay(&stream, addr);
                    let (done, ended) = oneshot::channel();
                    if inputs
                        .send(Input::Connected { stream, addr, done })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let up_since = Instant::now();
                    // Resolves (with an error: the sender is dropped) when the link ends.
                    let _ = ended.await;
                    if inputs.is_closed() {
                        return;
                    }
                    if up_since.elapsed() >= cfg.reset_after {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay();
                    info!(%target, delay_ms = delay.as_millis() as u64, "link lost; reconnecting");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} s", connect_timeout.as_secs_f32()),
            };
            self::fail(&events, &target, &error, &mut backoff).await;
        }
    }
}

/// Reports a failed attempt and sleeps until the next.
async fn fail(
    events: &broadcast::Sender<RuntimeEvent>,
    target: &str,
    error: &str,
    backoff: &mut Backoff,
) {
    let delay = backoff.next_delay();
    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    // At most one line per backoff delay (>= 0.25 s, growing to 15-30 s): no need for a
    // rate limiter.
    warn!(%target, %error, retry_in_ms, "connect failed");
    let _ = events.send(RuntimeEvent::ConnectFailed {
        target: target.to_owned(),
        error: error.to_owned(),
        retry_in_ms,
    });
    tokio::time::sleep(delay).await;
}
