//! MQTT over TLS: the TLS listener with Mosquitto's clients (OpenSSL), rumqttc
//! (rustls 0.22) and a rustls client speaking our codec; TLS 1.2 and 1.3; mutual TLS
//! with and without the certificate's CN as user name; handshakes that stall.
//!
//! Every certificate and key is generated here with rcgen (written to a fresh
//! directory under the system temp dir for the broker and Mosquitto to read); none is
//! checked in. Everything runs on loopback with bounded waits.

mod common;

use bytes::BytesMut;
use common::{connect_packet, publish_packet, WAIT};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ternmq::config::Config;
use ternmq::protocol::{
    decode_one, encode_packet, Packet, QoS, ReasonCode, Subscribe, TopicFilter,
};
use ternmq::runtime::BrokerHandle;

/// A certificate with its key.
struct Issued {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Issued {
    fn cert_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// A test PKI: a CA, a server certificate for localhost/127.0.0.1, client
/// certificates, and a second CA nobody trusts. PEM files live in `dir`.
struct Pki {
    dir: PathBuf,
    ca: Issued,
    client: Issued,
    client_without_cn: Issued,
    stranger: Issued,
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

fn new_ca(name: &str) -> Issued {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    Issued { cert, key }
}

fn leaf(
    issuer: &Issued,
    names: &[&str],
    cn: Option<&str>,
    usage: ExtendedKeyUsagePurpose,
) -> Issued {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "ternmq tests");
    if let Some(cn) = cn {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    Issued { cert, key }
}

impl Pki {
    fn new() -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "ternmq-tls-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = new_ca("ternmq test CA");
        let server = leaf(
            &ca,
            &["localhost", "127.0.0.1"],
            Some("localhost"),
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let client = leaf(
            &ca,
            &[],
            Some("device-42"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let client_without_cn = leaf(&ca, &[], None, ExtendedKeyUsagePurpose::ClientAuth);
        let other_ca = new_ca("stranger CA");
        let stranger = leaf(
            &other_ca,
            &[],
            Some("device-42"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let write = |name: &str, text: String| std::fs::write(dir.join(name), text).unwrap();
        write("ca.pem", ca.cert.pem());
        write("server.pem", server.cert.pem());
        write("server.key", server.key.serialize_pem());
        write("client.pem", client.cert.pem());
        write("client.key", client.key.serialize_pem());
        Pki {
            dir,
            ca,
            client,
            client_without_cn,
            stranger,
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A broker with one plain and one TLS listener (ephemeral ports) on two workers.
fn tls_broker(pki: &Pki, tweak: impl FnOnce(&mut Config)) -> BrokerHandle {
    common::broker_with(2, |cfg| {
        cfg.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
        cfg.cert_file = Some(pki.dir.join("server.pem"));
        cfg.key_file = Some(pki.dir.join("server.key"));
        tweak(cfg);
    })
}

fn tls_addr(b: &BrokerHandle) -> SocketAddr {
    b.tls_addrs()[0]
}

/// Which TLS versions a test client offers.
#[derive(Clone, Copy)]
enum Versions {
    Both,
    Only12,
    Only13,
}

fn client_config(pki: &Pki, versions: Versions, identity: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca.cert_der()).unwrap();
    let v: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Only12 => &[&rustls::version::TLS12],
        Versions::Only13 => &[&rustls::version::TLS13],
    };
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(v)
            .unwrap()
            .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(vec![id.cert_der()], id.key_der())
            .unwrap(),
    };
    Arc::new(config)
}

/// A blocking rustls client speaking our codec.
struct TlsClient {
    tls: StreamOwned<ClientConnection, TcpStream>,
    buf: BytesMut,
}

impl TlsClient {
    fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> std::io::Result<TlsClient> {
        let sock = TcpStream::connect(addr)?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let name = ServerName::try_from("localhost").unwrap();
        let conn = ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut tls = StreamOwned::new(conn, sock);
        let deadline = Instant::now() + WAIT;
        while tls.conn.is_handshaking() {
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) => {}
                Err(e) if is_timeout(&e) && Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
        }
        Ok(TlsClient {
            tls,
            buf: BytesMut::new(),
        })
    }

    fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut out = Vec::new();
        encode_packet(p, &mut out);
        self.tls.write_all(&out)?;
        self.tls.flush()
    }

    /// The next packet within [`WAIT`]; an error if the connection fails or closes.
    fn recv(&mut self) -> Result<Packet, String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(p)) = decode_one(&mut self.buf, usize::MAX) {
                return Ok(p);
            }
            if Instant::now() >= deadline {
                return Err("timed out".into());
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.tls.read(&mut chunk) {
                Ok(0) => return Err("closed".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// CONNECT and the CONNACK's return code.
    fn mqtt_connect(&mut self, client_id: &str) -> Result<ReasonCode, String> {
        self.send(&Packet::Connect(connect_packet(client_id, true)))
            .map_err(|e| e.to_string())?;
        match self.recv()? {
            Packet::ConnAck(a) => Ok(a.code),
            other => Err(format!("expected CONNACK, got {other:?}")),
        }
    }

    fn subscribe(&mut self, filter: &str) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: common::pid(1),
            filters: vec![(TopicFilter::new(filter).unwrap(), QoS::AtLeastOnce.into())],
            props: Default::default(),
        }))
        .unwrap();
        assert!(matches!(self.recv(), Ok(Packet::SubAck(_))));
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// A TLS connection through to an accepted CONNECT, or why not.
fn try_session(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    client_id: &str,
) -> Result<TlsClient, String> {
    let mut c = TlsClient::connect(addr, config).map_err(|e| e.to_string())?;
    match c.mqtt_connect(client_id)? {
        ReasonCode::SUCCESS => Ok(c),
        code => Err(format!("refused: {code:?}")),
    }
}

#[test]
fn rustls_clients_publish_and_subscribe_through_the_tls_listener() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {});
    let config = client_config(&pki, Versions::Both, None);
    let mut sub = try_session(tls_addr(&b), config.clone(), "sub").unwrap();
    sub.subscribe("tls/#");
    let mut publ = try_session(tls_addr(&b), config, "pub").unwrap();
    // Small and large (several TLS records, several reads and writes) messages.
    let big: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
    for payload in [&b"hello"[..], &big[..]] {
        publ.send(&publish_packet(
            "tls/a",
            QoS::AtLeastOnce,
            7,
            payload,
            false,
        ))
        .unwrap();
        assert!(matches!(publ.recv(), Ok(Packet::PubAck(_))));
        match sub.recv() {
            Ok(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], payload);
                if let Some(id) = p.packet_id {
                    sub.send(&Packet::puback(id)).unwrap();
                }
            }
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }
    // The plain listener still serves, and plain and TLS clients talk to each other.
    let mut plain = common::Raw::mqtt(b.addr(), "plain", true);
    plain.send(&publish_packet(
        "tls/plain",
        QoS::AtMostOnce,
        0,
        b"x",
        false,
    ));
    assert!(matches!(sub.recv(), Ok(Packet::Publish(p)) if &p.payload[..] == b"x"));
}

#[test]
fn tls_1_2_and_1_3_both_negotiate() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {});
    for (versions, expect) in [
        (Versions::Only12, rustls::ProtocolVersion::TLSv1_2),
        (Versions::Only13, rustls::ProtocolVersion::TLSv1_3),
        (Versions::Both, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let c = try_session(tls_addr(&b), client_config(&pki, versions, None), "v").unwrap();
        assert_eq!(c.tls.conn.protocol_version(), Some(expect));
    }
}

#[test]
fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |cfg| {
        cfg.client_ca_file = Some(pki.dir.join("ca.pem"));
    });
    let addr = tls_addr(&b);
    for versions in [Versions::Only12, Versions::Only13] {
        let no_cert = try_session(addr, client_config(&pki, versions, None), "anon");
        assert!(no_cert.is_err(), "no client certificate must be refused");
        let stranger = try_session(
            addr,
            client_config(&pki, versions, Some(&pki.stranger)),
            "stranger",
        );
        assert!(stranger.is_err(), "an unknown CA must be refused");
        try_session(addr, client_config(&pki, versions, Some(&pki.client)), "ok").unwrap();
    }
}

