//! Guest stdout and stderr: captured per invocation, capped.
//!
//! Past the cap, writes still succeed (so a chatty guest is not killed for
//! it) but their bytes are dropped and counted; the log notes the cut.
//!
//! The WASIp2 stream writes straight into the buffer, without wasmtime's
//! default adapter (a worker task behind a channel): with it, the last
//! writes of a call could still be on their way when the call's output is
//! taken, and a guest's last line went missing from its log.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

#[derive(Debug, Default)]
struct Buffer {
    kept: BytesMut,
    dropped: u64,
}

/// One capped output stream of one invocation.
#[derive(Clone, Debug)]
pub struct CappedOutput {
    capacity: usize,
    buffer: Arc<Mutex<Buffer>>,
}

impl CappedOutput {
    /// A stream keeping at most `capacity` bytes.
    pub fn new(capacity: usize) -> CappedOutput {
        CappedOutput {
            capacity,
            buffer: Arc::default(),
        }
    }

    /// What was kept, and how many bytes were dropped past the cap.
    pub fn take(&self) -> (Vec<u8>, u64) {
        let mut buffer = self.buffer.lock().unwrap();
        let kept = std::mem::take(&mut buffer.kept).to_vec();
        (kept, std::mem::take(&mut buffer.dropped))
    }

    fn keep(&self, bytes: &[u8]) {
        let mut buffer = self.buffer.lock().unwrap();
        let room = self.capacity.saturating_sub(buffer.kept.len());
        let keep = bytes.len().min(room);
        buffer.kept.extend_from_slice(&bytes[..keep]);
        buffer.dropped += (bytes.len() - keep) as u64;
    }
}

/// Most bytes one `check-write` permits (a guest writes in pieces of this).
const WRITE_PERMIT: usize = 64 * 1024;

impl OutputStream for CappedOutput {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedOutput {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for CappedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

/// Splits captured output into log lines (a line longer than `max_line` is
/// split), and notes a cut at the end.
pub fn lines(bytes: &[u8], dropped: u64, max_line: usize) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for line in text.lines() {
        let mut rest = line;
        while rest.len() > max_line {
            let mut cut = max_line;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            out.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
        out.push(rest.to_string());
    }
    if dropped > 0 {
        out.push(format!(
            "[sluice: {dropped} more bytes of output were dropped at the per-call cap]"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn writes_past_the_cap_succeed_but_are_dropped_and_counted() {
        let out = CappedOutput::new(10);
        let mut writer = out.clone();
        writer
            .write_all(b"hello\nworld, this is long")
            .await
            .unwrap();
        writer.write_all(b"more").await.unwrap();
        let (kept, dropped) = out.take();
        assert_eq!(kept, b"hello\nworl");
        assert_eq!(dropped, 19);
        let lines = lines(&kept, dropped, 3);
        assert_eq!(
            lines,
            [
                "hel",
                "lo",
                "wor",
                "l",
                "[sluice: 19 more bytes of output were dropped at the per-call cap]"
            ]
        );
        assert_eq!(
            super::lines(b"one\ntwo", 0, 80),
            ["one", "two"],
            "no newline at the end"
        );
    }

    #[test]
    fn the_wasip2_stream_writes_at_once() {
        let out = CappedOutput::new(8);
        let mut stream = StdoutStream::p2_stream(&out);
        assert!(stream.check_write().unwrap() > 0);
        stream
            .write(bytes::Bytes::from_static(b"last line"))
            .unwrap();
        // No worker task in between: the bytes are there before any await.
        assert_eq!(out.take(), (b"last lin".to_vec(), 1));
    }
}
