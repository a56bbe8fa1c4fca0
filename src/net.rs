//! Links between nodes, and between a researcher and the nodes: TLS 1.3
//! (rustls with the ring provider) authenticated on both sides with RFC 7250
//! raw public keys. Every member's ed25519 key is certified by the space
//! operator in the identity registry; a link is accepted only when the
//! peer's key is one of those (pinned), so there is no CA and no name to
//! confuse. On top, frames: `kind u8 | len u32 LE | bytes`, at most
//! [`MAX_FRAME`] bytes, kind 0 for JSON control messages and 1 for MPC
//! messages (whose own codec binds them to session, round and sender).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, DistinguishedName, ServerConfig,
    ServerConnection, SignatureScheme, StreamOwned,
};

/// The largest frame accepted: shares of 10 000 cells × 6 totals, or a
/// PSI set of a million blinded points.
pub const MAX_FRAME: usize = kexin_engine::federated::rounds::MAX_PAYLOAD;

pub const CONTROL: u8 = 0;
pub const MPC: u8 = 1;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410 §4).
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410 §7).
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The SubjectPublicKeyInfo of a member key, as TLS carries it.
pub fn spki(key: &VerifyingKey) -> Vec<u8> {
    let mut v = SPKI_PREFIX.to_vec();
    v.extend_from_slice(key.as_bytes());
    v
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::ring::default_provider().signature_verification_algorithms
}

/// `me` as an unencrypted PKCS#8 v1 document (RFC 8410).
pub(crate) fn pkcs8(me: &SigningKey) -> Vec<u8> {
    let mut der = PKCS8_PREFIX.to_vec();
    der.extend_from_slice(&me.to_bytes());
    der
}

fn certified(me: &SigningKey) -> Result<Arc<CertifiedKey>> {
    let der = pkcs8(me);
    let key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)))
        .map_err(|e| anyhow!("loading the member key into TLS: {e}"))?;
    let cert = CertificateDer::from(spki(&me.verifying_key()));
    Ok(Arc::new(CertifiedKey::new(vec![cert], key)))
}

/// Who may connect: member name and role by SubjectPublicKeyInfo.
#[derive(Debug, Default, Clone)]
pub struct Pins {
    by_spki: HashMap<Vec<u8>, (String, String)>,
}

impl Pins {
    pub fn insert(&mut self, member: &str, role: &str, key: &VerifyingKey) {
        self.by_spki
            .insert(spki(key), (member.to_string(), role.to_string()));
    }

    /// The member (name, role) a presented key belongs to.
    pub fn member(&self, spki: &[u8]) -> Option<&(String, String)> {
        self.by_spki.get(spki)
    }
}

/// How often a key that is not pinned may make the pins reload.
const RELOAD_EVERY: Duration = Duration::from_secs(1);
/// How old pins may get before any lookup reloads them (a rotated or
/// replaced key stops working within this time).
const REFRESH: Duration = Duration::from_secs(60);

/// Pins that follow the registry: a key that is not pinned makes them
/// reload (at most once per [`RELOAD_EVERY`]), so a member certified after
/// the server started gets in without a restart; and pins older than
/// [`REFRESH`] are reloaded before they are used.
pub struct LivePins {
    pins: std::sync::RwLock<Arc<Pins>>,
    reload: Option<Box<dyn Fn() -> Result<Pins> + Send + Sync>>,
    loaded: std::sync::Mutex<std::time::Instant>,
}

impl std::fmt::Debug for LivePins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LivePins")
            .field("pins", &self.current().by_spki.len())
            .field("reloads", &self.reload.is_some())
            .finish()
    }
}

impl LivePins {
    /// Pins that never change.
    pub fn fixed(pins: Pins) -> LivePins {
        LivePins {
            pins: std::sync::RwLock::new(Arc::new(pins)),
            reload: None,
            loaded: std::sync::Mutex::new(std::time::Instant::now()),
        }
    }

    /// Pins that `reload` reads afresh when needed.
    pub fn reloading(
        pins: Pins,
        reload: impl Fn() -> Result<Pins> + Send + Sync + 'static,
    ) -> LivePins {
        LivePins {
            reload: Some(Box::new(reload)),
            ..LivePins::fixed(pins)
        }
    }

