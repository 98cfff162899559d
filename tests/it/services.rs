//! The real services `scripts/services up` starts answer where
//! `target/services/env` says. `scripts/test` starts them before the suite.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn service_env() -> HashMap<String, String> {
    let path = crate::support::repo_root().join("target/services/env");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; start the services with `scripts/services up` (scripts/test does)",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.to_owned(),
                v.trim_matches('\'').trim_matches('"').to_owned(),
            )
        })
        .collect()
}

fn connect(addr: &str) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

fn http_get(host_port: &str, path: &str) -> String {
    let mut s = connect(host_port);
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n").unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

#[test]
fn services_env_lists_every_service_and_each_answers() {
    let env = service_env();
    let vault = env
        .get("VAULT_ADDR")
        .expect("VAULT_ADDR")
        .trim_start_matches("http://")
        .to_owned();
    assert!(
        vault.starts_with("127.0.0.1:"),
        "services listen on loopback only: {vault}"
    );
    let health = http_get(&vault, "/v1/sys/health");
    assert!(
        health.starts_with("HTTP/1.0 200") || health.starts_with("HTTP/1.1 200"),
        "OpenBao health: {health}"
    );
    assert!(health.contains("\"initialized\":true"), "{health}");

    let moto = env
        .get("REKEY_MOTO_URL")
        .expect("REKEY_MOTO_URL")
        .trim_start_matches("http://")
        .to_owned();
    let answer = http_get(&moto, "/moto-api/data.json");
    assert!(
        answer.contains(" 200 "),
        "moto: {}",
        answer.lines().next().unwrap_or("")
    );

    // Redis speaks RESP: PING answers +PONG.
    let redis = env
        .get("REKEY_REDIS_URL")
        .expect("REKEY_REDIS_URL")
        .trim_start_matches("redis://")
        .to_owned();
    let mut s = connect(&redis);
    s.write_all(b"PING\r\n").unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"+PONG\r\n");

    // PostgreSQL answers an SSLRequest with a single byte, S or N.
    let pg = format!("{}:{}", env["REKEY_PG_HOST"], env["REKEY_PG_PORT"]);
    let mut s = connect(&pg);
    s.write_all(&[0, 0, 0, 8, 4, 210, 22, 47]).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert!(b[0] == b'N' || b[0] == b'S', "postgres answered {b:?}");

    // MariaDB greets first with a handshake packet naming its version.
    let my = format!("{}:{}", env["REKEY_MYSQL_HOST"], env["REKEY_MYSQL_PORT"]);
    let mut s = connect(&my);
    let mut greeting = [0u8; 64];
    let n = s.read(&mut greeting).unwrap();
    assert!(
        String::from_utf8_lossy(&greeting[..n]).contains("MariaDB"),
        "mariadb greeting: {:?}",
        &greeting[..n]
    );

    // slapd answers an anonymous simple bind (message 1, LDAPv3) with success.
    let ldap = env
        .get("REKEY_LDAP_URL")
        .expect("REKEY_LDAP_URL")
        .trim_start_matches("ldap://")
        .to_owned();
    assert!(ldap.starts_with("127.0.0.1:"), "{ldap}");
    let mut s = connect(&ldap);
    s.write_all(&[
        0x30, 0x0c, 0x02, 0x01, 0x01, 0x60, 0x07, 0x02, 0x01, 0x03, 0x04, 0x00, 0x80, 0x00,
    ])
    .unwrap();
    let mut answer = [0u8; 64];
    let n = s.read(&mut answer).unwrap();
    let answer = &answer[..n];
    assert!(
        answer.first() == Some(&0x30)
            && answer.windows(1).any(|w| w == [0x61])
            && answer.windows(3).any(|w| w == [0x0a, 0x01, 0x00]),
        "slapd bind response: {answer:?}"
    );

    // sshd greets first with its version line.
    let ssh = format!("{}:{}", env["REKEY_SSH_HOST"], env["REKEY_SSH_PORT"]);
    assert!(ssh.starts_with("127.0.0.1:"), "{ssh}");
    let mut s = connect(&ssh);
    let mut banner = [0u8; 8];
    s.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"SSH-2.0-");
    assert!(
        env["REKEY_SSH_HOST_KEY_FINGERPRINT"].starts_with("SHA256:")
            && !env["REKEY_SSH_ACCOUNTS"].is_empty(),
        "sshd env lines"
    );
}
