//! The `Store` handle: picks the backend from a URL, opens and tunes the pool, and holds the
//! few places where SQL must differ between SQLite and PostgreSQL.

use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Executor, Transaction};

use crate::sql::Args;
use crate::totals::ListTotals;
use crate::turns::{Priority, Turn, WriteTurns};
use crate::{migrate, Result, StoreError};

/// Connections for reads; WAL lets them run beside the one writer.
const SQLITE_MAX_CONNECTIONS: u32 = 8;
const POSTGRES_MAX_CONNECTIONS: u32 = 16;
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5_000;

/// A handle on the database; cheap to clone (the pool is shared).
#[derive(Clone)]
pub struct Store {
    /// Reads (and, on PostgreSQL, writes too).
    pub(crate) pool: AnyPool,
    /// Every write. On SQLite one connection, used in turns (see `turns`); on PostgreSQL the
    /// same pool as reads.
    pub(crate) writer: AnyPool,
    /// SQLite only: the line of writers.
    turns: Option<Arc<WriteTurns>>,
    pub(crate) backend: Backend,
    /// Totals of run listings (SQLite only; see `totals`).
    pub(crate) list_totals: Option<Arc<ListTotals>>,
    /// For `Debug` only: never holds a password.
    redacted_url: String,
    /// PostgreSQL only: the URL, password included, that `LISTEN` connections are opened
    /// with (see `watch_environments`). Never printed.
    pub(crate) listen_url: Option<Arc<str>>,
    /// This process's hold on runs and its event bus, shared by every clone.
    pub(crate) roles: Arc<ProcessRoles>,
}

/// What the process using the store is, as far as runs and events go.
#[derive(Debug, Default)]
pub(crate) struct ProcessRoles {
    /// The server id runs are held by: a run another server holds is not written by
    /// `save_run`. Unset (tools, tests): no fence.
    pub(crate) holder: std::sync::OnceLock<String>,
    /// Whether events wait to be published to a bus; without one they are recorded as
    /// never to be sent, so the outbox does not grow.
    pub(crate) outbox: std::sync::atomic::AtomicBool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

// === impl Store ===

impl Store {
    /// Runs this process executes are held as `holder`: from now on `save_run` writes a run
    /// only while no other server holds it. Set once.
    pub fn hold_runs_as(&self, holder: &str) {
        let _ = self.roles.holder.set(holder.to_string());
    }

    /// Events recorded from now on wait to be published to an event bus (`true`), or are
    /// recorded as never to be sent (`false`, the default).
    pub fn keep_outbox(&self, keep: bool) {
        self.roles
            .outbox
            .store(keep, std::sync::atomic::Ordering::Relaxed);
    }

    /// Opens `sqlite://path`, `sqlite:path` (created if missing) or `postgres://…`, and
    /// brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let redacted_url = redact_url(url);
        let backend =
            Backend::of_url(url).ok_or_else(|| StoreError::UnsupportedUrl(redacted_url.clone()))?;
        let store = match backend {
            Backend::Sqlite => Self::open_sqlite(url, redacted_url).await?,
            Backend::Postgres => Self::open_postgres(url, redacted_url).await?,
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// Opens (creating both if needed) `dir/fraisier.db`.
    pub async fn open_sqlite_in(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(sqlx::Error::Io(e)))?;
        let path = dir.join("fraisier.db");
        Self::open(&sqlite_url_for(&path)).await
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// The round trip of `SELECT 1`.
    pub async fn ping(&self) -> Result<Duration> {
        let started = Instant::now();
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(started.elapsed())
    }

    /// (connections in use, maximum connections).
    pub fn pool_size(&self) -> (u32, u32) {
        let idle = u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX);
        let in_use = self.pool.size().saturating_sub(idle);
        (in_use, self.pool.options().get_max_connections())
    }

    /// Waits for connections in use to be returned, then closes them all (on SQLite the last
    /// one to close folds the WAL back into the database file).
    pub async fn close(&self) {
        self.pool.close().await;
        self.writer.close().await;
    }

    /// The right to use `writer` (SQLite); held until the write is done.
    pub(crate) async fn turn(&self, priority: Priority) -> Option<Turn> {
        match &self.turns {
            Some(turns) => Some(turns.take(priority).await),
            None => None,
        }
    }

    /// A transaction for the engine's background writes.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx> {
        self.begin_write_as(Priority::Background).await
    }

