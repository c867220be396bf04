//! Interop with Eclipse Mosquitto's command-line clients (`mosquitto_pub`,
//! `mosquitto_sub`; Debian package `mosquitto-clients`, installed by `.ci/run`).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn tool(name: &str) -> Command {
    let probe = Command::new(name).arg("--help").output();
    assert!(
        probe.is_ok(),
        "{name} not found: install the Debian package mosquitto-clients (.ci/run does)"
    );
    Command::new(name)
}

fn pub_msg(port: u16, topic: &str, msg: &str, qos: u8, retain: bool, version: &str) {
    let mut cmd = tool("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
        .args(["-t", topic, "-m", msg, "-q", &qos.to_string()]);
    if retain {
        cmd.arg("-r");
    }
    let out = cmd.output().expect("run mosquitto_pub");
    assert!(out.status.success(), "mosquitto_pub failed: {out:?}");
}

#[test]
fn mosquitto_clients_exchange_messages_at_every_qos() {
    let b = common::broker(2);
    let port = b.addr().port();
    for version in ["mqttv311", "mqttv31"] {
        let topic = format!("interop/{version}/state");
        // A retained message first: its arrival proves the subscription is active.
        pub_msg(port, &topic, "ready", 1, true, version);
        let mut sub = tool("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", version])
            .args([
                "-t",
                &format!("interop/{version}/#"),
                "-q",
                "2",
                "-v",
                "-C",
                "4",
                "-W",
                "20",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run mosquitto_sub");
        let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
        let first = lines.next().expect("a line").expect("utf-8");
        assert_eq!(first, format!("{topic} ready"));
        for qos in 0..=2u8 {
            pub_msg(
                port,
                &format!("interop/{version}/q{qos}"),
                &format!("m{qos}"),
                qos,
                false,
                version,
            );
        }
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        assert_eq!(
            rest,
            vec![
                format!("interop/{version}/q0 m0"),
                format!("interop/{version}/q1 m1"),
                format!("interop/{version}/q2 m2"),
            ]
        );
        let status = sub.wait().expect("mosquitto_sub exits");
        assert!(status.success());
        // Clear the retained message (empty payload deletes).
        let out = tool("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-t",
                &topic,
                "-r",
                "-n",
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        std::thread::sleep(Duration::from_millis(50));
    }
}