#[test]
fn identity_as_username_needs_a_cn() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |cfg| {
        cfg.client_ca_file = Some(pki.dir.join("ca.pem"));
        cfg.use_identity_as_username = true;
    });
    let addr = tls_addr(&b);
    try_session(
        addr,
        client_config(&pki, Versions::Both, Some(&pki.client)),
        "with-cn",
    )
    .unwrap();
    let without = try_session(
        addr,
        client_config(&pki, Versions::Both, Some(&pki.client_without_cn)),
        "without-cn",
    );
    assert!(
        without.is_err(),
        "no CN, no user name: the connection is closed"
    );
}

/// Reads until the peer closes; when that was (None: not before `deadline`).
fn closed_at(sock: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline {
        match sock.read(&mut buf) {
            Ok(0) => return Some(Instant::now()),
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Some(Instant::now()),
        }
    }
    None
}

#[test]
fn a_stalled_handshake_is_dropped_by_the_connect_timeout() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |cfg| cfg.connect_timeout_secs = 1);
    let addr = tls_addr(&b);
    let opened = Instant::now();
    // Silent: TCP only.
    let mut silent = TcpStream::connect(addr).unwrap();
    // Half a ClientHello.
    let mut hello = Vec::new();
    let mut conn = ClientConnection::new(
        client_config(&pki, Versions::Both, None),
        ServerName::try_from("localhost").unwrap(),
    )
    .unwrap();
    conn.write_tls(&mut hello).unwrap();
    let mut partial = TcpStream::connect(addr).unwrap();
    partial.write_all(&hello[..hello.len() / 2]).unwrap();
    // A good client meanwhile is served: the stalled ones block nothing.
    try_session(addr, client_config(&pki, Versions::Both, None), "live").unwrap();
    for sock in [&mut silent, &mut partial] {
        let at = closed_at(sock, opened + Duration::from_secs(5)).expect("closed within 5 s");
        // Not before the 1 s CONNECT timeout (less a little for clock rounding).
        let took = at - opened;
        assert!(took >= Duration::from_millis(900), "{took:?}");
    }
}