    /// A transaction that will write, in its turn. On SQLite it takes the write lock up
    /// front: a deferred transaction that reads and then writes can fail with `SQLITE_BUSY`
    /// at once, without waiting for the busy timeout, when another process wrote in between.
    pub(crate) async fn begin_write_as(&self, priority: Priority) -> Result<WriteTx> {
        let turn = self.turn(priority).await;
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        };
        Ok(WriteTx { tx, _turn: turn })
    }

    /// After a committed write to `runs`: remembered listing totals are stale.
    pub(crate) fn runs_changed(&self) {
        if let Some(totals) = &self.list_totals {
            totals.invalidate();
        }
    }

    async fn open_sqlite(url: &str, redacted_url: String) -> Result<Store> {
        let options = AnyConnectOptions::from_str(&sqlite_url_creating(url))?;
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        if in_memory {
            // The Any driver re-parses the url for every connection, and each parse of
            // `:memory:` names a new database: one connection, kept for the pool's life,
            // reads and writes alike.
            let pool = sqlite_pool(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await?;
            return Ok(Store {
                writer: pool.clone(),
                pool,
                backend: Backend::Sqlite,
                turns: Some(Arc::default()),
                list_totals: Some(Arc::default()),
                redacted_url,
                listen_url: None,
                roles: Arc::default(),
            });
        }
        let writer = sqlite_pool(1).connect_with(options.clone()).await?;
        // WAL is a property of the file, so setting it once is enough for every connection;
        // it must be set before the readers open.
        writer.execute("PRAGMA journal_mode = WAL").await?;
        let pool = sqlite_pool(SQLITE_MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        Ok(Store {
            pool,
            writer,
            backend: Backend::Sqlite,
            turns: Some(Arc::default()),
            list_totals: Some(Arc::default()),
            redacted_url,
            listen_url: None,
            roles: Arc::default(),
        })
    }

    async fn open_postgres(url: &str, redacted_url: String) -> Result<Store> {
        let options = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .connect_with(options)
            .await?;
        Ok(Store {
            writer: pool.clone(),
            pool,
            backend: Backend::Postgres,
            turns: None,
            list_totals: None,
            redacted_url,
            listen_url: Some(url.into()),
            roles: Arc::default(),
        })
    }
}

/// A write transaction and the turn it holds; rolled back if dropped without `commit`.
pub(crate) struct WriteTx {
    // Dropped before the turn: the next writer never finds the transaction still open.
    tx: Transaction<'static, Any>,
    _turn: Option<Turn>,
}

impl WriteTx {
    pub(crate) async fn commit(self) -> Result<()> {
        self.tx.commit().await?;
        Ok(())
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .field("url", &self.redacted_url)
            .finish_non_exhaustive()
    }
}

/// Options shared by SQLite's read and write pools.
fn sqlite_pool(max_connections: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(max_connections)
        // A ping per checkout costs a round trip to the connection's worker thread; a broken
        // SQLite connection is reported by the statement itself.
        .test_before_acquire(false)
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("PRAGMA foreign_keys = ON").await?;
                conn.execute(format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}").as_str())
                    .await?;
                // Safe with WAL: a crash may lose the last commits, never corrupt the file.
                conn.execute("PRAGMA synchronous = NORMAL").await?;
                // Reads of a large run history come from mapped pages (shared by every
                // connection) instead of a pread copy per page: list p99 under concurrency.
                conn.execute("PRAGMA mmap_size = 268435456").await?;
                Ok(())
            })
        })
}

// === impl Backend ===

impl Backend {
    fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }

    /// Arguments for statements with thousands of placeholders. SQLite looks a named
    /// parameter (`$N`) up by a linear scan, which makes binding quadratic in their number;
    /// anonymous `?` ones bind in order at no cost.
    pub(crate) fn bulk_args(self) -> Args {
        match self {
            Backend::Sqlite => Args::anonymous(),
            Backend::Postgres => Args::default(),
        }
    }

    /// A run's id as shown (`dep_00042`), in SQL, so that free-text search can match it.
    pub(crate) fn run_id_expr(self) -> &'static str {
        match self {
            Backend::Sqlite => "printf('dep_%05d', id)",
            // lpad truncates to its length argument; never let it cut a longer id.
            Backend::Postgres => "('dep_' || lpad(id::text, greatest(5, length(id::text)), '0'))",
        }
    }
}

/// `mode=rwc` unless the url chose a mode: a fresh data dir must just work.
fn sqlite_url_creating(url: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    if query.split('&').any(|kv| kv.starts_with("mode=")) || url.contains(":memory:") {
        url.to_string()
    } else if query.is_empty() {
        format!("{}?mode=rwc", url.trim_end_matches('?'))
    } else {
        format!("{url}&mode=rwc")
    }
}

fn sqlite_url_for(path: &Path) -> String {
    // The url parser treats these as delimiters; sqlx percent-decodes the path afterwards.
    let mut escaped = String::new();
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => escaped.push_str("%25"),
            '?' => escaped.push_str("%3F"),
            '#' => escaped.push_str("%23"),
            c => escaped.push(c),
        }
    }
    format!("sqlite://{escaped}?mode=rwc")
}

/// `postgres://user:secret@host/db?password=x` → `postgres://user:***@host/db?password=***`.
pub(crate) fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_string(),
        },
        None => authority.to_string(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}://{authority}{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:p4ss@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=u&password=x"),
            "postgres://h/db?user=u&password=***"
        );
        assert_eq!(
            redact_url("postgres://u:a@b@h/db?password=x"),
            "postgres://u:***@h/db?password=***"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        assert_eq!(sqlite_url_creating("sqlite:x.db"), "sqlite:x.db?mode=rwc");
        assert_eq!(
            sqlite_url_creating("sqlite://x.db?mode=ro"),
            "sqlite://x.db?mode=ro"
        );
        assert_eq!(
            sqlite_url_creating("sqlite://x.db?cache=shared"),
            "sqlite://x.db?cache=shared&mode=rwc"
        );
        assert_eq!(
            sqlite_url_for(Path::new("/a b/c?#.db")),
            "sqlite:///a b/c%3F%23.db?mode=rwc"
        );
    }

    #[test]
    fn backend_from_url() {
        assert_eq!(Backend::of_url("sqlite::memory:"), Some(Backend::Sqlite));
        assert_eq!(
            Backend::of_url("postgresql://h/db"),
            Some(Backend::Postgres)
        );
        assert_eq!(Backend::of_url("mysql://h/db"), None);
    }
}
