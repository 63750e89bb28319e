//! Carrying sealed envelopes between speakers: the [`PeerTransport`] trait (client side), its
//! tonic implementation, an in-memory implementation for tests, and the tonic `Membership`
//! service that hands received envelopes to an [`EnvelopeHandler`].
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_proto::membership::v1::Envelope;
use herald_proto::membership::v1::membership_client::MembershipClient;
use herald_proto::membership::v1::membership_server::Membership;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use super::state::Rpc;

/// A boxed, sendable future (the traits here are used as trait objects).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a call to a peer failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// No answer within the call's timeout.
    #[error("no answer from {address} within {timeout:?}")]
    Timeout {
        /// Peer address.
        address: SocketAddr,
        /// The timeout.
        timeout: Duration,
    },
    /// The peer's host refused the connection: nothing listens on the port.
    #[error("{address} refused the connection")]
    Refused {
        /// Peer address.
        address: SocketAddr,
    },
    /// Connecting or sending failed, or the peer answered with an error status.
    #[error("calling {address}: {message}")]
    Failed {
        /// Peer address.
        address: SocketAddr,
        /// What went wrong.
        message: String,
    },
    /// The peer refused our message as unauthenticated (different secret?).
    #[error("{address} rejected our message: {message}")]
    Rejected {
        /// Peer address.
        address: SocketAddr,
        /// The peer's reason.
        message: String,
    },
}

/// Sends one request envelope to a peer and returns its reply envelope.
pub trait PeerTransport: Send + Sync + 'static {
    /// Calls `rpc` at `address`, giving up after `timeout`.
    fn call(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<Result<Envelope, TransportError>>;
}

/// Serves received request envelopes (implemented by the runtime).
pub trait EnvelopeHandler: Send + Sync + 'static {
    /// Handles one request; the `Status` goes back to the caller as a gRPC error.
    fn handle(&self, rpc: Rpc, envelope: Envelope) -> BoxFuture<Result<Envelope, Status>>;
}

/// Largest envelope a speaker sends or accepts: a full-state Sync of about 15,000 members.
/// tonic's default (4 MiB) is twice that; anything larger is refused before it is decoded.
pub const MAX_MESSAGE_BYTES: usize = 2 * 1024 * 1024;
/// Connections to peers kept at most (one per address); past that an arbitrary one is dropped,
/// and reconnects if it is used again.
pub const MAX_CHANNELS: usize = 16_384;

/// [`PeerTransport`] over gRPC (tonic), one lazily connected HTTP/2 channel per peer that
/// reconnects by itself after failures.
///
/// A call that times out drops its channel, and the next call to that peer connects afresh.
/// After a cable was out for a while, the old TCP connection stays stalled until its
/// retransmission timer, backed off during the outage, fires again (seconds after the link is
/// back, more the longer it was out); every call queued behind it timed out meanwhile, and the
/// peer stayed suspected though it could be reached. A new connection gets through at once.
#[derive(Clone, Default)]
pub struct GrpcTransport {
    channels: Arc<Mutex<Channels>>,
    connect_timeout: Option<Duration>,
}

/// The channel to each peer, numbered so that a timed-out call drops only the channel it used.
#[derive(Default)]
struct Channels {
    by_address: HashMap<SocketAddr, (u64, Channel)>,
    next_number: u64,
}

impl GrpcTransport {
    /// A transport whose connection attempts give up after `connect_timeout`.
    pub fn new(connect_timeout: Duration) -> Self {
        GrpcTransport {
            channels: Arc::default(),
            connect_timeout: Some(connect_timeout),
        }
    }

    fn channel(&self, address: SocketAddr) -> Result<(u64, Channel), TransportError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = channels.by_address.get(&address) {
            return Ok(channel.clone());
        }
        if channels.by_address.len() >= MAX_CHANNELS {
            // Members are bounded, so this only drops channels to addresses members left behind.
            if let Some(any) = channels.by_address.keys().next().copied() {
                channels.by_address.remove(&any);
            }
        }
        let mut endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| TransportError::Failed {
                address,
                message: e.to_string(),
            })?
            .tcp_nodelay(true);
        if let Some(timeout) = self.connect_timeout {
            endpoint = endpoint.connect_timeout(timeout);
        }
        let channel = (channels.next_number, endpoint.connect_lazy());
        channels.next_number += 1;
        channels.by_address.insert(address, channel.clone());
        Ok(channel)
    }

    /// Drops the channel numbered `number` to `address`, unless another call already
    /// replaced it.
    fn drop_channel(&self, address: SocketAddr, number: u64) {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if channels.by_address.get(&address).is_some_and(|(n, _)| *n == number) {
            channels.by_address.remove(&address);
        }
    }
}

