//! Socket helpers: binding listeners and reading into uninitialised buffer space.

use bytes::BytesMut;
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Binds a non-blocking listener with `SO_REUSEADDR` and a deep backlog.
pub(crate) fn bind(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Reads once from `fd` into the spare capacity of `buf`, without zeroing it first.
pub(crate) fn read_into_spare(fd: &impl AsRawFd, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() {
        return Ok(0);
    }
    // SAFETY: recv writes at most `spare.len()` bytes into memory we own and reports
    // how many it wrote; only those are then exposed through `set_len`.
    let n = unsafe { libc::recv(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    debug_assert!(n <= buf.capacity() - buf.len());
    // SAFETY: the kernel initialised exactly `n` bytes past the old length.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}