#[test]
fn plain_mqtt_on_the_tls_port_is_closed_at_once() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |cfg| cfg.connect_timeout_secs = 30);
    let mut raw = common::Raw::connect(tls_addr(&b));
    raw.send(&Packet::Connect(connect_packet("plain", true)));
    let (closed, got) = raw.closed();
    assert!(
        closed,
        "a TLS alert and close, not a wait for the CONNECT timeout"
    );
    assert!(got.is_empty(), "no MQTT answer: {got:?}");
}

#[test]
fn rumqttc_over_tls() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {});
    let addr = tls_addr(&b);
    let ca = std::fs::read(pki.dir.join("ca.pem")).unwrap();
    let client = |id: &str| {
        let mut opts = rumqttc::MqttOptions::new(id, "localhost", addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth: None,
            },
        ));
        rumqttc::Client::new(opts, 10)
    };
    let (sub, mut sub_conn) = client("r-sub");
    common::wait_connack(&mut sub_conn);
    sub.subscribe("r/#", rumqttc::QoS::AtLeastOnce).unwrap();
    common::wait_suback(&mut sub_conn);
    let (publ, mut pub_conn) = client("r-pub");
    common::wait_connack(&mut pub_conn);
    publ.publish(
        "r/1",
        rumqttc::QoS::AtLeastOnce,
        false,
        b"over tls".to_vec(),
    )
    .unwrap();
    // Drive the publisher's event loop until its PUBACK.
    common::wait_event(&mut pub_conn, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
    });
    let p = common::next_publish(&mut sub_conn);
    assert_eq!(&p.payload[..], b"over tls");
}

fn mosquitto(name: &str) -> Command {
    let probe = Command::new(name).arg("--help").output();
    assert!(
        probe.is_ok(),
        "{name} not found: install the Debian package mosquitto-clients (.ci/run does)"
    );
    Command::new(name)
}

