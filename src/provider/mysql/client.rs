//! The MySQL/MariaDB wire side: an admin connection pool, fresh logins for
//! verify, and error mapping from server error codes (server messages can quote
//! the statement, which holds the password).

use super::config::MysqlConfig;
use crate::provider::ProviderError;
use crate::secret::Secret;
use mysql_async::{Conn, Opts, OptsBuilder, Pool};

/// ER_ACCESS_DENIED_ERROR: wrong user or password.
pub const ACCESS_DENIED: u16 = 1045;

pub struct MysqlClient {
    pub cfg: MysqlConfig,
    pool: Pool,
}

pub enum LoginError {
    /// The server answered and refused the password (error 1045).
    Rejected,
    Other(ProviderError),
}

impl MysqlClient {
    pub fn new(cfg: MysqlConfig) -> MysqlClient {
        let opts = Self::opts(&cfg, &cfg.admin_user, &cfg.admin_password);
        MysqlClient {
            pool: Pool::new(opts),
            cfg,
        }
    }

    fn opts(cfg: &MysqlConfig, user: &str, password: &Secret) -> Opts {
        OptsBuilder::default()
            .ip_or_hostname(cfg.host.clone())
            .tcp_port(cfg.port)
            .user(Some(user))
            .pass(Some(password.expose()))
            // The client would otherwise switch to the server's Unix socket when it
            // sees a loopback address, and a socket login matches other accounts
            // ('u'@'localhost') than the TCP login consumers make.
            .prefer_socket(false)
            .stmt_cache_size(0)
            .into()
    }

    /// A fresh TCP session as `user`.
    pub async fn login(&self, user: &str, password: &Secret) -> Result<Conn, LoginError> {
        let opts = Self::opts(&self.cfg, user, password);
        match tokio::time::timeout(self.cfg.connect_timeout, Conn::new(opts)).await {
            Err(_) => Err(LoginError::Other(self.unreachable("timed out"))),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(mysql_async::Error::Server(e))) if e.code == ACCESS_DENIED => {
                Err(LoginError::Rejected)
            }
            Ok(Err(e)) => Err(LoginError::Other(
                self.classify(&e, &format!("login as `{user}`")),
            )),
        }
    }

    /// An admin session from the pool.
    pub async fn admin(&self) -> Result<Conn, ProviderError> {
        let cfg = &self.cfg;
        match tokio::time::timeout(cfg.connect_timeout, self.pool.get_conn()).await {
            Err(_) => Err(self.unreachable("timed out")),
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(mysql_async::Error::Server(e))) if e.code == ACCESS_DENIED => {
                Err(ProviderError::Fatal(format!(
                    "MySQL at {} rejected the admin login of `{}` (wrong password, or no account for rekey's address); fix the admin credential from {}",
                    cfg.address(),
                    cfg.admin_user,
                    cfg.admin_origin
                )))
            }
            Ok(Err(e)) => Err(self.classify(&e, "admin login")),
        }
    }

    fn unreachable(&self, why: &str) -> ProviderError {
        ProviderError::Transient(format!(
            "cannot reach MySQL at {}: {why}; check `host`, `port` and that the server is up",
            self.cfg.address()
        ))
    }

    /// What failed, where, and what to do, from the error code only.
    pub fn classify(&self, e: &mysql_async::Error, what: &str) -> ProviderError {
        let at = self.cfg.address();
        match e {
            mysql_async::Error::Server(s) => {
                let fatal = |m: &str| {
                    ProviderError::Fatal(format!("MySQL at {at}: {what}: {m} (error {})", s.code))
                };
                match s.code {
                    ACCESS_DENIED => fatal("access denied"),
                    1044 | 1142 | 1227 => fatal(
                        "permission denied; the admin account needs CREATE USER (or UPDATE on the mysql schema)",
                    ),
                    1396 => fatal(
                        "the account does not exist; fix the credential's `account` or `hosts`",
                    ),
                    1040 | 1203 | 1205 | 1213 | 2006 | 2013 => ProviderError::Transient(format!(
                        "MySQL at {at}: {what}: server busy or connection lost (error {})",
                        s.code
                    )),
                    _ => fatal("the server refused the statement"),
                }
            }
            mysql_async::Error::Io(io) => ProviderError::Transient(format!(
                "cannot reach MySQL at {at} ({what}): {io}; check `host`, `port` and that the server is up"
            )),
            other => ProviderError::Transient(format!("MySQL at {at}: {what}: {other}")),
        }
    }
}

/// Quotes `value` as a MySQL string literal. With `NO_BACKSLASH_ESCAPES` in the
/// session's sql_mode a backslash is an ordinary character; otherwise it escapes.
pub fn quote(value: &str, backslash_escapes: bool) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if backslash_escapes => out.push_str("\\\\"),
            '\0' if backslash_escapes => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quoting_doubles_quotes_and_escapes_backslashes_only_where_they_escape() {
        assert_eq!(quote(r"a'b\c", true), r"'a''b\\c'");
        assert_eq!(quote(r"a'b\c", false), r"'a''b\c'");
    }
}
