//! A tunnel's relay with splice(2): the bytes of a `CONNECT` tunnel move from one socket to
//! the other through a pipe in the kernel, never through the proxy's memory (a user-space
//! copy reads each byte into a buffer and writes it out again: two copies and twice the
//! system calls for every chunk of a large download).
//!
//! Each direction has its own pipe. Bytes are counted as they are spliced in, against the
//! session's limit, before they are passed on.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use tokio::io::Interest;
use tokio::net::TcpStream;

/// Bytes a pipe holds (`F_SETPIPE_SZ`; the default 64 KiB if the system refuses more).
const PIPE_BYTES: usize = 1 << 20;

/// A pipe, both ends non-blocking.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// What it holds at most.
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array it is given.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just made and are owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; a refusal leaves the default size.
        let set = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_BYTES as i32) };
        let size = if set > 0 { set as usize } else { 64 << 10 };
        Ok(Pipe { read, write, size })
    }
}

/// One splice(2) call, non-blocking; the bytes it moved (0 at the end of the input).
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice between two descriptors the caller owns, no offsets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Moves everything `src` sends to `dst` until `src` ends (then `dst`'s write side is shut
/// down), calling `spend` with each chunk's size before it is passed on: `false` stops the
/// relay with `limit`'s error.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    mut spend: impl FnMut(usize) -> bool,
    limit: impl Fn() -> io::Error,
) -> io::Result<()> {
    let pipe = Pipe::new()?;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || {
                splice(src.as_raw_fd(), pipe.write.as_raw_fd(), pipe.size)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            // SAFETY: shutdown(2) of a socket we hold; an error means it is gone already.
            unsafe {
                libc::shutdown(dst.as_raw_fd(), libc::SHUT_WR);
            }
            return Ok(());
        }
        if !spend(n) {
            return Err(limit());
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || {
                splice(pipe.read.as_raw_fd(), dst.as_raw_fd(), left)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => left -= k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Relays both ways between `client` and `upstream` until both have ended or either fails.
/// `sent` and `received` are told each chunk's size before it is passed on (client to
/// upstream, upstream to client); `false` ends the tunnel with `limit`'s error.
pub(crate) async fn relay(
    client: &TcpStream,
    upstream: &TcpStream,
    sent: impl FnMut(usize) -> bool,
    received: impl FnMut(usize) -> bool,
    limit: impl Fn() -> io::Error + Copy,
) -> io::Result<()> {
    tokio::try_join!(
        pump(client, upstream, sent, limit),
        pump(upstream, client, received, limit),
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    #[tokio::test]
    async fn relays_both_ways_counts_and_half_closes() {
        // client_far <-> client | relay | upstream <-> upstream_far
        let (mut client_far, client) = pair().await;
        let (upstream, mut upstream_far) = pair().await;
        let (sent, received) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let relay = relay(
            &client,
            &upstream,
            |n| {
                sent.fetch_add(n, Ordering::Relaxed);
                true
            },
            |n| {
                received.fetch_add(n, Ordering::Relaxed);
                true
            },
            || io::Error::other("limit"),
        );
        let big = vec![7u8; 5 << 20];
        let ends = async {
            client_far
                .write_all(b"hello upstream")
                .await
                .expect("write");
            client_far.shutdown().await.expect("shutdown");
            let mut got = Vec::new();
            upstream_far.read_to_end(&mut got).await.expect("read");
            assert_eq!(got, b"hello upstream");
            upstream_far.write_all(&big).await.expect("write");
            upstream_far.shutdown().await.expect("shutdown");
            let mut back = Vec::new();
            client_far.read_to_end(&mut back).await.expect("read");
            assert_eq!(back.len(), big.len());
            assert!(back.iter().all(|b| *b == 7));
        };
        let (r, ()) = tokio::join!(relay, ends);
        r.expect("relay");
        assert_eq!(sent.load(Ordering::Relaxed), 14);
        assert_eq!(received.load(Ordering::Relaxed), 5 << 20);
    }

    #[tokio::test]
    async fn a_refused_chunk_ends_the_tunnel() {
        let (mut client_far, client) = pair().await;
        let (upstream, mut upstream_far) = pair().await;
        let relay = async move {
            let budget = AtomicUsize::new(1000);
            let r = relay(
                &client,
                &upstream,
                |_| true,
                |n| {
                    let left = budget.load(Ordering::Relaxed);
                    budget.store(left.saturating_sub(n), Ordering::Relaxed);
                    n <= left
                },
                || io::Error::other("limit"),
            )
            .await;
            // The tunnel's sockets close with it.
            drop((client, upstream));
            r
        };
        let ends = async {
            let _ = upstream_far.write_all(&vec![1u8; 1 << 20]).await;
            let mut back = Vec::new();
            let _ = client_far.read_to_end(&mut back).await;
            back.len()
        };
        let (r, _) = tokio::join!(relay, ends);
        assert_eq!(r.expect_err("cut").to_string(), "limit");
    }
}
