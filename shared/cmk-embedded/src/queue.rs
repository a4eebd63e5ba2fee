//! A durable at-least-once queue in the same SQLite database: a received message becomes
//! invisible for the visibility timeout and is delivered again unless acknowledged, so a worker
//! that dies mid-batch loses nothing. A message received too often goes to `dead_letters`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cmk_core::error::{QueueError, StoreError};
use cmk_core::ports::{Delivery, RewrapMessage, RewrapQueue};
use rusqlite::{params, TransactionBehavior};
use tokio::sync::Notify;

use crate::db::Database;
use crate::unavailable::unavailable;

#[derive(Clone, Debug)]
pub struct QueueConfig {
    pub visibility_timeout: Duration,
    /// Deliveries after which a message is moved to the dead-letter table.
    pub max_receives: u32,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(
                cmk_core::defaults::LOCAL_VISIBILITY_TIMEOUT_SECS,
            ),
            max_receives: 10,
        }
    }
}

#[derive(Debug)]
pub struct SqliteQueue {
    db: Arc<Database>,
    config: QueueConfig,
    /// Wakes local receivers when this process sends.
    arrived: Notify,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn queue_err(e: StoreError) -> QueueError {
    QueueError(e.to_string())
}

impl SqliteQueue {
    pub fn new(db: Arc<Database>, config: QueueConfig) -> Self {
        Self {
            db,
            config,
            arrived: Notify::new(),
        }
    }

    /// Messages waiting or in flight (for status and tests).
    pub async fn depth(&self) -> Result<u64, QueueError> {
        self.db
            .read(|conn| {
                conn.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get::<_, i64>(0))
                    .map(|n| n as u64)
                    .map_err(unavailable)
            })
            .await
            .map_err(queue_err)
    }

    /// Messages moved to the dead-letter table.
    pub async fn dead_letters(&self) -> Result<u64, QueueError> {
        self.db
            .read(|conn| {
                conn.query_row("SELECT COUNT(*) FROM dead_letters", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(unavailable)
            })
            .await
            .map_err(queue_err)
    }

    async fn try_receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let visibility = self.config.visibility_timeout.as_millis() as i64;
        let max_receives = self.config.max_receives as i64;
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(unavailable)?;
                let now = now_ms();
                let due: Vec<(i64, String, i64)> = tx
                    .prepare_cached(
                        "SELECT id, body, receive_count FROM queue WHERE visible_at <= ?1
                         ORDER BY visible_at, id LIMIT ?2",
                    )
                    .map_err(unavailable)?
                    .query_map(params![now, max as i64], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })
                    .map_err(unavailable)?
                    .collect::<Result<_, _>>()
                    .map_err(unavailable)?;
                let mut out = Vec::with_capacity(due.len());
                for (id, body, count) in due {
                    if count >= max_receives {
                        tracing::error!(
                            message_id = id,
                            receives = count,
                            "moving a message to the dead-letter table"
                        );
                        tx.execute(
                            "INSERT OR REPLACE INTO dead_letters (id, body, receive_count, dead_at)
                             VALUES (?1, ?2, ?3, ?4)",
                            params![id, body, count, now],
                        )
                        .map_err(unavailable)?;
                        tx.execute("DELETE FROM queue WHERE id = ?1", [id])
                            .map_err(unavailable)?;
                        continue;
                    }
                    let receipt = format!("{id}:{}", uuid::Uuid::new_v4().simple());
                    tx.prepare_cached(
                        "UPDATE queue SET visible_at = ?2, receive_count = receive_count + 1,
                             receipt = ?3 WHERE id = ?1",
                    )
                    .map_err(unavailable)?
                    .execute(params![id, now + visibility, receipt])
                    .map_err(unavailable)?;
                    out.push(Delivery {
                        receipt,
                        body,
                        receive_count: (count + 1) as u32,
                    });
                }
                tx.commit().map_err(unavailable)?;
                Ok(out)
            })
            .await
            .map_err(queue_err)
    }
}

/// How often an idle receiver looks again (messages may come from another process).
const IDLE_POLL: Duration = Duration::from_millis(100);

#[async_trait]
impl RewrapQueue for SqliteQueue {
    async fn send(&self, messages: &[RewrapMessage]) -> Result<(), QueueError> {
        let bodies = messages
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| QueueError(e.to_string()))?;
        self.db
            .write(move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(unavailable)?;
                {
                    let mut stmt = tx
                        .prepare_cached("INSERT INTO queue (body, visible_at) VALUES (?1, ?2)")
                        .map_err(unavailable)?;
                    let now = now_ms();
                    for body in &bodies {
                        stmt.execute(params![body, now]).map_err(unavailable)?;
                    }
                }
                tx.commit().map_err(unavailable)
            })
            .await
            .map_err(queue_err)?;
        self.arrived.notify_waiters();
        Ok(())
    }

    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = Instant::now() + wait;
        loop {
            let notified = self.arrived.notified();
            let got = self.try_receive(max.max(1)).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if !got.is_empty() || left.is_zero() {
                return Ok(got);
            }
            let _ = tokio::time::timeout(left.min(IDLE_POLL), notified).await;
        }
    }

    async fn ack(&self, receipt: &str) -> Result<(), QueueError> {
        let receipt = receipt.to_owned();
        let id: i64 = receipt
            .split(':')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| QueueError("malformed receipt".into()))?;
        self.db
            .write(move |conn| {
                // Only this delivery's receipt: a late ack of an earlier delivery is ignored.
                conn.execute(
                    "DELETE FROM queue WHERE id = ?1 AND receipt = ?2",
                    params![id, receipt],
                )
                .map_err(unavailable)?;
                Ok(())
            })
            .await
            .map_err(queue_err)
    }
}
