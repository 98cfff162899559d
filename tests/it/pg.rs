//! A database of its own on the PostgreSQL of `scripts/services`, for each test of
//! the shared journal: created at the start, dropped (connections and all) when
//! the test ends, even when it fails.

use crate::support::services;
use rekey::journal::Journal;
use rekey::journal::postgres::{PgJournal, PgLocation};
use std::collections::HashMap;

pub struct TestDb {
    pub name: String,
    env: HashMap<String, String>,
}

/// Runs `f` with an admin connection to database `db` (a runtime of its own: the
/// tests calling this are synchronous).
fn with_admin<T>(
    env: &HashMap<String, String>,
    db: &str,
    f: impl AsyncFnOnce(&tokio_postgres::Client) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&env["REKEY_PG_HOST"])
            .port(env["REKEY_PG_PORT"].parse().unwrap())
            .user(&env["REKEY_PG_ADMIN_USER"])
            .password(env["REKEY_PG_ADMIN_PASSWORD"].as_bytes())
            .dbname(db);
        let (client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        f(&client).await
    })
}

impl TestDb {
    pub fn new() -> TestDb {
        let env = services();
        let name = format!("rekey_it_{}", hex::encode(rand::random::<[u8; 6]>()));
        with_admin(&env, "postgres", async |c| {
            c.batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .unwrap()
        });
        TestDb { name, env }
    }

    /// The journal URL (`--journal`), without the password.
    pub fn url(&self) -> String {
        format!(
            "postgres://{}@{}:{}/{}?sslmode=disable",
            self.env["REKEY_PG_ADMIN_USER"],
            self.env["REKEY_PG_HOST"],
            self.env["REKEY_PG_PORT"],
            self.name
        )
    }

    /// What `REKEY_JOURNAL_PASSWORD` must hold.
    pub fn password(&self) -> String {
        self.env["REKEY_PG_ADMIN_PASSWORD"].clone()
    }

    /// A new connection to this database's journal, in this process.
    pub fn journal(&self) -> Journal {
        let location = PgLocation::parse(&self.url()).unwrap();
        let password = rekey::secret::Secret::new(self.password());
        Journal::from(PgJournal::connect(&location, Some(&password)).unwrap())
    }

    /// Runs `sql` as the admin in this database; each row's columns as text.
    pub fn sql(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        with_admin(&self.env, &self.name, async |c| {
            c.simple_query(sql)
                .await
                .unwrap()
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).map(str::to_owned))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()
        })
    }

    /// The first column of the first row of `sql`, as text.
    pub fn value(&self, sql: &str) -> String {
        self.sql(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next().flatten())
            .unwrap_or_default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        with_admin(&self.env, "postgres", async |c| {
            let _ = c
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        });
    }
}
