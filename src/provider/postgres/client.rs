//! The PostgreSQL wire side: admin sessions (kept in a small pool, so concurrent
//! rotations of one instance do not pay a login each), fresh logins for verify,
//! and the mapping of server errors to `ProviderError` built from SQLSTATE codes
//! (server messages can quote the statement, which holds the password).

use super::config::{PgConfig, SslMode};
use crate::net::postgres_tls as tls_connector;
use crate::provider::ProviderError;
use crate::secret::Secret;
use std::sync::{Mutex, OnceLock};
use tokio_postgres::Client;

/// Admin sessions kept open between calls; more are opened on demand.
const MAX_IDLE: usize = 16;

/// How long PostgreSQL 14+ waits for a terminated backend to exit.
const TERMINATE_WAIT_MS: u32 = 5000;

pub struct PgClient {
    pub cfg: PgConfig,
    idle: Mutex<Vec<Client>>,
    tls: OnceLock<Result<tokio_postgres_rustls::MakeRustlsConnect, String>>,
}

/// Why a login did not succeed.
pub enum LoginError {
    /// The server answered and refused the password (SQLSTATE 28P01).
    Rejected,
    Other(ProviderError),
}

impl PgClient {
    pub fn new(cfg: PgConfig) -> PgClient {
        PgClient {
            cfg,
            idle: Mutex::new(Vec::new()),
            tls: OnceLock::new(),
        }
    }

    fn tls(
        &self,
        ca_file: Option<&std::path::Path>,
    ) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ProviderError> {
        self.tls
            .get_or_init(|| tls_connector(ca_file))
            .clone()
            .map_err(|m| ProviderError::Fatal(format!("PostgreSQL at {}: {m}", self.cfg.address())))
    }

