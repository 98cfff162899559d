//! The Redis wire side: one shared admin connection (multiplexed, reopened when it
//! breaks), fresh connections for verify, and error mapping from Redis error codes.

use super::config::RedisConfig;
use crate::provider::ProviderError;
use crate::secret::Secret;
use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisConnectionInfo, Value};

pub struct RedisClient {
    pub cfg: RedisConfig,
    admin: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

pub enum AuthError {
    /// The server answered WRONGPASS: no such user, or not this password.
    Rejected,
    Other(ProviderError),
}

impl RedisClient {
    pub fn new(cfg: RedisConfig) -> RedisClient {
        RedisClient {
            cfg,
            admin: tokio::sync::Mutex::new(None),
        }
    }

    /// A connection that has authenticated as nobody yet: AUTH is sent by hand so
    /// a refused password is told apart from everything else.
    async fn connect(&self) -> Result<MultiplexedConnection, ProviderError> {
        let info = (self.cfg.host.as_str(), self.cfg.port)
            .into_connection_info()
            .map_err(|e| self.classify(&e, "connecting"))?
            .set_redis_settings(RedisConnectionInfo::default().set_skip_set_lib_name());
        let client = Client::open(info).map_err(|e| self.classify(&e, "connecting"))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.cfg.timeout))
            .set_response_timeout(Some(self.cfg.timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.classify(&e, "connecting"))
    }

    /// `AUTH user password` on `conn`.
    async fn auth(
        &self,
        conn: &mut MultiplexedConnection,
        user: Option<&str>,
        password: &Secret,
    ) -> Result<(), AuthError> {
        let mut cmd = ::redis::cmd("AUTH");
        if let Some(u) = user {
            cmd.arg(u);
        }
        cmd.arg(password.expose());
        match cmd.query_async::<Value>(conn).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("WRONGPASS") => Err(AuthError::Rejected),
            Err(e) => Err(AuthError::Other(self.classify(&e, "AUTH"))),
        }
    }

    /// Authenticates as `user` with `password` on a fresh connection.
    pub async fn login(&self, user: &str, password: &Secret) -> Result<(), AuthError> {
        let mut conn = self.connect().await.map_err(AuthError::Other)?;
        self.auth(&mut conn, Some(user), password).await
    }

    /// The admin connection (opened and authenticated on first use).
    pub async fn admin(&self) -> Result<MultiplexedConnection, ProviderError> {
        let mut slot = self.admin.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut conn = self.connect().await?;
        if let Some(password) = &self.cfg.admin_password {
            self.auth(&mut conn, self.cfg.admin_user.as_deref(), password)
                .await
                .map_err(|e| match e {
                    AuthError::Rejected => ProviderError::Fatal(format!(
                        "Redis at {} rejected the admin login of `{}` (WRONGPASS); fix the admin credential from {}",
                        self.cfg.address(),
                        self.cfg.admin_user.as_deref().unwrap_or("default"),
                        self.cfg.admin_origin
                    )),
                    AuthError::Other(e) => e,
                })?;
        }
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs an admin command; a broken connection is dropped so the next call
    /// reconnects.
    pub async fn query(&self, cmd: &::redis::Cmd, what: &str) -> Result<Value, ProviderError> {
        let mut conn = self.admin().await?;
        match cmd.query_async::<Value>(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
                    *self.admin.lock().await = None;
                }
                Err(self.classify(&e, what))
            }
        }
    }

    /// What failed, where, and what to do; from the error code, never from a
    /// command echo.
    pub fn classify(&self, e: &::redis::RedisError, what: &str) -> ProviderError {
        let at = self.cfg.address();
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_refusal()
            || e.is_connection_dropped()
        {
            return ProviderError::Transient(format!(
                "cannot reach Redis at {at} ({what}); check `host`, `port` and that the server is up"
            ));
        }
        match e.code() {
            Some("NOAUTH") => ProviderError::Fatal(format!(
                "Redis at {at}: {what}: the server requires a login; give the instance an admin credential (`username`, `password`)"
            )),
            Some("NOPERM") => ProviderError::Fatal(format!(
                "Redis at {at}: {what}: the admin user lacks permission; it needs the `acl` commands (+acl) and, to persist, `config`"
            )),
            Some("WRONGPASS") => {
                ProviderError::Fatal(format!("Redis at {at}: {what}: login refused"))
            }
            Some("LOADING") | Some("BUSY") | Some("TRYAGAIN") | Some("MASTERDOWN") => {
                ProviderError::Transient(format!(
                    "Redis at {at}: {what}: server busy ({})",
                    e.code().unwrap_or("")
                ))
            }
            Some(code) => {
                ProviderError::Fatal(format!("Redis at {at}: {what}: the server answered {code}"))
            }
            None => ProviderError::Fatal(format!("Redis at {at}: {what}: unexpected answer")),
        }
    }
}
