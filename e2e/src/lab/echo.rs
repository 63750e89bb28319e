//! The backend "pod" program: HTTP and UDP servers that answer with the pod's name, so a
//! client can tell which backend served it. Body of the hidden `herald-lab echo`
//! subcommand, run inside a pod namespace.
//!
//! - HTTP, any path: `200`, body `<name>\n`, header `x-herald-client: <peer ip:port>`
//!   (shows whether the client's source address survived the path).
//! - UDP: every datagram gets one datagram back, `<name>\n`.
//! - `GET /readyz`: `200` while ready, `503` after `PUT /readyz` with body `false` (until a
//!   `PUT` with `true`): the Pod's readiness probe, which tests turn off and on.
//!
//! Both listen on `[::]`, which also accepts IPv4 (bindv6only is 0 in new namespaces).

use std::net::{Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

/// Binds both servers on `[::]` and runs them until the process is stopped.
pub async fn run_echo(name: String, http_port: u16, udp_port: u16) -> std::io::Result<()> {
    let http = tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, http_port))).await?;
    let udp = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, udp_port))).await?;
    serve_echo(name, http, udp).await
}

/// Serves HTTP on `http` and UDP on `udp`, answering with `name`, until an I/O error.
pub async fn serve_echo(
    name: String,
    http: tokio::net::TcpListener,
    udp: tokio::net::UdpSocket,
) -> std::io::Result<()> {
    let body = format!("{name}\n");
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let readyz = axum::routing::get({
        let ready = ready.clone();
        move || {
            let ready = ready.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if ready {
                    (axum::http::StatusCode::OK, "ready\n")
                } else {
                    (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                }
            }
        }
    })
    .put(move |text: String| {
        let now = text.trim() != "false";
        ready.store(now, std::sync::atomic::Ordering::SeqCst);
        async move { if now { "ready\n" } else { "not ready\n" } }
    });
    let app = axum::Router::new().route("/readyz", readyz).fallback({
        let body = body.clone();
        move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let body = body.clone();
            async move {
                let mut response: Response = body.into_response();
                if let Ok(value) = HeaderValue::from_str(&peer.to_string()) {
                    response.headers_mut().insert("x-herald-client", value);
                }
                response
            }
        }
    });
    let http_server = async move { axum::serve(http, app.into_make_service_with_connect_info::<SocketAddr>()).await };
    let udp_server = async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (_, peer) = udp.recv_from(&mut buf).await?;
            udp.send_to(body.as_bytes(), peer).await?;
        }
    };
    tokio::select! {
        r = http_server => r,
        r = udp_server => r,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn answers_http_and_udp_with_the_pod_name() {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (http_addr, udp_addr) = (http.local_addr().unwrap(), udp.local_addr().unwrap());
        let server = tokio::spawn(serve_echo("web-a".into(), http, udp));

        let mut stream = tokio::net::TcpStream::connect(http_addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        stream
            .write_all(b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("\r\n\r\nweb-a\n"), "{response}");
        assert!(response.contains(&format!("x-herald-client: {local}")), "{response}");

        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(b"ping", udp_addr).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = tokio::time::timeout(std::time::Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"web-a\n");
        server.abort();
    }

    async fn http(addr: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn readiness_turns_off_and_on_and_serving_goes_on() {
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = http_listener.local_addr().unwrap();
        let server = tokio::spawn(serve_echo("web-a".into(), http_listener, udp));
        let get = "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        let put = |body: &str| {
            format!(
                "PUT /readyz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        assert!(http(addr, get).await.starts_with("HTTP/1.1 200"));
        assert!(http(addr, &put("false")).await.starts_with("HTTP/1.1 200"));
        assert!(http(addr, get).await.starts_with("HTTP/1.1 503"));
        let answer = http(addr, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert!(answer.ends_with("web-a\n"), "still serving while not ready: {answer}");
        assert!(http(addr, &put("true")).await.starts_with("HTTP/1.1 200"));
        assert!(http(addr, get).await.starts_with("HTTP/1.1 200"));
        server.abort();
    }
}
