//! Token balances. Every payer has a daily allowance that resets at 00:00 UTC, and accounts also
//! have a purchased balance that never resets (spent only once the day's allowance is used up).
//!
//! Anonymous visitors pay from two wallets at once: their signed cookie's and their address's,
//! and may spend only what both have left, so clearing cookies does not mint a new allowance.
//!
//! Tokens are reserved inside the transaction that queues a job: the first statement on each
//! wallet is a write, which takes the write lock (SQLite) or row lock (PostgreSQL) before
//! anything is read, so concurrent reservations serialise and can never overspend.

use serde::Serialize;

use crate::clock::{rfc3339, utc_day, DAY_MS};
use crate::db::{Db, Tx};
use crate::error::{ApiError, ApiResult};

/// Who pays for a job.
#[derive(Debug, Clone)]
pub struct Payer {
    pub primary: String,
    /// The address wallet of an anonymous visitor.
    pub secondary: Option<String>,
    pub daily_limit: i64,
}

/// What a job holds until it is charged or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub day: i64,
    pub daily_part: i64,
    pub purchased_part: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Balance {
    pub daily_limit: i64,
    pub used_today: i64,
    pub remaining: i64,
    pub purchased: i64,
    pub resets_at: String,
}

struct WalletRow {
    used_today: i64,
    purchased: i64,
}

/// Lock (by writing first) and read a wallet, rolling its allowance over to `day`.
async fn lock_wallet(tx: &mut Tx<'_>, key: &str, day: i64) -> sqlx::Result<WalletRow> {
    sqlx::query("INSERT INTO wallets (wallet_key, day, used_today, purchased) VALUES ($1, $2, 0, 0) ON CONFLICT (wallet_key) DO NOTHING")
        .bind(key)
        .bind(day)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE wallets SET used_today = CASE WHEN day = $2 THEN used_today ELSE 0 END, day = $2 WHERE wallet_key = $1")
        .bind(key)
        .bind(day)
        .execute(&mut **tx)
        .await?;
    let (used_today, purchased): (i64, i64) = sqlx::query_as("SELECT used_today, purchased FROM wallets WHERE wallet_key = $1")
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
    Ok(WalletRow { used_today, purchased })
}

/// Reserve `cost` tokens, from today's allowance first and then the purchased balance.
pub async fn reserve(tx: &mut Tx<'_>, payer: &Payer, cost: i64, now: i64) -> ApiResult<Reservation> {
    let day = utc_day(now);
    let primary = lock_wallet(tx, &payer.primary, day).await?;
    let mut daily_left = (payer.daily_limit - primary.used_today).max(0);
    if let Some(second) = &payer.secondary {
        let w = lock_wallet(tx, second, day).await?;
        daily_left = daily_left.min((payer.daily_limit - w.used_today).max(0));
    }
    let daily_part = cost.min(daily_left);
    let purchased_part = cost - daily_part;
    if purchased_part > primary.purchased {
        return Err(ApiError::quota_exhausted(format!(
            "not enough tokens: this costs {cost}, {} left today{}; the allowance resets at {}",
            daily_left,
            if primary.purchased > 0 { format!(" and {} purchased", primary.purchased) } else { String::new() },
            rfc3339((day + 1) * DAY_MS)
        )));
    }
    let r = Reservation { day, daily_part, purchased_part };
    adjust(tx, &payer.primary, day, daily_part, -purchased_part).await?;
    if let Some(second) = &payer.secondary {
        adjust(tx, second, day, daily_part, 0).await?;
    }
    Ok(r)
}

/// Give a reservation back (the job failed or was cancelled before it started). Today's part
/// returns only if the allowance has not reset since.
pub async fn release(tx: &mut Tx<'_>, primary: &str, secondary: Option<&str>, r: Reservation) -> sqlx::Result<()> {
    adjust(tx, primary, r.day, -r.daily_part, r.purchased_part).await?;
    if let Some(second) = secondary {
        adjust(tx, second, r.day, -r.daily_part, 0).await?;
    }
    Ok(())
}

/// Give back `amount` of a reservation (a run cancelled part way pays only for what it did):
/// purchased tokens first, as they are worth money.
pub async fn refund(tx: &mut Tx<'_>, primary: &str, secondary: Option<&str>, r: Reservation, amount: i64) -> sqlx::Result<()> {
    let amount = amount.clamp(0, r.daily_part + r.purchased_part);
    let from_purchased = amount.min(r.purchased_part);
    let part = Reservation { day: r.day, daily_part: amount - from_purchased, purchased_part: from_purchased };
    release(tx, primary, secondary, part).await
}

/// Add to a wallet's day usage (when the wallet is still on `day`) and its purchased balance.
async fn adjust(tx: &mut Tx<'_>, key: &str, day: i64, used_delta: i64, purchased_delta: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE wallets SET \
           used_today = CASE WHEN day = $2 THEN (CASE WHEN used_today + $3 < 0 THEN 0 ELSE used_today + $3 END) ELSE used_today END, \
           purchased = purchased + $4 \
         WHERE wallet_key = $1",
    )
    .bind(key)
    .bind(day)
    .bind(used_delta)
    .bind(purchased_delta)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Add purchased tokens to a wallet.
pub async fn credit(tx: &mut Tx<'_>, key: &str, tokens: i64, now: i64) -> sqlx::Result<()> {
    lock_wallet(tx, key, utc_day(now)).await?;
    adjust(tx, key, utc_day(now), 0, tokens).await
}

/// A payer's balance now (reserved tokens count as used).
pub async fn balance(db: &Db, payer: &Payer, now: i64) -> sqlx::Result<Balance> {
    let day = utc_day(now);
    let mut used = 0;
    let mut purchased = 0;
    let keys = std::iter::once(payer.primary.as_str()).chain(payer.secondary.as_deref());
    for (i, key) in keys.enumerate() {
        let row: Option<(i64, i64, i64)> = sqlx::query_as("SELECT day, used_today, purchased FROM wallets WHERE wallet_key = $1")
            .bind(key)
            .fetch_optional(db)
            .await?;
        if let Some((d, u, p)) = row {
            if d == day {
                used = used.max(u);
            }
            if i == 0 {
                purchased = p;
            }
        }
    }
    Ok(Balance {
        daily_limit: payer.daily_limit,
        used_today: used,
        remaining: (payer.daily_limit - used).max(0),
        purchased,
        resets_at: rfc3339((day + 1) * DAY_MS),
    })
}
