//! A SQLite file shared by the async world: one writer connection and a few readers, each used
//! on the blocking pool so no query ever stalls the runtime.
//!
//! One writer serialises writes inside the process, so transactions never see `SQLITE_BUSY`
//! from each other; WAL lets the readers run beside it. Another process (`tarmac token create`)
//! is covered by the busy timeout.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

use crate::error::{Error, Result};

const READERS: usize = 4;

/// SQLite's errors, as the core sees them: a busy or locked database may succeed later.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        let retryable = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        Error::backend("SQLite", e, retryable)
    }
}

pub(crate) struct Db {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
}

fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // NORMAL in WAL mode is durable across process crashes; only an OS crash can lose the
    // last transactions, never corrupt the file. Reads of the database file go through a
    // memory map, not a system call each: the readers' page caches are reset by every write.
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;
         PRAGMA mmap_size = 268435456;",
    )?;
    Ok(conn)
}

impl Db {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub(crate) fn open(path: &Path) -> Result<Arc<Self>> {
        let mut writer = open_connection(path)?;
        super::schema::migrate(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| open_connection(path).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
        }))
    }

    /// Runs `f` on the writer connection.
    pub(crate) async fn write<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves no open transaction (it is rolled back on
            // drop), so the connection is still sound.
            let mut conn = db.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::internal(format!("database task failed: {e}")))?
    }

    /// Runs `f` on one of the reader connections.
    pub(crate) async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let db = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let i = db.next_reader.fetch_add(1, Ordering::Relaxed) % db.readers.len();
            let conn = db.readers[i].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| Error::internal(format!("database task failed: {e}")))?
    }
}
