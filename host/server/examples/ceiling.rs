//! The ceiling for the HTTP benchmark: a minimal hyper server answering
//! what `hello` answers, with no WebAssembly at all.
//!
//! `cargo run --release -p sluice-server --example ceiling -- 127.0.0.1:9000`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("ceiling listening on http://{}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let service = service_fn(
                |request: hyper::Request<hyper::body::Incoming>| async move {
                    let body = format!(
                        "Hello from Sluice! You asked for {}\n",
                        request.uri().path()
                    );
                    Ok::<_, Infallible>(
                        hyper::Response::builder()
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                            .expect("a static response builds"),
                    )
                },
            );
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
