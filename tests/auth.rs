//! Authentication and ACLs on a real broker over sockets: password checks and
//! their CONNACK codes, anonymous access, ACL filtering of SUBSCRIBE, PUBLISH,
//! retained messages and Wills, `ternmq passwd`, reloading (library call and
//! SIGHUP): connections whose login still holds stay, the others are closed; and
//! the failed-login back-off per address.
//! Clients: rumqttc and Mosquitto's command-line tools (independent of our codec),
//! and our raw codec where a source address must be chosen.

mod common;

use common::{broker_with, next_publish, wait_connack, wait_event, wait_suback, Raw, WAIT};
use rumqttc::{
    ConnectReturnCode as Code, ConnectionError, Event, Incoming, LastWill, MqttOptions, QoS,
    SubscribeReasonCode,
};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use ternmq::auth::hash::PasswordHash;
use ternmq::protocol::{Disconnect, Packet, ProtocolVersion, ReasonCode, TopicName, Will};
use ternmq::runtime::BrokerHandle;

/// A fresh directory for one test's files.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ternmq-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a password file (cheap hashes: tests need no slowness).
fn write_passwd(path: &Path, users: &[(&str, &str)]) {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", PasswordHash::new(p.as_bytes(), 100).unwrap()))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Adds users to a password file, leaving the lines already there as they are (as
/// `ternmq passwd` does): a rewritten line is a new password to the broker, even
/// for the same password, and would close that user's connections on reload.
fn append_passwd(path: &Path, users: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(path).unwrap();
    for (u, p) in users {
        text.push_str(&format!(
            "{u}:{}\n",
            PasswordHash::new(p.as_bytes(), 100).unwrap()
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn auth_broker(passwd: Option<&Path>, acl: Option<&Path>, anonymous: Option<bool>) -> BrokerHandle {
    broker_with(2, |c| {
        c.password_file = passwd.map(Path::to_path_buf);
        c.acl_file = acl.map(Path::to_path_buf);
        c.allow_anonymous = anonymous;
    })
}

fn opts(addr: SocketAddr, id: &str, creds: Option<(&str, &str)>) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_keep_alive(Duration::from_secs(30));
    if let Some((u, p)) = creds {
        o.set_credentials(u, p);
    }
    o
}

/// The CONNACK outcome of a rumqttc client: Ok(()) or the refusal code.
fn try_connect(addr: SocketAddr, id: &str, creds: Option<(&str, &str)>) -> Result<(), Code> {
    let (_c, mut conn) = rumqttc::Client::new(opts(addr, id, creds), 10);
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        match conn.recv_timeout(WAIT) {
            Ok(Ok(Event::Incoming(Incoming::ConnAck(_)))) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(ConnectionError::ConnectionRefused(code))) => return Err(code),
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("no CONNACK");
}

/// A connected rumqttc client.
fn client(
    addr: SocketAddr,
    id: &str,
    creds: Option<(&str, &str)>,
) -> (rumqttc::Client, rumqttc::Connection) {
    let (c, mut conn) = rumqttc::Client::new(opts(addr, id, creds), 100);
    wait_connack(&mut conn);
    (c, conn)
}

/// Subscribes and returns the SUBACK codes.
fn subscribe(
    c: &rumqttc::Client,
    conn: &mut rumqttc::Connection,
    filter: &str,
) -> SubscribeReasonCode {
    c.subscribe(filter, QoS::AtLeastOnce).unwrap();
    wait_suback(conn).return_codes[0]
}

/// Publishes at QoS 1 and waits for the PUBACK.
fn publish(
    c: &rumqttc::Client,
    conn: &mut rumqttc::Connection,
    topic: &str,
    payload: &str,
    retain: bool,
) {
    c.publish(topic, QoS::AtLeastOnce, retain, payload.as_bytes().to_vec())
        .unwrap();
    wait_event(conn, |e| matches!(e, Event::Incoming(Incoming::PubAck(_))));
}

#[test]
fn passwords_decide_the_connack_code() {
    let dir = temp_dir("codes");
    let pw = dir.join("passwd");
    write_passwd(&pw, &[("alice", "secret")]);
    let b = auth_broker(Some(&pw), None, None);
    let a = b.addr();
    assert_eq!(try_connect(a, "c1", Some(("alice", "secret"))), Ok(()));
    assert_eq!(
        try_connect(a, "c2", Some(("alice", "wrong"))),
        Err(Code::BadUserNamePassword)
    );
    assert_eq!(
        try_connect(a, "c3", Some(("mallory", "secret"))),
        Err(Code::BadUserNamePassword)
    );
    // A password file makes anonymous access default to off: 0x05.
    assert_eq!(try_connect(a, "c4", None), Err(Code::NotAuthorized));

    // Mosquitto's client agrees.
    let port = a.port().to_string();
    let run = |user: &str, pass: &str| {
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"])
            .args(["-u", user, "-P", pass, "-i", "mpub"])
            .output()
            .expect("mosquitto_pub (package mosquitto-clients) runs")
    };
    assert!(run("alice", "secret").status.success());
    let bad = run("alice", "nope");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr).to_lowercase();
    assert!(err.contains("bad user name or password"), "{err}");
}

#[test]
fn anonymous_access_defaults_and_overrides() {
    let dir = temp_dir("anon");
    let pw = dir.join("passwd");
    write_passwd(&pw, &[("alice", "secret")]);
    // Password file and --allow-anonymous true: both kinds get in.
    let b = auth_broker(Some(&pw), None, Some(true));
    assert_eq!(try_connect(b.addr(), "a1", None), Ok(()));
    assert_eq!(
        try_connect(b.addr(), "a2", Some(("alice", "secret"))),
        Ok(())
    );
    assert_eq!(
        try_connect(b.addr(), "a3", Some(("alice", "x"))),
        Err(Code::BadUserNamePassword)
    );
    drop(b);
    // No password file: anonymous allowed by default...
    let acl = dir.join("acl");
    std::fs::write(&acl, "topic readwrite #\n").unwrap();
    let b = auth_broker(None, Some(&acl), None);
    assert_eq!(try_connect(b.addr(), "a4", None), Ok(()));
    drop(b);
    // ...unless turned off.
    let b = auth_broker(None, None, Some(false));
    assert_eq!(try_connect(b.addr(), "a5", None), Err(Code::NotAuthorized));
}

const ACL: &str = "\
# anonymous: nothing
user alice
topic readwrite a/#
topic read public/#
topic read secret/#
topic deny secret/hidden
topic write wills/alice
user bob
topic readwrite #
topic deny secret/#
user admin
topic readwrite #
pattern readwrite devices/%c/#
";

#[test]
fn acl_filters_subscribe_publish_and_retained() {
    let dir = temp_dir("acl");
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    write_passwd(&pw, &[("alice", "a"), ("bob", "b"), ("admin", "x")]);
    std::fs::write(&acl, ACL).unwrap();
    let b = auth_broker(Some(&pw), Some(&acl), None);
    let addr = b.addr();

    // Retained messages, written by admin.
    let (adm, mut adm_conn) = client(addr, "adm", Some(("admin", "x")));
    publish(&adm, &mut adm_conn, "secret/hidden", "h", true);
    publish(&adm, &mut adm_conn, "secret/open", "o", true);

    let (alice, mut ac) = client(addr, "alice-1", Some(("alice", "a")));
    assert_eq!(
        subscribe(&alice, &mut ac, "#"),
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        subscribe(&alice, &mut ac, "b/#"),
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        subscribe(&alice, &mut ac, "secret/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    // Only the retained message alice may read arrives.
    let p = next_publish(&mut ac);
    assert_eq!((p.topic.as_str(), p.retain), ("secret/open", true));
    assert_eq!(
        subscribe(&alice, &mut ac, "devices/alice-1/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "pattern with %c"
    );

    // bob reads everything but secret/#; publishes alice may not make never arrive.
    let (bobc, mut bc) = client(addr, "bob-1", Some(("bob", "b")));
    assert_eq!(
        subscribe(&bobc, &mut bc, "#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    publish(&alice, &mut ac, "b/forbidden", "no", false); // acknowledged, dropped
    publish(&alice, &mut ac, "secret/open", "no", true); // read-only for alice
    publish(&alice, &mut ac, "a/ok", "yes", false);
    publish(&adm, &mut adm_conn, "secret/x", "not for bob", false);
    publish(&adm, &mut adm_conn, "a/after", "yes", false);
    let first = next_publish(&mut bc);
    assert_eq!(first.topic, "a/ok", "denied publishes were not forwarded");
    let second = next_publish(&mut bc);
    assert_eq!(second.topic, "a/after", "bob may not read secret/x");
    // alice's write to secret/open did not replace the retained message.
    let (_c2, mut c2) = client(addr, "adm-2", Some(("admin", "x")));
    _c2.subscribe("secret/open", QoS::AtLeastOnce).unwrap();
    let r = next_publish(&mut c2);
    assert_eq!(&r.payload[..], b"o");
}

#[test]
fn wills_need_write_access() {
    let dir = temp_dir("will");
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    write_passwd(&pw, &[("alice", "a"), ("admin", "x")]);
    std::fs::write(&acl, ACL).unwrap();
    let b = auth_broker(Some(&pw), Some(&acl), None);
    let addr = b.addr();
    let (adm, mut adm_conn) = client(addr, "watcher", Some(("admin", "x")));
    assert_eq!(
        subscribe(&adm, &mut adm_conn, "wills/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    for (id, topic) in [("w1", "wills/forbidden"), ("w2", "wills/alice")] {
        let mut o = opts(addr, id, Some(("alice", "a")));
        o.set_last_will(LastWill::new(topic, "gone", QoS::AtLeastOnce, false));
        let (c, mut conn) = rumqttc::Client::new(o, 10);
        wait_connack(&mut conn);
        // Dropping the client without DISCONNECT ends the connection abruptly.
        drop(c);
        drop(conn);
    }
    let p = next_publish(&mut adm_conn);
    assert_eq!(
        p.topic, "wills/alice",
        "the forbidden will was not published"
    );
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ternmq"))
}

/// `ternmq passwd` with the password on stdin.
fn passwd_cmd(args: &[&str], input: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = bin()
        .arg("passwd")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may fail and exit before reading (a broken pipe is fine).
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    child.wait_with_output().unwrap()
}

#[test]
fn passwd_subcommand_creates_updates_and_deletes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = temp_dir("cli");
    let pw = dir.join("passwd");
    let f = pw.to_str().unwrap();
    assert!(
        !passwd_cmd(&[f, "alice"], "x\n").status.success(),
        "no file, no -c"
    );
    let out = passwd_cmd(&["-c", "-i", "1000", f, "alice"], "first\n");
    assert!(out.status.success(), "{out:?}");
    let out = passwd_cmd(&["-i", "1000", f, "bob"], "bobpw\n");
    assert!(out.status.success(), "{out:?}");
    let out = passwd_cmd(&["-i", "1000", f, "alice"], "second\n");
    assert!(out.status.success(), "{out:?}");
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(
        !text.contains("second") && !text.contains("bobpw"),
        "{text}"
    );
    assert!(text.contains("alice:$pbkdf2-sha512$i=1000$"), "{text}");
    assert_eq!(
        std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let b = auth_broker(Some(&pw), None, None);
    assert_eq!(
        try_connect(b.addr(), "c1", Some(("alice", "first"))),
        Err(Code::BadUserNamePassword)
    );
    assert_eq!(
        try_connect(b.addr(), "c2", Some(("alice", "second"))),
        Ok(())
    );
    assert_eq!(try_connect(b.addr(), "c3", Some(("bob", "bobpw"))), Ok(()));
    drop(b);
    let out = passwd_cmd(&["-D", f, "bob"], "");
    assert!(out.status.success(), "{out:?}");
    assert!(
        !passwd_cmd(&["-D", f, "bob"], "").status.success(),
        "already gone"
    );
    assert!(!std::fs::read_to_string(&pw).unwrap().contains("bob:"));
    // An empty password is refused.
    assert!(!passwd_cmd(&[f, "carol"], "\n").status.success());
}

#[test]
fn reload_applies_new_rules_without_dropping_connections() {
    let dir = temp_dir("reload");
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    write_passwd(&pw, &[("alice", "a"), ("admin", "x")]);
    std::fs::write(&acl, ACL).unwrap();
    let b = auth_broker(Some(&pw), Some(&acl), None);
    let addr = b.addr();
    let (adm, mut adm_conn) = client(addr, "watcher", Some(("admin", "x")));
    assert_eq!(
        subscribe(&adm, &mut adm_conn, "a/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let (alice, mut ac) = client(addr, "alice-1", Some(("alice", "a")));
    publish(&alice, &mut ac, "a/1", "before", false);
    assert_eq!(next_publish(&mut adm_conn).topic, "a/1");
    assert_eq!(
        try_connect(addr, "n1", Some(("newbie", "n"))),
        Err(Code::BadUserNamePassword)
    );

    // alice loses write access to a/#; newbie is added.
    std::fs::write(&acl, ACL.replace("topic readwrite a/#", "topic read a/#")).unwrap();
    append_passwd(&pw, &[("newbie", "n")]);
    b.reload_auth().unwrap();
    publish(&alice, &mut ac, "a/2", "after", false); // still connected, acknowledged
    let (adm2, mut adm2_conn) = client(addr, "adm-pub", Some(("admin", "x")));
    publish(&adm2, &mut adm2_conn, "a/3", "admin", false);
    assert_eq!(next_publish(&mut adm_conn).topic, "a/3", "a/2 was denied");
    assert_eq!(try_connect(addr, "n2", Some(("newbie", "n"))), Ok(()));

    // A broken file is refused and the rules in force stay.
    std::fs::write(&acl, "bogus line\n").unwrap();
    let err = b.reload_auth().unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
    assert_eq!(try_connect(addr, "n3", Some(("newbie", "n"))), Ok(()));
}

#[test]
fn reload_disconnects_the_logins_it_no_longer_admits() {
    let dir = temp_dir("revoke");
    let pw = dir.join("passwd");
    write_passwd(&pw, &[("alice", "a"), ("bob", "b"), ("carol", "c")]);
    let b = auth_broker(Some(&pw), None, None);
    let addr = b.addr();
    let (carol, mut cc) = client(addr, "carol-1", Some(("carol", "c")));
    assert_eq!(
        subscribe(&carol, &mut cc, "wills/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    // alice speaks MQTT 5 (our codec), to see the reason she is given, and has a will.
    let mut alice = Raw::connect(addr);
    alice.version = ProtocolVersion::V5;
    let mut c = common::connect_packet("alice-1", true);
    c.version = ProtocolVersion::V5;
    c.username = Some("alice".into());
    c.password = Some(bytes::Bytes::from_static(b"a"));
    c.will = Some(Will {
        topic: TopicName::new("wills/alice").unwrap(),
        payload: bytes::Bytes::from_static(b"gone"),
        qos: ternmq::protocol::QoS::AtMostOnce,
        retain: false,
        props: Default::default(),
    });
    alice.send(&Packet::Connect(c));
    match alice.recv() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::SUCCESS),
        other => panic!("expected CONNACK, got {other:?}"),
    }
    let (_bob, mut bc) = client(addr, "bob-1", Some(("bob", "b")));

    // alice is removed and bob's password changes; carol's line stays as it was.
    let carol_line: String = std::fs::read_to_string(&pw)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("carol:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&pw, carol_line).unwrap();
    append_passwd(&pw, &[("bob", "b2")]);
    b.reload_auth().unwrap();

    let (closed, got) = alice.closed();
    assert!(closed, "alice disconnected");
    assert_eq!(
        got,
        vec![Packet::Disconnect(Disconnect::new(
            ReasonCode::ADMINISTRATIVE_ACTION
        ))]
    );
    let deadline = Instant::now() + WAIT;
    loop {
        match bc.recv_timeout(WAIT) {
            Ok(Err(_)) => break, // bob's connection ended
            Ok(Ok(_)) => {}
            Err(_) => panic!("bob still connected"),
        }
        assert!(Instant::now() < deadline, "bob still connected");
    }
    // carol stays, and gets alice's will (a connection the server ends).
    let will = next_publish(&mut cc);
    assert_eq!(
        (will.topic.as_str(), &will.payload[..]),
        ("wills/alice", &b"gone"[..])
    );
    assert_eq!(
        subscribe(&carol, &mut cc, "x"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert_eq!(try_connect(addr, "bob-2", Some(("bob", "b2"))), Ok(()));
    assert_eq!(
        try_connect(addr, "alice-2", Some(("alice", "a"))),
        Err(Code::BadUserNamePassword)
    );
}

/// A raw CONNECT from a chosen source address; returns the CONNACK code.
fn connect_from(src: &str, addr: SocketAddr, user: &str, pass: &str) -> ReasonCode {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: SocketAddr = format!("{src}:0").parse().unwrap();
    sock.bind(&from.into()).unwrap();
    sock.connect(&addr.into()).unwrap();
    let mut raw = Raw::from_stream(sock.into());
    let mut c = common::connect_packet(&format!("bf-{src}"), true);
    c.username = Some(user.into());
    c.password = Some(bytes::Bytes::copy_from_slice(pass.as_bytes()));
    raw.send(&Packet::Connect(c));
    match raw.recv() {
        Some(Packet::ConnAck(a)) => a.code,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[test]
fn failed_logins_back_off_per_address() {
    let dir = temp_dir("backoff");
    let pw = dir.join("passwd");
    write_passwd(&pw, &[("alice", "secret")]);
    let b = auth_broker(Some(&pw), None, None);
    let addr = b.addr();
    for _ in 0..=ternmq::auth::backoff::FREE_FAILURES {
        assert_eq!(
            connect_from("127.0.0.2", addr, "alice", "guess"),
            ReasonCode::BAD_USER_NAME_OR_PASSWORD
        );
    }
    // Blocked now: even the right password is refused (0x03, try later)...
    assert_eq!(
        connect_from("127.0.0.2", addr, "alice", "secret"),
        ReasonCode::SERVER_UNAVAILABLE
    );
    // ...while another address is unaffected.
    assert_eq!(
        connect_from("127.0.0.3", addr, "alice", "secret"),
        ReasonCode::SUCCESS
    );
    // The block ends (the first lasts one second).
    std::thread::sleep(ternmq::auth::backoff::BLOCK_BASE + Duration::from_millis(100));
    assert_eq!(
        connect_from("127.0.0.2", addr, "alice", "secret"),
        ReasonCode::SUCCESS
    );
}

/// A free loopback port (bound then released; the broker binds it right after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn sighup_reloads_the_binary_without_dropping_connections() {
    let dir = temp_dir("sighup");
    let pw = dir.join("passwd");
    write_passwd(&pw, &[("alice", "a")]);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = bin()
        .args(["--listen", &addr.to_string(), "--workers", "2", "--no-pin"])
        .args([
            "--sys-interval",
            "0",
            "--password-file",
            pw.to_str().unwrap(),
        ])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "broker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (alice, mut ac) = client(addr, "alice-1", Some(("alice", "a")));
    assert_eq!(
        try_connect(addr, "b1", Some(("bob", "b"))),
        Err(Code::BadUserNamePassword)
    );
    append_passwd(&pw, &[("bob", "b")]);
    // SAFETY: kill only sends a signal to the child we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    let deadline = Instant::now() + WAIT;
    while try_connect(addr, "b2", Some(("bob", "b"))).is_err() {
        assert!(Instant::now() < deadline, "reload not applied");
        std::thread::sleep(Duration::from_millis(50));
    }
    // alice's connection survived the reload.
    assert_eq!(
        subscribe(&alice, &mut ac, "x"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn denials_are_counted_under_sys() {
    let dir = temp_dir("sys");
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    write_passwd(&pw, &[("alice", "a")]);
    // Anonymous clients (`ternmq stats`) may read $SYS; alice only a/#.
    std::fs::write(&acl, "topic read $SYS/#\nuser alice\ntopic readwrite a/#\n").unwrap();
    let b = broker_with(1, |c| {
        c.password_file = Some(pw.clone());
        c.acl_file = Some(acl.clone());
        c.allow_anonymous = Some(true);
        c.sys_interval_secs = 1;
    });
    let addr = b.addr();
    assert_eq!(
        try_connect(addr, "x", Some(("alice", "bad"))),
        Err(Code::BadUserNamePassword)
    );
    let (alice, mut ac) = client(addr, "alice-1", Some(("alice", "a")));
    assert_eq!(
        subscribe(&alice, &mut ac, "b/#"),
        SubscribeReasonCode::Failure
    );
    assert_eq!(
        subscribe(&alice, &mut ac, "a/#"),
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    publish(&alice, &mut ac, "b/x", "denied", false);
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let s = ternmq::bench::sys_stats::collect(addr, Duration::from_millis(1500)).unwrap();
        let counts = [
            s.num("auth/refused"),
            s.num("acl/denied_subscribe"),
            s.num("acl/denied_publish"),
        ];
        if counts == [Some(1), Some(1), Some(1)] {
            break;
        }
        assert!(Instant::now() < deadline, "{counts:?}");
    }
}

#[test]
fn a_session_resumed_by_another_user_gets_only_that_users_deliveries() {
    let dir = temp_dir("resume");
    let (pw, acl) = (dir.join("passwd"), dir.join("acl"));
    write_passwd(&pw, &[("alice", "a"), ("bob", "b"), ("admin", "x")]);
    std::fs::write(&acl, ACL).unwrap();
    let b = auth_broker(Some(&pw), Some(&acl), None);
    let addr = b.addr();
    {
        let mut o = opts(addr, "shared-id", Some(("bob", "b")));
        o.set_clean_session(false);
        let (bobc, mut bc) = rumqttc::Client::new(o, 10);
        wait_connack(&mut bc);
        assert_eq!(
            subscribe(&bobc, &mut bc, "#"),
            SubscribeReasonCode::Success(QoS::AtLeastOnce)
        );
        bobc.disconnect().unwrap();
        let _ = wait_event(&mut bc, |e| {
            matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect))
        });
    }
    let mut o = opts(addr, "shared-id", Some(("alice", "a")));
    o.set_clean_session(false);
    let (_alice, mut ac) = rumqttc::Client::new(o, 10);
    assert!(wait_connack(&mut ac), "the session is resumed");
    let (adm, mut adm_conn) = client(addr, "adm", Some(("admin", "x")));
    publish(&adm, &mut adm_conn, "b/for-bob", "no", false);
    publish(&adm, &mut adm_conn, "a/for-alice", "yes", false);
    assert_eq!(next_publish(&mut ac).topic, "a/for-alice");
}