    /// The member (name, role) a presented key belongs to.
    pub fn member(&self, spki: &[u8]) -> Option<(String, String)> {
        self.reload_if_older(REFRESH);
        if let Some(m) = self.current().member(spki) {
            return Some(m.clone());
        }
        if self.reload_if_older(RELOAD_EVERY) {
            return self.current().member(spki).cloned();
        }
        None
    }

    fn current(&self) -> Arc<Pins> {
        self.pins.read().map(|p| Arc::clone(&p)).unwrap_or_default()
    }

    /// Reload when the pins are older than `age`; true if they were.
    fn reload_if_older(&self, age: Duration) -> bool {
        let Some(reload) = &self.reload else {
            return false;
        };
        let Ok(mut at) = self.loaded.lock() else {
            return false;
        };
        if at.elapsed() < age {
            return false;
        }
        *at = std::time::Instant::now();
        match reload() {
            Ok(p) => {
                if let Ok(mut w) = self.pins.write() {
                    *w = Arc::new(p);
                }
                true
            }
            Err(e) => {
                tracing::warn!(target: "kexin::node", "reloading member keys: {e:#}");
                false
            }
        }
    }
}

fn sig13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &algorithms(),
    )
}

/// Every link is TLS 1.3: a TLS 1.2 signature is never checked.
fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// The client side accepts exactly one server key.
#[derive(Debug)]
struct PinnedServer(Vec<u8>);

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if intermediates.is_empty() && end_entity.as_ref() == self.0.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        sig13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The server side accepts any pinned member key (the handler then checks
/// the member's role for what it asks).
#[derive(Debug)]
struct PinnedClients(Arc<LivePins>);

impl ClientCertVerifier for PinnedClients {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if intermediates.is_empty() && self.0.member(end_entity.as_ref()).is_some() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        sig13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// A node's TLS server configuration.
pub fn server_config(me: &SigningKey, pins: Arc<LivePins>) -> Result<Arc<ServerConfig>> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PinnedClients(pins)))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(certified(me)?),
        ));
    Ok(Arc::new(cfg))
}

/// A TLS client configuration that accepts only `server` as the peer.
pub fn client_config(me: &SigningKey, server: &VerifyingKey) -> Result<Arc<ClientConfig>> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServer(spki(server))))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(certified(me)?),
        ));
    Ok(Arc::new(cfg))
}

/// The client side of a node's HTTP API: the server's X.509 certificate
/// must carry exactly `server`'s key (parsed with webpki, the parser
/// rustls checks the handshake signature against), whatever its names,
/// issuer or dates.
#[derive(Debug)]
struct PinnedX509(Vec<u8>);

impl ServerCertVerifier for PinnedX509 {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if cert.subject_public_key_info().as_ref() == self.0.as_slice() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12_refused()
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// A TLS client configuration for a node's HTTP API: the node's X.509
/// certificate must carry its certified key `server`.
pub fn api_client_config(server: &VerifyingKey) -> Result<Arc<ClientConfig>> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedX509(spki(server))))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// One authenticated, encrypted link.
#[derive(Debug)]
pub enum Link {
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Link {
    /// Connect to `addr` and complete the handshake with the pinned server.
    pub fn connect(
        addr: &str,
        me: &SigningKey,
        server: &VerifyingKey,
        timeout: Duration,
    ) -> Result<Link> {
        let sa = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("{addr} resolves to nothing"))?;
        let tcp = TcpStream::connect_timeout(&sa, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let name = ServerName::try_from("kexin-node")?.to_owned();
        let conn = ClientConnection::new(client_config(me, server)?, name)?;
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn
                .complete_io(&mut s.sock)
                .with_context(|| format!("TLS handshake with {addr}"))?;
        }
        Ok(Link::Client(Box::new(s)))
    }

