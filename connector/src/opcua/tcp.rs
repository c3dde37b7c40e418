//! The OPC UA TCP connection with TCP_NODELAY.
//!
//! async-opcua's own connector leaves Nagle's algorithm on. A session always has Publish
//! requests outstanding, so a small Read or Write request sent right after one waits for the
//! server's delayed ACK (~40 ms on Linux) before it leaves: a setpoint write took 40 ms on
//! loopback. This connector is async-opcua's, with `set_nodelay(true)` on the socket.

use std::sync::Arc;

use opcua::client::transport::{
    Connector, RequestRecv, SecureChannelState, StreamConnection, StreamConnector, TcpTransport,
    TransportConfiguration,
};
use opcua::client::ConnectionSource;
use opcua::core::comms::tcp_codec::TcpCodec;
use opcua::core::comms::url::hostname_port_from_url;
use opcua::types::{DecodingOptions, EndpointDescription, Error, StatusCode};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

type Connection = StreamConnection<ReadHalf<TcpStream>, WriteHalf<TcpStream>>;

/// A [`ConnectionSource`] for `SessionBuilder::with_connector`.
pub struct NoDelay;

/// Connects one endpoint URL (a connector is its own builder).
pub struct NoDelayConnector(String);

impl ConnectionSource for NoDelay {
    type Builder = NoDelayConnector;

    fn get_connector(&self, endpoint: &EndpointDescription) -> Result<NoDelayConnector, Error> {
        Ok(NoDelayConnector(endpoint.endpoint_url.as_ref().to_owned()))
    }
}

impl Connector for NoDelayConnector {
    type Transport = TcpTransport;

    async fn connect(
        &self,
        channel: Arc<SecureChannelState>,
        outgoing_recv: RequestRecv,
        config: TransportConfiguration,
    ) -> Result<TcpTransport, Error> {
        let inner = StreamConnector::new(connect, self.0.clone());
        inner.connect(channel, outgoing_recv, config).await
    }

    fn default_endpoint(&self) -> EndpointDescription {
        EndpointDescription::from(self.0.as_str())
    }
}

async fn connect(url: String, options: DecodingOptions) -> Result<Connection, Error> {
    let (host, port) =
        hostname_port_from_url(&url, opcua::core::constants::DEFAULT_OPC_UA_SERVER_PORT)
            .map_err(|e| Error::new(e, format!("cannot read host and port of {url}")))?;
    let socket = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| {
            Error::new(
                StatusCode::BadCommunicationError,
                format!("cannot connect to {host}:{port}: {e}"),
            )
        })?;
    socket.set_nodelay(true).map_err(|e| {
        Error::new(
            StatusCode::BadCommunicationError,
            format!("cannot set TCP_NODELAY: {e}"),
        )
    })?;
    let (reader, writer) = tokio::io::split(socket);
    Ok(StreamConnection::new(
        FramedRead::new(reader, TcpCodec::new(options)),
        writer,
        url,
    ))
}
