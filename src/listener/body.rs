//! A request body that must arrive whole before a deadline.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};

/// The error a body reports when its deadline passes first.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {}s", .0.as_secs())]
pub struct BodyTimedOut(pub Duration);

/// `inner`, failing with [`BodyTimedOut`] once `limit` has passed since the
/// request's head arrived. A client trickling its body, or opening a
/// stream and never sending one, holds its slot no longer than this,
/// whatever handler reads the body.
pub struct Deadline<B> {
    inner: B,
    limit: Duration,
    expires: Pin<Box<tokio::time::Sleep>>,
}

impl<B> Deadline<B> {
    /// `inner`, due within `limit` from now.
    pub fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            expires: Box::pin(tokio::time::sleep(limit)),
        }
    }
}

impl<B> Body for Deadline<B>
where
    B: Body + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = B::Data;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.inner.is_end_stream() {
            return Poll::Pending;
        }
        match self.expires.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut(self.limit))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline_and_one_that_arrives_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
        let stream = tokio_stream_from(rx);
        let mut stalled = Deadline::new(StreamBody::new(stream), Duration::from_secs(10));
        tx.send(Ok(Frame::data(Bytes::from_static(b"part"))))
            .await
            .expect("sent");
        let first = stalled.frame().await.expect("a frame").expect("data");
        assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"part")));
        let started = tokio::time::Instant::now();
        let err = stalled
            .frame()
            .await
            .expect("an error")
            .expect_err("timed out");
        assert!(err.is::<BodyTimedOut>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(tx);

        let whole = Deadline::new(
            http_body_util::Full::new(Bytes::from_static(b"csr")),
            Duration::from_secs(10),
        );
        let bytes = whole.collect().await.expect("arrived").to_bytes();
        assert_eq!(bytes, Bytes::from_static(b"csr"));
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
