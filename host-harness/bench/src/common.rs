//! What every section uses: statistics, a scenario's state directory, the machine's RSA
//! rate, and a load generator.

use std::sync::Arc;
use std::time::Instant;

use presence_demo::Scenario;

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

pub(crate) fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() { f64::NAN } else { v[((v.len() - 1) as f64 * p).round() as usize] }
}

pub(crate) fn state_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tps-bench-{}-{tag}-{}", std::process::id(), rand::random::<u32>()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Stops a scenario's host, drops it (its emulator stops with it: see `Scenario`'s `Drop`)
/// and removes its state.
pub(crate) async fn stop(mut sc: Scenario, dir: std::path::PathBuf) {
    sc.stop_host().await;
    drop(sc);
    let _ = std::fs::remove_dir_all(dir);
}

/// Native RSA-OAEP-2048 (SHA-1) private-key operations per second on one core, with the
/// host's crypto library (aws-lc-rs).
pub(crate) fn rsa_decrypts_per_second(n: usize) -> f64 {
    rsa_decrypts_per_second_on(1, n)
}

/// Native RSA-OAEP-2048 (SHA-1) private-key operations per second, `threads` threads at once
/// (`n` each, one key shared as the host's pool shares it): with one thread per core, the
/// machine's own limit for any parallel unwrap.
pub(crate) fn rsa_decrypts_per_second_on(threads: usize, n: usize) -> f64 {
    use aws_lc_rs::rsa::{
        KeySize, OAEP_SHA1_MGF1SHA1, OaepPrivateDecryptingKey, OaepPublicEncryptingKey, PrivateDecryptingKey,
    };
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048).expect("RSA key");
    let public = OaepPublicEncryptingKey::new(key.public_key()).expect("public key");
    let private = OaepPrivateDecryptingKey::new(key).expect("private key");
    let mut wrapped = vec![0u8; public.ciphertext_size()];
    let len = public.encrypt(&OAEP_SHA1_MGF1SHA1, &[7u8; 32], &mut wrapped, None).expect("encrypt").len();
    wrapped.truncate(len);
    let start = std::sync::Barrier::new(threads + 1);
    let t0 = std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                let mut out = vec![0u8; private.min_output_size()];
                start.wait();
                for _ in 0..n {
                    private.decrypt(&OAEP_SHA1_MGF1SHA1, &wrapped, &mut out, None).expect("decrypt");
                }
            });
        }
        start.wait();
        Instant::now()
    });
    (threads * n) as f64 / t0.elapsed().as_secs_f64()
}

/// Posts `bodies` to `url` with `concurrency` clients; returns requests per second.
pub(crate) async fn load(url: &str, bodies: Vec<String>, concurrency: usize) -> anyhow::Result<f64> {
    // Each client holds one HTTP/1.1 connection (hyper's, no pool, the URL read once): the
    // generator shares the machine's cores with the host it measures, so it costs as little
    // as a client can.
    let url = reqwest::Url::parse(url)?;
    let addr = format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port_or_known_default().unwrap_or(80));
    let host = hyper::header::HeaderValue::from_str(&addr)?;
    let path: hyper::Uri = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    }
    .parse()?;
    let bodies = Arc::new(std::sync::Mutex::new(bodies));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    let total = bodies.lock().unwrap().len();
    for _ in 0..concurrency {
        let (bodies, addr, host, path) = (bodies.clone(), addr.clone(), host.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(&addr).await?;
            stream.set_nodelay(true)?;
            let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            loop {
                let Some(b) = bodies.lock().unwrap().pop() else { return Ok::<_, anyhow::Error>(()) };
                let req = hyper::Request::post(path.clone())
                    .header(hyper::header::HOST, host.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/json")
                    .body(http_body_util::Full::new(hyper::body::Bytes::from(b)))?;
                let r = send.send_request(req).await?;
                anyhow::ensure!(r.status().is_success(), "status {}", r.status());
                http_body_util::BodyExt::collect(r.into_body()).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(total as f64 / t0.elapsed().as_secs_f64())
}
