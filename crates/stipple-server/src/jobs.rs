//! The job queue, a table with leases. Accepting a job reserves its tokens in the same
//! transaction; a worker claims the oldest queued job with a lease (owner + expiry), renews it
//! by heartbeats, and finishes it only while it still holds the lease. Expired leases (a worker
//! died) are re-queued, or failed and released after `max_attempts`. The claim is one
//! `UPDATE ... WHERE status = 'queued' RETURNING`, so many workers (processes, machines) can
//! share the table; on PostgreSQL the inner select can add `FOR UPDATE SKIP LOCKED`.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::crypto::random_token;
use crate::db::Db;
use crate::error::{ApiError, ApiResult};
use crate::params::GenerationParams;
use crate::quota::{self, Payer, Reservation};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }
    fn parse(s: &str) -> JobStatus {
        match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "succeeded" => JobStatus::Succeeded,
            "canceled" => JobStatus::Canceled,
            _ => JobStatus::Failed,
        }
    }
    pub fn is_terminal(self) -> bool {
        matches!(self, JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled)
    }
    pub const ALL: [JobStatus; 5] = [JobStatus::Queued, JobStatus::Running, JobStatus::Succeeded, JobStatus::Failed, JobStatus::Canceled];
}

/// A job as stored.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub owner: String,
    pub status: JobStatus,
    pub params: GenerationParams,
    pub cost: i64,
    pub step: i64,
    pub steps: i64,
    pub error: Option<String>,
    pub image_id: Option<String>,
    pub attempts: i64,
    pub cancel_requested: bool,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    wallet_primary: String,
    wallet_secondary: Option<String>,
    reservation: Reservation,
    settled: bool,
}

const COLUMNS: &str = "id, owner, status, params, cost, step, steps, error, image_id, attempts, cancel_requested, created_at, \
                       finished_at, wallet_primary, wallet_secondary, reserve_day, daily_part, purchased_part, settled";

fn job_from_row(row: &AnyRow) -> sqlx::Result<Job> {
    let params: String = row.try_get("params")?;
    let params = serde_json::from_str(&params).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    Ok(Job {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        status: JobStatus::parse(&row.try_get::<String, _>("status")?),
        params,
        cost: row.try_get("cost")?,
        step: row.try_get("step")?,
        steps: row.try_get("steps")?,
        error: row.try_get("error")?,
        image_id: row.try_get("image_id")?,
        attempts: row.try_get("attempts")?,
        cancel_requested: row.try_get::<i64, _>("cancel_requested")? != 0,
        created_at: row.try_get("created_at")?,
        finished_at: row.try_get("finished_at")?,
        wallet_primary: row.try_get("wallet_primary")?,
        wallet_secondary: row.try_get("wallet_secondary")?,
        reservation: Reservation {
            day: row.try_get("reserve_day")?,
            daily_part: row.try_get("daily_part")?,
            purchased_part: row.try_get("purchased_part")?,
        },
        settled: row.try_get::<i64, _>("settled")? != 0,
    })
}

/// A job to queue.
pub struct NewJob {
    pub owner: String,
    pub idempotency_key: Option<String>,
    pub params: GenerationParams,
    pub cost: i64,
}

/// Queue jobs, reserving their tokens atomically (all or none). With an idempotency key, a job
/// the owner already queued under that key is returned instead (and nothing is charged).
pub async fn enqueue(db: &Db, payer: &Payer, new: Vec<NewJob>, now: i64) -> ApiResult<Vec<Job>> {
    if let Some(existing) = find_idempotent(db, &new).await? {
        return Ok(existing);
    }
    let mut tx = db.begin().await?;
    let mut ids = Vec::with_capacity(new.len());
    for (i, job) in new.iter().enumerate() {
        let r = quota::reserve(&mut tx, payer, job.cost, now).await?;
        let id = format!("gen_{}", random_token(16));
        let params = serde_json::to_string(&job.params).map_err(|e| ApiError::internal("storing a job", e))?;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, owner, idempotency_key, status, params, cost, wallet_primary, wallet_secondary, reserve_day, \
             daily_part, purchased_part, steps, created_at) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&id)
        .bind(&job.owner)
        .bind(job.idempotency_key.as_ref().map(|k| if new.len() > 1 { format!("{k}#{i}") } else { k.clone() }))
        .bind(params)
        .bind(job.cost)
        .bind(&payer.primary)
        .bind(payer.secondary.as_deref())
        .bind(r.day)
        .bind(r.daily_part)
        .bind(r.purchased_part)
        .bind(job.params.steps as i64)
        // Later jobs of one request sort after earlier ones (a millisecond apart).
        .bind(now + i as i64)
        .execute(&mut *tx)
        .await;
        if let Err(e) = inserted {
            drop(tx); // rolls the reservations back
            // A concurrent retry with the same key got there first: answer with its jobs.
            if let Some(existing) = find_idempotent(db, &new).await? {
                return Ok(existing);
            }
            return Err(e.into());
        }
        ids.push(id);
    }
    tx.commit().await?;
    let mut jobs = Vec::with_capacity(ids.len());
    for id in ids {
        jobs.push(get(db, &id).await?.ok_or_else(|| ApiError::internal("queueing a job", "job vanished"))?);
    }
    Ok(jobs)
}