/// Arguments for a Mosquitto client to reach `addr` over TLS as localhost.
fn mosquitto_tls_args(pki: &Pki, addr: SocketAddr, tls_version: &str) -> Vec<String> {
    [
        "-h",
        "localhost",
        "-p",
        &addr.port().to_string(),
        "--cafile",
        &pki.path("ca.pem"),
        "--tls-version",
        tls_version,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn mosquitto_exchange(pki: &Pki, addr: SocketAddr, extra: &[String]) {
    for version in ["tlsv1.2", "tlsv1.3"] {
        let topic = format!("m/{version}");
        let args = mosquitto_tls_args(pki, addr, version);
        // A retained message first: its arrival proves the subscription is active.
        let out = mosquitto("mosquitto_pub")
            .args(&args)
            .args(extra)
            .args(["-t", &topic, "-m", "ready", "-q", "1", "-r"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
        let mut sub = mosquitto("mosquitto_sub")
            .args(&args)
            .args(extra)
            .args(["-t", &topic, "-q", "1", "-C", "2", "-W", "10"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("ready"));
        let out = mosquitto("mosquitto_pub")
            .args(&args)
            .args(extra)
            .args(["-t", &topic, "-m", "live", "-q", "1"])
            .output()
            .unwrap();
        assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
        assert_eq!(lines.next().and_then(Result::ok).as_deref(), Some("live"));
        assert!(sub.wait().unwrap().success());
    }
}

#[test]
fn mosquitto_clients_over_tls() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {});
    mosquitto_exchange(&pki, tls_addr(&b), &[]);
}

#[test]
fn mosquitto_clients_over_mutual_tls() {
    let pki = Pki::new();
    let b = tls_broker(&pki, |cfg| {
        cfg.client_ca_file = Some(pki.dir.join("ca.pem"));
        cfg.use_identity_as_username = true;
    });
    let addr = tls_addr(&b);
    let with_cert = [
        "--cert".to_string(),
        pki.path("client.pem"),
        "--key".to_string(),
        pki.path("client.key"),
    ];
    mosquitto_exchange(&pki, addr, &with_cert);
    // Without a client certificate the publish fails.
    let out = mosquitto("mosquitto_pub")
        .args(mosquitto_tls_args(&pki, addr, "tlsv1.2"))
        .args(["-t", "m/x", "-m", "no", "-q", "1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "no client certificate must be refused"
    );
}

#[test]
fn bad_certificate_files_are_start_errors() {
    let pki = Pki::new();
    let bad = |tweak: &dyn Fn(&mut Config)| {
        let mut cfg = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
            cert_file: Some(pki.dir.join("server.pem")),
            key_file: Some(pki.dir.join("server.key")),
            workers: 1,
            pin_cores: false,
            ..Config::default()
        };
        tweak(&mut cfg);
        ternmq::runtime::start(cfg).err().map(|e| e.to_string())
    };
    let missing: &Path = Path::new("/nonexistent/ternmq.pem");
    let e = bad(&|c| c.cert_file = Some(missing.to_path_buf())).expect("missing cert");
    assert!(e.contains("cannot read certificate file"), "{e}");
    let e = bad(&|c| c.key_file = Some(pki.dir.join("ca.pem"))).expect("a cert is no key");
    assert!(e.contains("key file"), "{e}");
    let e = bad(&|c| c.cert_file = Some(pki.dir.join("server.key"))).expect("a key is no cert");
    assert!(e.contains("certificate file"), "{e}");
    assert_eq!(bad(&|_| {}), None, "the good files start");
}

#[test]
fn bench_pairs_runs_over_tls_without_loss() {
    use ternmq::bench::scenario::{BenchConfig, Scenario};
    let pki = Pki::new();
    let b = tls_broker(&pki, |_| {});
    let report = ternmq::bench::run(&BenchConfig {
        scenario: Scenario::Pairs,
        broker: tls_addr(&b),
        count: 4,
        qos: QoS::AtLeastOnce,
        inflight: 20,
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(1),
        // Generous: under a loaded machine the last acknowledgements can take a while.
        drain: Duration::from_secs(20),
        tls: Some(client_config(&pki, Versions::Both, None)),
        ..BenchConfig::default()
    })
    .expect("bench over TLS");
    assert!(report.received > 100, "{}", report.table());
    assert_eq!(report.tally.lost, 0, "{}", report.table());
    assert_eq!(report.tally.duplicates, 0);
    assert!(report.drained);
}

/// With `use_identity_as_username` the certificate authenticates: no password is
/// asked of a client presenting one, and the ACL applies to its CN (`device-42`).
#[test]
fn certificate_identity_authenticates_and_the_acl_applies_to_it() {
    let pki = Pki::new();
    let passwd = pki.dir.join("passwd");
    std::fs::write(&passwd, "").unwrap(); // no users: passwords would all fail
    let acl = pki.dir.join("acl");
    std::fs::write(&acl, "user device-42\ntopic readwrite m/#\n").unwrap();
    let b = tls_broker(&pki, |cfg| {
        cfg.client_ca_file = Some(pki.dir.join("ca.pem"));
        cfg.use_identity_as_username = true;
        cfg.password_file = Some(passwd.clone());
        cfg.acl_file = Some(acl.clone());
    });
    let addr = tls_addr(&b);
    let with_cert = [
        "--cert".to_string(),
        pki.path("client.pem"),
        "--key".to_string(),
        pki.path("client.key"),
    ];
    mosquitto_exchange(&pki, addr, &with_cert);
    // Outside its ACL the certified client's subscription is refused.
    let out = mosquitto("mosquitto_sub")
        .args(mosquitto_tls_args(&pki, addr, "tlsv1.2"))
        .args(&with_cert)
        .args(["-t", "other/#", "-C", "1", "-W", "3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("denied"),
        "subscription outside the ACL: {out:?}"
    );
    // The plain listener has no certificate to vouch: no user, no entry.
    let plain = b.local_addrs()[0];
    let out = mosquitto("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &plain.port().to_string()])
        .args(["-u", "device-42", "-P", "guess", "-t", "m/x", "-m", "no"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a claimed name needs its password");
}