    /// Opens a session as `user` on `database`.
    pub async fn login(
        &self,
        user: &str,
        password: &Secret,
        database: &str,
    ) -> Result<Client, LoginError> {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.cfg.host)
            .port(self.cfg.port)
            .user(user)
            .password(password.expose())
            .dbname(database)
            .application_name("rekey")
            .connect_timeout(self.cfg.connect_timeout);
        let connected = match &self.cfg.ssl {
            SslMode::Disable => {
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map(|(c, conn)| {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        c
                    })
            }
            SslMode::VerifyFull { ca_file } => {
                config.ssl_mode(tokio_postgres::config::SslMode::Require);
                let tls = self.tls(ca_file.as_deref()).map_err(LoginError::Other)?;
                config.connect(tls).await.map(|(c, conn)| {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    c
                })
            }
        };
        connected.map_err(|e| match sqlstate(&e).as_deref() {
            Some("28P01") => LoginError::Rejected,
            _ => LoginError::Other(
                self.classify(&e, &format!("login as `{user}` on database `{database}`")),
            ),
        })
    }

    /// An admin session from the pool, or a new one.
    pub async fn admin(&self) -> Result<Client, ProviderError> {
        loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => break,
            }
        }
        let cfg = &self.cfg;
        self.login(&cfg.admin_user, &cfg.admin_password, &cfg.database)
            .await
            .map_err(|e| match e {
                LoginError::Rejected => ProviderError::Fatal(format!(
                    "PostgreSQL at {} rejected the admin login of `{}` (wrong password); fix the admin credential from {}",
                    cfg.address(),
                    cfg.admin_user,
                    cfg.admin_origin
                )),
                LoginError::Other(e) => e,
            })
    }

    /// Returns a healthy admin session to the pool.
    pub fn release(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }

    /// Runs `statement` (one or more statements, no bind parameters) in an admin
    /// session; `what` names it in errors. Several statements sent at once run in
    /// one implicit transaction: all of them happen or none.
    pub async fn execute(&self, statement: &str, what: &str) -> Result<(), ProviderError> {
        let admin = self.admin().await?;
        match admin.batch_execute(statement).await {
            Ok(()) => {
                self.release(admin);
                Ok(())
            }
            // The session is dropped, not pooled: it may be mid-transaction.
            Err(e) => Err(self.classify(&e, what)),
        }
    }

    /// Whether the admin role may change other roles' passwords (superuser or
    /// CREATEROLE); an error saying what to grant when it may not.
    pub async fn check_admin_may_change_passwords(&self) -> Result<(), ProviderError> {
        let admin = self.admin().await?;
        let may = admin
            .query_one(
                "SELECT rolsuper OR rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| self.classify(&e, "reading the admin role"))?;
        self.release(admin);
        if !may.get::<_, bool>(0) {
            return Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: the admin role `{}` may not change passwords; grant it CREATEROLE",
                self.cfg.address(),
                self.cfg.admin_user
            )));
        }
        Ok(())
    }

    /// Ends every backend of `roles` but this admin session's: PostgreSQL 14 and
    /// later wait up to `TERMINATE_WAIT_MS` for each to exit, and one still there
    /// after that is a (transient) error, so what is counted is confirmed gone.
    /// Needs superuser or membership in pg_signal_backend (and superuser for a
    /// superuser role's backends).
    pub async fn terminate_backends(&self, roles: &[&str]) -> Result<u64, ProviderError> {
        let admin = self.admin().await?;
        let what = "ending sessions (pg_terminate_backend)";
        let version: i32 = admin
            .query_one(
                "SELECT pg_catalog.current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|e| self.classify(&e, what))?
            .get(0);
        let statement = if version >= 140000 {
            format!(
                "SELECT pid, pg_catalog.pg_terminate_backend(pid, {TERMINATE_WAIT_MS}) FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1) AND pid <> pg_catalog.pg_backend_pid()"
            )
        } else {
            "SELECT pid, pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = ANY($1) AND pid <> pg_catalog.pg_backend_pid()".to_owned()
        };
        let roles: Vec<&str> = roles.to_vec();
        let rows = match admin.query(&statement, &[&roles]).await {
            Ok(rows) => rows,
            Err(e) if sqlstate(&e).as_deref() == Some("42501") => {
                return Err(ProviderError::Fatal(format!(
                    "PostgreSQL at {}: {what}: the admin role `{}` may not end these sessions; GRANT pg_signal_backend TO {} (a superuser role's sessions need a superuser admin) (SQLSTATE 42501)",
                    self.cfg.address(),
                    self.cfg.admin_user,
                    postgres_protocol::escape::escape_identifier(&self.cfg.admin_user)
                )));
            }
            Err(e) => return Err(self.classify(&e, what)),
        };
        let ended = rows.iter().filter(|r| r.get::<_, bool>(1)).count() as u64;
        // `false`: gone already, or (14+) still exiting after the wait. Which one
        // the server's own view says.
        let unsure: Vec<i32> = rows
            .iter()
            .filter(|r| !r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        if !unsure.is_empty() {
            let left: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1)",
                    &[&unsure],
                )
                .await
                .map_err(|e| self.classify(&e, what))?
                .get(0);
            if left > 0 {
                return Err(ProviderError::Transient(format!(
                    "PostgreSQL at {}: {what}: {left} session(s) had not exited yet",
                    self.cfg.address()
                )));
            }
        }
        self.release(admin);
        Ok(ended)
    }

    /// Whether the admin role may end `role`'s sessions: superuser, or (for a role
    /// that is not a superuser) privileges of pg_signal_backend.
    pub async fn check_admin_may_end_sessions(&self, role: &str) -> Result<String, ProviderError> {
        let admin = self.admin().await?;
        let row = admin
            .query_opt(
                "SELECT a.rolsuper, pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE'), t.rolsuper FROM pg_catalog.pg_roles a, pg_catalog.pg_roles t WHERE a.rolname = current_user AND t.rolname = $1",
                &[&role],
            )
            .await
            .map_err(|e| self.classify(&e, "reading the admin role"))?;
        self.release(admin);
        let Some(row) = row else {
            return Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: the role `{role}` does not exist",
                self.cfg.address()
            )));
        };
        let (admin_super, signal, target_super): (bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2));
        let user = &self.cfg.admin_user;
        match (admin_super, signal, target_super) {
            (true, _, _) => Ok(format!(
                "the admin role `{user}` is a superuser: it may end `{role}`'s sessions"
            )),
            (false, _, true) => Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: `{role}` is a superuser, and only a superuser admin may end its sessions in breach mode; use a superuser admin or set `end_sessions: false` on the instance",
                self.cfg.address()
            ))),
            (false, true, false) => Ok(format!(
                "the admin role `{user}` has pg_signal_backend: it may end `{role}`'s sessions"
            )),
            (false, false, false) => Err(ProviderError::Fatal(format!(
                "PostgreSQL at {}: the admin role `{user}` may not end other roles' sessions, which breach mode does; GRANT pg_signal_backend TO {}, or set `end_sessions: false` on the instance",
                self.cfg.address(),
                postgres_protocol::escape::escape_identifier(user)
            ))),
        }
    }

    /// Whether a fresh login as `role` with `password` on `database` succeeds:
    /// `Ok(false)` when the server refused the password.
    pub async fn password_works(
        &self,
        role: &str,
        password: &Secret,
        database: &str,
    ) -> Result<bool, ProviderError> {
        match self.login(role, password, database).await {
            Ok(_session) => Ok(true),
            Err(LoginError::Rejected) => Ok(false),
            Err(LoginError::Other(e)) => Err(e),
        }
    }

    /// Maps a client error to a `ProviderError` that says what failed, where, and
    /// what to do, from the SQLSTATE code (never from the server's message).
    pub fn classify(&self, e: &tokio_postgres::Error, what: &str) -> ProviderError {
        let at = self.cfg.address();
        let Some(code) = sqlstate(e) else {
            // No answer from the server: refused, reset, timed out, TLS failure.
            // These messages come from the client library and hold no SQL.
            let mut cause = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                cause = format!("{cause}: {s}");
                source = s.source();
            }
            return ProviderError::Transient(format!(
                "cannot reach PostgreSQL at {at} ({what}): {cause}; check `host`, `port` and that the server is up"
            ));
        };
        let fatal = |m: &str| {
            ProviderError::Fatal(format!("PostgreSQL at {at}: {what}: {m} (SQLSTATE {code})"))
        };
        match code.as_str() {
            "28P01" => fatal("password authentication failed"),
            "28000" => fatal("login refused by pg_hba.conf or the role cannot log in"),
            "3D000" => fatal("the database does not exist; fix the `database` setting"),
            "42704" => fatal("the role does not exist; fix the credential's `account`"),
            "42501" => fatal(
                "permission denied; the admin role needs CREATEROLE (or superuser), and a login needs CONNECT on the database",
            ),
            c if c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
                || c == "55P03" =>
            {
                ProviderError::Transient(format!(
                    "PostgreSQL at {at}: {what}: server busy or restarting (SQLSTATE {code})"
                ))
            }
            _ => fatal("the server refused the statement"),
        }
    }
}

fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_owned())
}
