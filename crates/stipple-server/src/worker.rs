//! Workers: claim a job from the queue, run the engine on a blocking thread with progress and
//! cancellation, heartbeat the lease meanwhile, store the image and finish the job. Also the
//! reaper that hands back jobs of dead workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stipple_core::image_io::GenerationParameters;
use stipple_core::pipeline::Flow;
use stipple_core::rng::TorchRng;
use tokio::sync::watch;

use crate::app::AppState;
use crate::clock::now_ms;
use crate::crypto::random_token;
use crate::events::JobEvent;
use crate::jobs::{self, Job, JobStatus, NewImage};
use crate::preview::latent_preview;
use crate::pricing::partial_cost;

/// How the engine run ended.
enum RunOutcome {
    Image { png: Vec<u8>, width: usize, height: usize },
    Cancelled,
    Failed(String),
}

/// Claim and run jobs until `shutdown` turns true.
pub async fn run(state: Arc<AppState>, worker_id: String, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(worker = %worker_id, "worker started");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let now = now_ms();
        match jobs::claim(&state.db, &worker_id, now, now + state.lease_ms()).await {
            Ok(Some(job)) => run_job(&state, &worker_id, job, &shutdown).await,
            Ok(None) => {
                tokio::select! {
                    _ = state.queue_signal.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                tracing::error!("claiming a job: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    tracing::info!(worker = %worker_id, "worker stopped");
}

async fn run_job(state: &Arc<AppState>, worker_id: &str, job: Job, shutdown: &watch::Receiver<bool>) {
    let cancel = state.hub.start_running(&job.id);
    let progress = Arc::new(AtomicUsize::new(0));
    let engine = {
        let state = state.clone();
        let job = job.clone();
        let cancel = cancel.clone();
        let progress = progress.clone();
        tokio::task::spawn_blocking(move || run_engine(&state, &job, &cancel, &progress))
    };
    tokio::pin!(engine);
    let beat = Duration::from_millis((state.lease_ms() as u64 / 3).clamp(50, 500));
    let mut lost_lease = false;
    let outcome = loop {
        tokio::select! {
            done = &mut engine => break done.unwrap_or_else(|e| RunOutcome::Failed(format!("the engine crashed: {e}"))),
            _ = tokio::time::sleep(beat) => {
                let step = progress.load(Ordering::Relaxed) as i64;
                match jobs::heartbeat(&state.db, &job.id, worker_id, step, now_ms() + state.lease_ms()).await {
                    Ok(Some(false)) => {}
                    Ok(Some(true)) => cancel.store(true, Ordering::Relaxed),
                    Ok(None) => {
                        // Another worker owns the job now (our lease expired): stop, write nothing.
                        lost_lease = true;
                        cancel.store(true, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(job = %job.id, "heartbeat failed: {e}"),
                }
            }
        }
    };
    if !lost_lease {
        let shutting_down = *shutdown.borrow();
        let done = progress.load(Ordering::Relaxed);
        finish(state, worker_id, &job, outcome, done, shutting_down).await;
    }
    state.hub.finish(&job.id);
}

/// Run the pipeline (on a blocking thread) and encode the PNG with its parameters.
fn run_engine(state: &AppState, job: &Job, cancel: &std::sync::atomic::AtomicBool, progress: &AtomicUsize) -> RunOutcome {
    let Some(model) = state.models.get(&job.params.model) else {
        return RunOutcome::Failed(format!("model `{}` is no longer served here", job.params.model));
    };
    let req = match job.params.engine_request() {
        Ok(r) => r,
        Err(e) => return RunOutcome::Failed(e.message),
    };
    let mut rng = TorchRng::new(job.params.seed);
    let preview_every = state.config.preview_every;
    let mut last = Instant::now();
    let result = model.loaded.pipeline.generate(&req, &mut rng, &mut |ev| {
        state.metrics.observe_step(last.elapsed().as_secs_f64());
        last = Instant::now();
        let step = ev.step + 1;
        progress.store(step, Ordering::Relaxed);
        let preview = (step % preview_every == 0 || step == ev.total)
            .then(|| latent_preview(ev.pred_x0.unwrap_or(ev.latents), ev.latent_shape))
            .flatten()
            .map(Arc::new);
        state.hub.publish(&job.id, JobEvent::Progress { step, steps: ev.total, preview });
        if cancel.load(Ordering::Relaxed) {
            Flow::Cancel
        } else {
            Flow::Continue
        }
    });
    let out = match result {
        Ok(out) => out,
        Err(stipple_core::Error::Cancelled) => return RunOutcome::Cancelled,
        Err(e) => return RunOutcome::Failed(e.to_string()),
    };
    let p = &job.params;
    let text = GenerationParameters {
        prompt: p.prompt.clone(),
        negative_prompt: p.negative_prompt.clone(),
        steps: p.steps,
        sampler: req.sampler.a1111_name().to_string(),
        cfg_scale: p.cfg_scale,
        seed: p.seed,
        width: p.width,
        height: p.height,
        model: p.model.clone(),
        denoising_strength: None,
    }
    .to_a1111();
    match out.image.to_png(&[("parameters", &text)]) {
        Ok(png) => RunOutcome::Image { png, width: out.image.width, height: out.image.height },
        Err(e) => RunOutcome::Failed(e.to_string()),
    }
}

async fn finish(state: &AppState, worker_id: &str, job: &Job, outcome: RunOutcome, steps_done: usize, shutting_down: bool) {
    let now = now_ms();
    let result = match outcome {
        RunOutcome::Image { png, width, height } => store_image(state, worker_id, job, png, width, height).await,
        RunOutcome::Cancelled if shutting_down => {
            // Not the user's doing: the next start runs it again.
            jobs::requeue_worker(&state.db, worker_id).await.map(|_| ())
        }
        RunOutcome::Cancelled => {
            let charged = partial_cost(job.cost, steps_done, job.steps as usize);
            jobs::finish_unsuccessful(&state.db, job, worker_id, JobStatus::Canceled, "canceled", steps_done, charged, now).await.map(|done| {
                if done {
                    state.metrics.job_finished(2);
                    state.metrics.tokens_spent(charged);
                }
            })
        }
        RunOutcome::Failed(message) => {
            tracing::warn!(job = %job.id, "generation failed: {message}");
            jobs::finish_unsuccessful(&state.db, job, worker_id, JobStatus::Failed, &message, steps_done, 0, now)
                .await
                .map(|done| if done { state.metrics.job_finished(1) })
        }
    };
    if let Err(e) = result {
        // The lease runs out and the reaper re-queues the job.
        tracing::error!(job = %job.id, "recording the job's end failed: {e}");
    }
}

async fn store_image(state: &AppState, worker_id: &str, job: &Job, png: Vec<u8>, width: usize, height: usize) -> sqlx::Result<()> {
    let image_id = format!("img_{}", random_token(16));
    let blob_key = format!("{image_id}.png");
    if let Err(e) = state.blobs.put(&blob_key, png).await {
        tracing::error!(job = %job.id, "storing the image failed: {e}");
        let failed = jobs::finish_unsuccessful(&state.db, job, worker_id, JobStatus::Failed, "the image could not be stored", job.steps as usize, 0, now_ms()).await?;
        if failed {
            state.metrics.job_finished(1);
        }
        return Ok(());
    }
    let now = now_ms();
    let image = NewImage {
        id: image_id,
        blob_key: blob_key.clone(),
        width: width as i64,
        height: height as i64,
        expires_at: now + state.config.retention_secs as i64 * 1000,
    };
    if jobs::succeed(&state.db, job, worker_id, &image, now).await? {
        state.metrics.job_finished(0);
        state.metrics.tokens_spent(job.cost);
    } else {
        let _ = state.blobs.delete(&blob_key).await;
    }
    Ok(())
}

/// Hand back jobs whose worker stopped heartbeating, now and then every half lease.
pub async fn reaper(state: Arc<AppState>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis((state.lease_ms() as u64 / 2).max(100));
    loop {
        match jobs::reap_expired(&state.db, now_ms(), state.config.max_attempts).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!("handed back {n} job(s) whose worker stopped");
                state.queue_signal.notify_one();
            }
            Err(e) => tracing::error!("reaping expired leases: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => return,
        }
    }
}