impl PeerTransport for GrpcTransport {
    fn call(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<Result<Envelope, TransportError>> {
        let channel = self.channel(address);
        let transport = self.clone();
        Box::pin(async move {
            let (number, channel) = channel?;
            let mut client = MembershipClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES);
            let mut request = Request::new(envelope);
            request.set_timeout(timeout);
            let call = async {
                match rpc {
                    Rpc::Ping => client.ping(request).await,
                    Rpc::PingReq => client.ping_req(request).await,
                    Rpc::Sync => client.sync(request).await,
                }
            };
            // No answer in time: ours, or tonic's own deadline (from the request's timeout),
            // which usually ends the call first.
            let answered = match tokio::time::timeout(timeout, call).await {
                Ok(Err(status)) if caused_by(&status, |e| e.is::<tonic::TimeoutExpired>()) => None,
                Ok(result) => Some(result),
                Err(_elapsed) => None,
            };
            let Some(result) = answered else {
                transport.drop_channel(address, number);
                return Err(TransportError::Timeout { address, timeout });
            };
            match result {
                Ok(response) => Ok(response.into_inner()),
                Err(status) if status.code() == tonic::Code::Unauthenticated => Err(TransportError::Rejected {
                    address,
                    message: status.message().to_string(),
                }),
                Err(status) if connection_refused(&status) => Err(TransportError::Refused { address }),
                Err(status) => Err(TransportError::Failed {
                    address,
                    message: status.to_string(),
                }),
            }
        })
    }
}

/// Whether an error was caused by a refused TCP connection (ECONNREFUSED somewhere in its
/// chain of sources: tonic wraps hyper's, which wraps the connector's I/O error).
fn connection_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by(error, |e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Whether `error` or one of its sources satisfies `test`.
fn caused_by(
    error: &(dyn std::error::Error + 'static),
    test: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if test(e) {
            return true;
        }
        next = e.source();
    }
    false
}

/// The tonic `Membership` service: forwards every call to an [`EnvelopeHandler`].
pub struct MembershipService {
    handler: Arc<dyn EnvelopeHandler>,
}

impl MembershipService {
    /// Serves with `handler`.
    pub fn new(handler: Arc<dyn EnvelopeHandler>) -> Self {
        MembershipService { handler }
    }

    async fn serve(&self, rpc: Rpc, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.handler.handle(rpc, request.into_inner()).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn ping(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.serve(Rpc::Ping, request).await
    }

    async fn ping_req(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.serve(Rpc::PingReq, request).await
    }

    async fn sync(&self, request: Request<Envelope>) -> Result<Response<Envelope>, Status> {
        self.serve(Rpc::Sync, request).await
    }
}

/// An in-memory network of [`EnvelopeHandler`]s by address, for tests without sockets
/// (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    endpoints: Arc<Mutex<HashMap<SocketAddr, Arc<dyn EnvelopeHandler>>>>,
}

#[cfg(any(test, feature = "testing"))]
impl MemoryNetwork {
    /// Makes `handler` reachable at `address`.
    pub fn register(&self, address: SocketAddr, handler: Arc<dyn EnvelopeHandler>) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(address, handler);
    }

    /// Makes `address` unreachable (calls to it fail as refused).
    pub fn unregister(&self, address: SocketAddr) {
        self.endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&address);
    }
}

#[cfg(any(test, feature = "testing"))]
impl PeerTransport for MemoryNetwork {
    fn call(
        &self,
        address: SocketAddr,
        rpc: Rpc,
        envelope: Envelope,
        timeout: Duration,
    ) -> BoxFuture<Result<Envelope, TransportError>> {
        let handler = self
            .endpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&address)
            .cloned();
        Box::pin(async move {
            // Like a host with nothing listening on the port.
            let Some(handler) = handler else {
                return Err(TransportError::Refused { address });
            };
            match tokio::time::timeout(timeout, handler.handle(rpc, envelope)).await {
                Err(_) => Err(TransportError::Timeout { address, timeout }),
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(status)) => Err(TransportError::Failed {
                    address,
                    message: status.to_string(),
                }),
            }
        })
    }
}