    /// Complete the server side of the handshake on an accepted socket and
    /// return the link with the client's member (name, role).
    pub fn accept(
        tcp: TcpStream,
        cfg: Arc<ServerConfig>,
        pins: &LivePins,
        timeout: Duration,
    ) -> Result<(Link, (String, String))> {
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(Some(timeout))?;
        tcp.set_write_timeout(Some(timeout))?;
        let conn = ServerConnection::new(cfg)?;
        let mut s = StreamOwned::new(conn, tcp);
        // `timeout` bounds the whole handshake, not each read: a peer that
        // trickles a byte at a time is cut off all the same.
        let deadline = std::time::Instant::now() + timeout;
        while s.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                bail!("the TLS handshake took too long");
            }
            s.sock.set_read_timeout(Some(left))?;
            s.conn.complete_io(&mut s.sock)?;
        }
        let peer = s
            .conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| pins.member(c.as_ref()))
            .ok_or_else(|| anyhow!("the peer presented no pinned key"))?;
        Ok((Link::Server(Box::new(s)), peer))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Link::Client(s) => &s.sock,
            Link::Server(s) => &s.sock,
        }
    }

    /// How long a read may wait.
    pub fn set_timeout(&self, t: Duration) -> Result<()> {
        self.tcp().set_read_timeout(Some(t))?;
        Ok(())
    }

    /// How long a write may wait.
    pub fn set_write_timeout(&self, t: Duration) -> Result<()> {
        self.tcp().set_write_timeout(Some(t))?;
        Ok(())
    }

    pub fn send(&mut self, kind: u8, bytes: &[u8]) -> Result<()> {
        if bytes.len() > MAX_FRAME {
            bail!("frame over the limit");
        }
        let mut out = Vec::with_capacity(5 + bytes.len());
        out.push(kind);
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        self.write_all(&out)?;
        self.flush()?;
        Ok(())
    }

    pub fn send_json<T: serde::Serialize>(&mut self, value: &T) -> Result<()> {
        self.send(CONTROL, &serde_json::to_vec(value)?)
    }

    /// Read one frame; a length over [`MAX_FRAME`] or an unknown kind is an
    /// error (the link is then dropped).
    pub fn recv(&mut self) -> Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.read_exact(&mut head)?;
        let kind = head[0];
        if kind != CONTROL && kind != MPC {
            bail!("unknown frame kind");
        }
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            bail!("frame over the limit");
        }
        let mut buf = vec![0u8; len];
        self.read_exact(&mut buf)?;
        Ok((kind, buf))
    }

    pub fn recv_json<T: serde::de::DeserializeOwned>(&mut self) -> Result<T> {
        let (kind, bytes) = self.recv()?;
        if kind != CONTROL {
            bail!("expected a control message");
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}

impl Read for Link {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Client(s) => s.read(buf),
            Link::Server(s) => s.read(buf),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Client(s) => s.write(buf),
            Link::Server(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Client(s) => s.flush(),
            Link::Server(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    /// Mutual authentication: the pinned member gets through and is named;
    /// a stranger's client key and a wrong server key are refused.
    #[test]
    fn links_are_pinned_both_ways() {
        let (server, member, stranger) = (key(1), key(2), key(3));
        let mut pins = Pins::default();
        pins.insert("alice", "researcher", &member.verifying_key());
        let pins = Arc::new(LivePins::fixed(pins));
        let cfg = server_config(&server, Arc::clone(&pins)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let t = Duration::from_secs(5);
        let srv = std::thread::spawn(move || {
            let mut results = Vec::new();
            for _ in 0..3 {
                let (tcp, _) = listener.accept().unwrap();
                match Link::accept(tcp, Arc::clone(&cfg), &pins, t) {
                    Ok((mut link, who)) => {
                        let (_, got) = link.recv().unwrap();
                        link.send(CONTROL, &got).unwrap();
                        results.push(Some(who.0));
                    }
                    Err(_) => results.push(None),
                }
            }
            results
        });
        let mut ok = Link::connect(&addr, &member, &server.verifying_key(), t).unwrap();
        ok.send(CONTROL, b"ping").unwrap();
        assert_eq!(ok.recv().unwrap().1, b"ping");
        // An unpinned client key: the server refuses the handshake.
        let bad = Link::connect(&addr, &stranger, &server.verifying_key(), t).and_then(|mut l| {
            l.send(CONTROL, b"x")?;
            l.recv()
        });
        assert!(bad.is_err());
        // The client expects another server key: it refuses.
        assert!(Link::connect(&addr, &member, &stranger.verifying_key(), t).is_err());
        let results = srv.join().unwrap();
        assert_eq!(results[0].as_deref(), Some("alice"));
        assert!(results[1].is_none() && results[2].is_none());
    }
}
