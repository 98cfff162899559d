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
}
