//! The gate end to end on a virtual clock: login decisions, the verification
//! cache, the per-turn budget, the back-off, and reloads reaching connections.

use super::acl::Access;
use super::gate::{ConnAuth, Gate, Login, Refusal, SLOW_VERIFICATIONS_PER_TURN};
use super::hash::PasswordHash;
use super::{AuthShared, Rules};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn passwd(users: &[(&str, &str)]) -> String {
    users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", PasswordHash::new(p.as_bytes(), 50).unwrap()))
        .collect()
}

fn rules(passwd: Option<&str>, acl: Option<&str>, anon: Option<bool>) -> Rules {
    Rules::from_texts(passwd, acl, anon).unwrap()
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn user(u: &str) -> Login {
    Login::Accepted(Some(u.into()))
}

#[test]
fn anonymous_default_follows_the_password_file() {
    let t = Instant::now();
    let open = AuthShared::from_rules(rules(None, Some(""), None));
    let mut g = Gate::new(open);
    assert_eq!(g.login(t, None, None, None), Login::Accepted(None));
    assert_eq!(
        g.login(t, None, Some("x"), None),
        user("x"),
        "unverified claim"
    );

    let pw = passwd(&[("alice", "pw")]);
    let closed = AuthShared::from_rules(rules(Some(&pw), None, None));
    let mut g = Gate::new(closed);
    assert_eq!(
        g.login(t, None, None, None),
        Login::Refused(Refusal::NotAuthorized)
    );
    let both = AuthShared::from_rules(rules(Some(&pw), None, Some(true)));
    assert_eq!(
        Gate::new(both).login(t, None, None, None),
        Login::Accepted(None)
    );
    let none = AuthShared::from_rules(rules(None, None, Some(false)));
    let mut g = Gate::new(none);
    assert_eq!(
        g.login(t, None, Some("x"), Some(b"y")),
        Login::Refused(Refusal::NotAuthorized),
        "nothing to verify a user name against"
    );
}

#[test]
fn passwords_are_checked() {
    let t = Instant::now();
    let pw = passwd(&[("alice", "secret")]);
    let mut g = Gate::new(AuthShared::from_rules(rules(Some(&pw), None, None)));
    assert_eq!(
        g.login(t, None, Some("alice"), Some(b"secret")),
        user("alice")
    );
    let t = t + Duration::from_millis(1);
    let bad = Login::Refused(Refusal::BadCredentials);
    assert_eq!(g.login(t, None, Some("alice"), Some(b"Secret")), bad);
    assert_eq!(g.login(t, None, Some("alice"), None), bad);
    let t = t + Duration::from_millis(1);
    assert_eq!(g.login(t, None, Some("bob"), Some(b"secret")), bad);
}

#[test]
fn successful_verifications_are_cached_and_checked_against_the_stored_hash() {
    let t = Instant::now();
    let pw = passwd(&[("alice", "secret")]);
    let shared = AuthShared::from_rules(rules(Some(&pw), None, None));
    let mut g = Gate::new(shared.clone());
    assert_eq!(
        g.login(t, None, Some("alice"), Some(b"secret")),
        user("alice")
    );
    assert_eq!(g.verified_cached(), 1);
    // Cache hits cost no budget: many in one turn.
    for _ in 0..10 {
        assert_eq!(
            g.login(t, None, Some("alice"), Some(b"secret")),
            user("alice")
        );
    }
    // A new password for alice: the cached verification no longer counts.
    let pw2 = passwd(&[("alice", "changed")]);
    shared.replace(rules(Some(&pw2), None, None));
    let t = t + Duration::from_millis(1);
    assert_eq!(
        g.login(t, None, Some("alice"), Some(b"secret")),
        Login::Refused(Refusal::BadCredentials)
    );
    assert_eq!(
        g.login(t, None, Some("alice"), Some(b"changed")),
        user("alice")
    );
}

#[test]
fn slow_verifications_are_bounded_per_turn() {
    let t = Instant::now();
    let pw = passwd(&[("a", "1"), ("b", "2"), ("c", "3")]);
    let mut g = Gate::new(AuthShared::from_rules(rules(Some(&pw), None, None)));
    let logins = [("a", "1"), ("b", "2"), ("c", "3")];
    let mut results = Vec::new();
    for (u, p) in logins {
        results.push(g.login(t, None, Some(u), Some(p.as_bytes())));
    }
    let later = results.iter().filter(|r| **r == Login::Later).count();
    assert_eq!(later, 3 - SLOW_VERIFICATIONS_PER_TURN as usize);
    // The next turn goes on.
    let t2 = t + Duration::from_millis(1);
    assert_eq!(g.login(t2, None, Some("c"), Some(b"3")), user("c"));
}

#[test]
fn repeated_failures_back_an_address_off_and_spare_others() {
    let pw = passwd(&[("alice", "secret")]);
    let shared = AuthShared::from_rules(rules(Some(&pw), None, None));
    let mut g = Gate::new(shared);
    let mut t = Instant::now();
    let bad = Login::Refused(Refusal::BadCredentials);
    for _ in 0..super::backoff::FREE_FAILURES + 1 {
        t += Duration::from_millis(1);
        assert_eq!(g.login(t, ip("127.0.0.2"), Some("alice"), Some(b"x")), bad);
    }
    t += Duration::from_millis(1);
    // Even the right password is not looked at while backing off.
    assert_eq!(
        g.login(t, ip("127.0.0.2"), Some("alice"), Some(b"secret")),
        Login::Refused(Refusal::BackingOff)
    );
    assert_eq!(
        g.login(t, ip("127.0.0.3"), Some("alice"), Some(b"secret")),
        user("alice")
    );
    // Anonymous clients are not concerned (no password was tried).
    t += Duration::from_secs(2);
    assert_eq!(
        g.login(t, ip("127.0.0.2"), Some("alice"), Some(b"secret")),
        user("alice")
    );
}

const ACL: &str = "\
topic read public/#
user alice
topic readwrite alice/#
pattern write devices/%c/#
";

#[test]
fn connections_get_their_compiled_rules() {
    let shared = AuthShared::from_rules(rules(None, Some(ACL), None));
    let mut g = Gate::new(shared);
    let mut alice = ConnAuth::default();
    g.admit(&mut alice, Some("alice".into()), Arc::from("dev1"));
    assert!(g.allows(&mut alice, "alice/x", Access::Write));
    assert!(g.allows(&mut alice, "devices/dev1/t", Access::Write));
    assert!(!g.allows(&mut alice, "devices/dev2/t", Access::Write));
    assert!(!g.allows(&mut alice, "public/x", Access::Read));
    assert!(g.allows_subscribe(&mut alice, "alice/#"));
    assert!(!g.allows_subscribe(&mut alice, "#"));
    let mut anon = ConnAuth::default();
    g.admit(&mut anon, None, Arc::from("dev2"));
    assert!(g.allows(&mut anon, "public/x", Access::Read));
    assert!(!g.allows(&mut anon, "public/x", Access::Write));
    // Not admitted: nothing.
    let mut nobody = ConnAuth::default();
    assert!(!g.allows(&mut nobody, "public/x", Access::Read));
}

#[test]
fn without_an_acl_file_everything_is_allowed() {
    let pw = passwd(&[("alice", "pw")]);
    let mut g = Gate::new(AuthShared::from_rules(rules(Some(&pw), None, None)));
    let mut c = ConnAuth::default();
    g.admit(&mut c, Some("alice".into()), Arc::from("c"));
    assert!(g.allows(&mut c, "any/topic", Access::Write));
    assert!(g.allows_subscribe(&mut c, "#"));
}

#[test]
fn after_a_reload_only_logins_the_new_rules_would_accept_stay_admitted() {
    let t = Instant::now();
    let pw = passwd(&[("alice", "a"), ("bob", "b")]);
    let shared = AuthShared::from_rules(rules(Some(&pw), None, Some(true)));
    let mut g = Gate::new(shared.clone());
    let mut conns = Vec::new();
    for (user, pass) in [
        (Some("alice"), Some("a")),
        (Some("bob"), Some("b")),
        (None, None),
    ] {
        let login = g.login(t, None, user, pass.map(str::as_bytes));
        let Login::Accepted(u) = login else {
            panic!("{login:?}");
        };
        let mut c = ConnAuth::default();
        g.admit(&mut c, u, Arc::from("id"));
        conns.push(c);
    }
    let mut certified = ConnAuth::default();
    certified.certified = true;
    g.admit(&mut certified, Some("cert-user".into()), Arc::from("id"));
    let not_logged_in = ConnAuth::default();
    assert!(conns.iter().all(|c| g.still_admitted(c)));

    // bob gets a new password, anonymous access is turned off, alice is unchanged.
    let alice = pw.lines().next().unwrap();
    let new = format!("{alice}\n{}", passwd(&[("bob", "b2")]));
    shared.replace(rules(Some(&new), None, Some(false)));
    let kept: Vec<bool> = conns.iter().map(|c| g.still_admitted(c)).collect();
    assert_eq!(kept, [true, false, false]);
    assert!(g.still_admitted(&certified), "a certificate is not judged");
    assert!(g.still_admitted(&not_logged_in), "nothing to judge yet");

    // alice removed.
    shared.replace(rules(Some(&passwd(&[("bob", "b2")])), None, Some(true)));
    assert!(!g.still_admitted(&conns[0]));
    assert!(g.still_admitted(&conns[2]), "anonymous allowed again");
}

#[test]
fn a_reload_reaches_connected_clients_at_their_next_check() {
    let shared = AuthShared::from_rules(rules(None, Some(ACL), None));
    let mut g = Gate::new(shared.clone());
    let mut alice = ConnAuth::default();
    g.admit(&mut alice, Some("alice".into()), Arc::from("dev1"));
    assert!(g.allows(&mut alice, "alice/x", Access::Write));
    shared.replace(rules(None, Some("user alice\ntopic read alice/#\n"), None));
    assert!(
        !g.allows(&mut alice, "alice/x", Access::Write),
        "cached decision invalidated"
    );
    assert!(g.allows(&mut alice, "alice/x", Access::Read));
    // Removing the ACL file's rules entirely (no file): all allowed again.
    shared.replace(rules(None, None, None));
    assert!(g.allows(&mut alice, "other", Access::Write));
}
