//! The one rule for where rekey may send a credential over HTTP: https to any
//! host, plain http only to a loopback address. Every HTTP endpoint rekey talks to
//! (the Vault store, the `vault_approle`, `vault_userpass` and `aws_iam`
//! providers, the declarative HTTP providers' base URLs, the GitHub sink, the
//! HTTP audit sink) is checked here, on the parsed URL: a string prefix would take
//! `http://127.0.0.1.attacker.example` for loopback.
//!
//! `postgres_tls` is the TLS client of every PostgreSQL connection (the
//! `postgres` providers, the shared journal): certificate and host name verified.
//!
//! Invariant: no request carrying a token, an admin credential or a secret value
//! leaves over plain http to a host that is not this machine, nor follows a
//! redirect to another origin (`redirect_policy`).

use url::{Host, Url};

/// Parses `text` as an http(s) URL with a host, and checks it against the rule:
/// the error says what is wrong and how to fix it (without the URL: callers
/// name the setting and show it).
pub fn parse_endpoint(text: &str) -> Result<Url, String> {
    let url = Url::parse(text.trim()).map_err(|e| format!("not an absolute URL ({e})"))?;
    check_endpoint(&url)?;
    Ok(url)
}

/// The rule on an already parsed URL.
pub fn check_endpoint(url: &Url) -> Result<(), String> {
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(url) => {}
        "http" => {
            return Err(format!(
                "host `{}` is reached over plain http; rekey sends credentials over https, or plain http only to a loopback address (127.0.0.0/8, ::1, localhost): write the URL with https://",
                url.host_str().unwrap_or_default()
            ));
        }
        other => return Err(format!("scheme `{other}` is not http or https")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    Ok(())
}

/// The redirect policy of every HTTP client that sends a credential in a header:
/// follow a redirect only within the same origin (scheme, host and port), at
/// most five times. A redirect elsewhere is not followed: the caller gets the
/// 3xx answer and says so. reqwest's default follows any redirect and keeps
/// custom headers such as `X-Vault-Token` (it drops only `Authorization` and
/// cookies), which would hand the token to whatever the server points at.
pub fn redirect_policy() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt
            .previous()
            .last()
            .is_some_and(|from| from.origin() == attempt.url().origin());
        if same_origin && attempt.previous().len() <= 5 {
            attempt.follow()
        } else {
            attempt.stop()
        }
    })
}

/// Whether `url`'s host is this machine: an address in 127.0.0.0/8, `::1` (or
/// an IPv4-mapped loopback), or the name `localhost`.
pub fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// TLS to PostgreSQL with certificate and host name checks: the system roots plus
/// `ca_file` (the `postgres` providers' and the shared journal's connections).
pub fn postgres_tls(
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read `ca_file` {}: {e}", path.display()))?
            .collect::<Result<_, _>>()
            .map_err(|e| format!("`ca_file` {} is not PEM certificates: {e}", path.display()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| format!("`ca_file` {}: {e}", path.display()))?;
        }
    }
    if roots.is_empty() {
        return Err(
            "no trusted CA certificates (none in the system store and no `ca_file`)".into(),
        );
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup failed: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_for_loopback_hosts_only_judged_on_the_parsed_host() {
        for ok in [
            "https://vault.example.com:8200",
            "http://127.0.0.1:8200",
            "http://127.8.9.10/",
            "http://[::1]:8200",
            "http://[::ffff:127.0.0.1]:8200",
            "http://localhost:8200",
            "http://LOCALHOST",
        ] {
            assert!(parse_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://vault.example.com:8200",
            "http://127.0.0.1.example.com:8200",
            "http://localhost.example.com",
            "http://10.0.0.1",
            "http://[::2]",
            "ftp://127.0.0.1",
            "127.0.0.1:8200",
            "http://",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