async fn find_idempotent(db: &Db, new: &[NewJob]) -> ApiResult<Option<Vec<Job>>> {
    let Some(first) = new.first() else { return Ok(Some(Vec::new())) };
    let Some(key) = &first.idempotency_key else { return Ok(None) };
    let mut found = Vec::new();
    for i in 0..new.len() {
        let k = if new.len() > 1 { format!("{key}#{i}") } else { key.clone() };
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE owner = $1 AND idempotency_key = $2"))
            .bind(&first.owner)
            .bind(k)
            .fetch_optional(db)
            .await?;
        match row {
            Some(r) => found.push(job_from_row(&r)?),
            None => return Ok(None),
        }
    }
    Ok(Some(found))
}

pub async fn get(db: &Db, id: &str) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1")).bind(id).fetch_optional(db).await?;
    row.as_ref().map(job_from_row).transpose()
}

/// A job of `owner`, or 404 (another owner's job is indistinguishable from a missing one).
pub async fn get_owned(db: &Db, id: &str, owner: &str) -> ApiResult<Job> {
    match get(db, id).await? {
        Some(j) if j.owner == owner => Ok(j),
        _ => Err(ApiError::not_found("generation")),
    }
}

/// Number of queued jobs ahead of this one.
pub async fn queue_position(db: &Db, job: &Job) -> sqlx::Result<i64> {
    if job.status != JobStatus::Queued {
        return Ok(0);
    }
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND (created_at < $1 OR (created_at = $1 AND id < $2))")
        .bind(job.created_at)
        .bind(&job.id)
        .fetch_one(db)
        .await?;
    Ok(n)
}

/// Claim the oldest queued job for `worker` until `lease_until`.
pub async fn claim(db: &Db, worker: &str, now: i64, lease_until: i64) -> sqlx::Result<Option<Job>> {
    let row = sqlx::query(&format!(
        "UPDATE jobs SET status = 'running', lease_owner = $1, lease_expires_at = $2, attempts = attempts + 1, \
           started_at = COALESCE(started_at, $3) \
         WHERE id = (SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at, id LIMIT 1) AND status = 'queued' \
         RETURNING {COLUMNS}"
    ))
    .bind(worker)
    .bind(lease_until)
    .bind(now)
    .fetch_optional(db)
    .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Renew a lease and record progress. `None`: the lease is lost (stop working on the job);
/// `Some(true)`: cancellation was requested.
pub async fn heartbeat(db: &Db, id: &str, worker: &str, step: i64, lease_until: i64) -> sqlx::Result<Option<bool>> {
    let row: Option<(i64,)> = sqlx::query_as(
        "UPDATE jobs SET lease_expires_at = $3, step = $4 WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
         RETURNING cancel_requested",
    )
    .bind(id)
    .bind(worker)
    .bind(lease_until)
    .bind(step)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(c,)| c != 0))
}

/// The stored image of a successful job, written in the transaction that finishes it.
pub struct NewImage {
    pub id: String,
    pub blob_key: String,
    pub width: i64,
    pub height: i64,
    pub expires_at: i64,
}

