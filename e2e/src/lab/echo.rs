//! The backend "pod" program: HTTP and UDP servers that answer with the pod's name, so a
//! client can tell which backend served it. Body of the hidden `herald-lab echo`
//! subcommand, run inside a pod namespace.
//!
//! - HTTP, any path: `200`, body `<name>\n`, header `x-herald-client: <peer ip:port>`
//!   (shows whether the client's source address survived the path).
//! - UDP: every datagram gets one datagram back, `<name>\n`.
//!
//! Both listen on `[::]`, which also accepts IPv4 (bindv6only is 0 in new namespaces).

use std::net::{Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};

/// Runs both servers until the process is stopped.
pub async fn run_echo(name: String, http_port: u16, udp_port: u16) -> std::io::Result<()> {
    let http = tokio::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, http_port))).await?;
    let udp = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, udp_port))).await?;
    let body = format!("{name}\n");
    let app = axum::Router::new().fallback({
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
