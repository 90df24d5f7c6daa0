//! Retention: unsaved results (image, row and prompt) are deleted once they expire; finished jobs
//! are deleted after the retention time (saved images keep their parameters on the image row);
//! expired sessions and old anonymous allowances go too.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::app::AppState;
use crate::clock::{now_ms, utc_day};

/// One purge pass. Returns the number of images deleted.
pub async fn purge(state: &AppState, now: i64) -> sqlx::Result<usize> {
    let expired: Vec<(String, String)> =
        sqlx::query_as("SELECT id, blob_key FROM images WHERE saved = 0 AND expires_at < $1 ORDER BY expires_at LIMIT 1000")
            .bind(now)
            .fetch_all(&state.db)
            .await?;
    let mut deleted = 0;
    for (id, blob_key) in expired {
        if let Err(e) = state.blobs.delete(&blob_key).await {
            tracing::warn!(image = %id, "deleting an expired image failed (retried next pass): {e}");
            continue;
        }
        sqlx::query("DELETE FROM images WHERE id = $1 AND saved = 0").bind(&id).execute(&state.db).await?;
        deleted += 1;
    }
    let cutoff = now - state.config.retention_secs as i64 * 1000;
    sqlx::query("DELETE FROM jobs WHERE status IN ('succeeded', 'failed', 'canceled') AND finished_at < $1")
        .bind(cutoff)
        .execute(&state.db)
        .await?;
    sqlx::query("DELETE FROM sessions WHERE expires_at < $1").bind(now).execute(&state.db).await?;
    // Yesterday's anonymous allowances mean nothing today; forget them.
    sqlx::query("DELETE FROM wallets WHERE day < $1 AND purchased = 0 AND wallet_key NOT LIKE 'acct:%'")
        .bind(utc_day(now))
        .execute(&state.db)
        .await?;
    sqlx::query("DELETE FROM address_counters WHERE day < $1").bind(utc_day(now)).execute(&state.db).await?;
    Ok(deleted)
}

pub async fn run(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_secs(state.config.purge_interval_secs);
    loop {
        match purge(&state, now_ms()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("purged {n} expired image(s)"),
            Err(e) => tracing::error!("purging expired results: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