/// Finish a job with its image and charge it. `false`: the lease was lost meanwhile.
pub async fn succeed(db: &Db, job: &Job, worker: &str, image: &NewImage, now: i64) -> sqlx::Result<bool> {
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "UPDATE jobs SET status = 'succeeded', image_id = $3, step = steps, finished_at = $4, settled = 1, lease_owner = NULL, \
         lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'running'",
    )
    .bind(&job.id)
    .bind(worker)
    .bind(&image.id)
    .bind(now)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO images (id, job_id, owner, blob_key, width, height, params, saved, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0, $8, $9)",
    )
    .bind(&image.id)
    .bind(&job.id)
    .bind(&job.owner)
    .bind(&image.blob_key)
    .bind(image.width)
    .bind(image.height)
    .bind(serde_json::to_string(&job.params).unwrap_or_default())
    .bind(now)
    .bind(image.expires_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// End a job that a worker held: failed (tokens released), or canceled while running (charged
/// `charged` of its cost, the rest released).
#[allow(clippy::too_many_arguments)]
pub async fn finish_unsuccessful(
    db: &Db,
    job: &Job,
    worker: &str,
    status: JobStatus,
    error: &str,
    steps_done: usize,
    charged: i64,
    now: i64,
) -> sqlx::Result<bool> {
    let charged = if status == JobStatus::Failed { 0 } else { charged.clamp(0, job.cost) };
    let mut tx = db.begin().await?;
    let updated = sqlx::query(
        "UPDATE jobs SET status = $3, error = $4, finished_at = $5, cost = $6, step = $7, settled = 1, lease_owner = NULL, \
         lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND status = 'running' AND settled = 0",
    )
    .bind(&job.id)
    .bind(worker)
    .bind(status.as_str())
    .bind(error)
    .bind(now)
    .bind(if status == JobStatus::Failed { job.cost } else { charged })
    .bind(steps_done as i64)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if updated == 0 {
        return Ok(false);
    }
    quota::refund(&mut tx, &job.wallet_primary, job.wallet_secondary.as_deref(), job.reservation, job.cost - charged).await?;
    tx.commit().await?;
    Ok(true)
}

/// Cancel a job: a queued job ends now with its tokens released; a running one is asked to stop
/// (its worker sees the flag at the next step). Returns the job afterwards.
pub async fn cancel(db: &Db, id: &str, owner: &str, now: i64) -> ApiResult<Job> {
    let job = get_owned(db, id, owner).await?;
    match job.status {
        JobStatus::Queued => {
            let mut tx = db.begin().await?;
            let updated = sqlx::query(
                "UPDATE jobs SET status = 'canceled', finished_at = $2, settled = 1 WHERE id = $1 AND status = 'queued' AND settled = 0",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated == 1 {
                quota::release(&mut tx, &job.wallet_primary, job.wallet_secondary.as_deref(), job.reservation).await?;
                tx.commit().await?;
            } else {
                drop(tx);
                // Claimed meanwhile: ask the worker instead.
                request_stop(db, id).await?;
            }
        }
        JobStatus::Running => request_stop(db, id).await?,
        _ => {}
    }
    Ok(get(db, id).await?.unwrap_or(job))
}

async fn request_stop(db: &Db, id: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = $1 AND status = 'running'").bind(id).execute(db).await?;
    Ok(())
}

/// Hand back jobs whose lease expired: re-queue them, or end them (failed, tokens released)
/// after `max_attempts` tries, or canceled when cancellation had been asked. Returns how many.
pub async fn reap_expired(db: &Db, now: i64, max_attempts: i64) -> sqlx::Result<usize> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM jobs WHERE status = 'running' AND lease_expires_at < $1"))
        .bind(now)
        .fetch_all(db)
        .await?;
    let mut handled = 0;
    for row in rows {
        let job = job_from_row(&row)?;
        let mut tx = db.begin().await?;
        let give_up = job.cancel_requested || job.attempts >= max_attempts;
        let updated = if give_up {
            let (status, error) = if job.cancel_requested {
                ("canceled", "canceled".to_string())
            } else {
                ("failed", format!("the worker stopped responding {} times; try again", job.attempts))
            };
            sqlx::query(
                "UPDATE jobs SET status = $3, error = $4, finished_at = $2, settled = 1, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND status = 'running' AND lease_expires_at < $2 AND settled = 0",
            )
            .bind(&job.id)
            .bind(now)
            .bind(status)
            .bind(error)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            sqlx::query(
                "UPDATE jobs SET status = 'queued', step = 0, lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND status = 'running' AND lease_expires_at < $2",
            )
            .bind(&job.id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        };
        if updated == 1 {
            if give_up && !job.settled {
                quota::release(&mut tx, &job.wallet_primary, job.wallet_secondary.as_deref(), job.reservation).await?;
            }
            handled += 1;
        }
        tx.commit().await?;
    }
    Ok(handled)
}

/// Put a worker's running jobs straight back in the queue (graceful shutdown).
pub async fn requeue_worker(db: &Db, worker: &str) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE jobs SET status = 'queued', step = 0, attempts = attempts - 1, lease_owner = NULL, lease_expires_at = NULL \
         WHERE lease_owner = $1 AND status = 'running'",
    )
    .bind(worker)
    .execute(db)
    .await?
    .rows_affected())
}

/// Job counts by status, for metrics.
pub async fn counts(db: &Db) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetch_all(db).await
}
