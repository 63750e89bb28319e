//! Makes kube-apiserver (listening on 127.0.0.1 in the root namespace, for kubectl)
//! reachable from inside the lab at the bridge address, without unsafe code.
//!
//! A Unix socket path belongs to no network namespace, so it can cross them: the lab
//! process accepts on `<state>/api.sock` and connects each stream to the API server's TCP
//! port ([`serve_unix_to_tcp`]); a helper process (`herald-lab relay`, started inside the
//! segment namespace) accepts TCP on 10.203.0.1:6443 and connects each stream to that
//! socket ([`serve_tcp_to_unix`]). The alternative, `setns(2)` from a thread of the lab,
//! needs unsafe code and a libc dependency; one small helper process is simpler.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Accepts on the Unix socket `socket` and relays every stream to `target` over TCP,
/// until the task is aborted. Removes a stale socket file first.
pub async fn bind_unix_to_tcp(socket: &Path, target: SocketAddr) -> std::io::Result<tokio::task::JoinHandle<()>> {
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let listener = UnixListener::bind(socket)?;
    Ok(tokio::spawn(serve_unix_to_tcp(listener, target)))
}

async fn serve_unix_to_tcp(listener: UnixListener, target: SocketAddr) {
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "api relay: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            match TcpStream::connect(target).await {
                Ok(mut outbound) => {
                    // Watch events are small writes; do not let Nagle hold them.
                    outbound.set_nodelay(true).ok();
                    // A reset by either side ends the relay as a close does.
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await.ok();
                }
                // The API server is down (restarting): the client sees its connection close.
                Err(e) => tracing::debug!(error = %e, %target, "api relay: API server unreachable"),
            }
        });
    }
}

/// Accepts TCP on `listen` and relays every stream to the Unix socket `socket`, forever.
/// This is the body of the hidden `herald-lab relay` subcommand.
pub async fn serve_tcp_to_unix(listen: SocketAddr, socket: PathBuf) -> std::io::Result<()> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut inbound, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "api relay: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // Only a latency hint, as above.
        inbound.set_nodelay(true).ok();
        let socket = socket.clone();
        tokio::spawn(async move {
            match UnixStream::connect(&socket).await {
                Ok(mut outbound) => {
                    // A reset by either side ends the relay as a close does.
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await.ok();
                }
                Err(e) => tracing::debug!(error = %e, socket = %socket.display(), "api relay: lab unreachable"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// TCP client -> TCP relay -> Unix socket -> Unix relay -> TCP server, and back.
    #[tokio::test]
    async fn bytes_cross_both_hops_in_both_directions() {
        let dir = std::env::temp_dir().join(format!("herald-relay-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("api.sock");
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let upstream = tokio::spawn(async move {
            let (mut conn, _) = server.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(&[&buf[..], b" back"].concat()).await.unwrap();
        });
        let unix_side = bind_unix_to_tcp(&socket, server_addr).await.unwrap();
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = probe.local_addr().unwrap();
        drop(probe);
        let tcp_side = tokio::spawn(serve_tcp_to_unix(listen, socket.clone()));

        let mut client = None;
        for _ in 0..100 {
            if let Ok(c) = TcpStream::connect(listen).await {
                client = Some(c);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut client = client.expect("relay listens");
        client.write_all(b"hello").await.unwrap();
        let mut answer = [0u8; 10];
        tokio::time::timeout(std::time::Duration::from_secs(5), client.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&answer, b"hello back");
        upstream.await.unwrap();
        unix_side.abort();
        tcp_side.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
