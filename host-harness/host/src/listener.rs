//! Serving a router on a listener, hardened for a hostile network: at most
//! `max_connections` connections at once (with that many open, the listener stops accepting
//! until one closes: more wait in the kernel's backlog, costing the host nothing), a deadline
//! for the request head and for the TLS handshake, optional TLS (rustls), and a graceful stop.
//!
//! `axum::serve` has none of these (hyper's header timeout needs a timer it does not give),
//! so the connections are served here with hyper-util's server, as axum's own low-level
//! examples do.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Time a client has to send a request's head (and to finish the TLS handshake).
    pub header_read_timeout: Duration,
}

impl ListenerLimits {
    /// The public (webhook) listener's defaults.
    pub const PUBLIC: ListenerLimits =
        ListenerLimits { max_connections: 512, header_read_timeout: Duration::from_secs(10) };
    /// The admin listener's defaults.
    pub const ADMIN: ListenerLimits =
        ListenerLimits { max_connections: 64, header_read_timeout: Duration::from_secs(10) };
}

/// Counters of one listener, for the status.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Times the listener stopped accepting because `max_connections` were open.
    pub full: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub failed_handshakes: AtomicU64,
}

/// Loads a rustls server configuration from PEM files (certificate chain, private key).
pub fn tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TLS certificate chain {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{}: no certificate in it", cert.display());
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading the TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not go together")?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A listener being served; stop it with [`Serving::stop`].
pub(crate) struct Serving {
    pub(crate) addr: SocketAddr,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Serving {
    /// Stops accepting, lets requests in progress finish (up to 5 s), then returns.
    pub(crate) async fn stop(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Serves `app` on `listener` within `limits`, with TLS when `tls` is given.
pub(crate) fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ListenerLimits,
    stats: Arc<ListenerStats>,
) -> anyhow::Result<Serving> {
    let addr = listener.local_addr()?;
    let (shutdown, mut stop) = tokio::sync::watch::channel(false);
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let tls = tls.map(TlsAcceptor::from);
    let task = tokio::spawn(async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = Arc::new(builder);
        loop {
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    stats.full.fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                        _ = stop.changed() => break,
                    }
                }
            };
            let (stream, _peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    // Out of file descriptors and the like: breathe, then go on.
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
                _ = stop.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let service = TowerToHyperService::new(app.clone());
            let builder = builder.clone();
            let tls = tls.clone();
            let stats = stats.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    None => {
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                    Some(acceptor) => {
                        let Ok(Ok(stream)) =
                            tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await
                        else {
                            stats.failed_handshakes.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        let _ = watcher.watch(conn.into_owned()).await;
                    }
                }
            });
        }
        drop(listener);
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    });
    Ok(Serving { addr, shutdown, task })
}
