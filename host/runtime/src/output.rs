//! Guest stdout and stderr: captured per invocation, capped.
//!
//! Past the cap, writes still succeed (so a chatty guest is not killed for
//! it) but their bytes are dropped and counted; the log notes the cut.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

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
}

impl AsyncWrite for CappedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut buffer = self.buffer.lock().unwrap();
        let room = self.capacity.saturating_sub(buffer.kept.len());
        let keep = buf.len().min(room);
        buffer.kept.extend_from_slice(&buf[..keep]);
        buffer.dropped += (buf.len() - keep) as u64;
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
    }
}
