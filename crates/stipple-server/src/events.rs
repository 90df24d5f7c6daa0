//! In-process fan-out of job progress to the event streams watching it. Workers in this process
//! publish every step; streams also poll the database, so jobs run by other worker processes
//! still report progress and completion (without previews).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

#[derive(Debug, Clone)]
pub enum JobEvent {
    /// `step` of `steps` done (1-based), with a preview image as a data URL every few steps.
    Progress { step: usize, steps: usize, preview: Option<Arc<String>> },
    /// The job ended; its final state is in the database.
    Finished,
}

#[derive(Default)]
pub struct EventHub {
    channels: Mutex<HashMap<String, broadcast::Sender<JobEvent>>>,
    /// Cancel flags of the jobs this process is running, for an immediate stop.
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

impl EventHub {
    pub fn subscribe(&self, job_id: &str) -> broadcast::Receiver<JobEvent> {
        let mut ch = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        ch.entry(job_id.to_string()).or_insert_with(|| broadcast::channel(64).0).subscribe()
    }

    /// Forget a job's channel when no one but `still_held` receivers listen (a watcher that
    /// leaves calls this, so channels of jobs that already ended do not pile up).
    pub fn release(&self, job_id: &str, still_held: usize) {
        let mut ch = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if ch.get(job_id).is_some_and(|tx| tx.receiver_count() <= still_held) {
            ch.remove(job_id);
        }
    }

    #[cfg(test)]
    fn channel_count(&self) -> usize {
        self.channels.lock().unwrap().len()
    }

    pub fn publish(&self, job_id: &str, event: JobEvent) {
        let mut ch = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = ch.get(job_id) {
            if tx.send(event).is_err() {
                ch.remove(job_id); // nobody listens any more
            }
        }
    }

    pub fn finish(&self, job_id: &str) {
        let tx = self.channels.lock().unwrap_or_else(|e| e.into_inner()).remove(job_id);
        if let Some(tx) = tx {
            let _ = tx.send(JobEvent::Finished);
        }
        self.running.lock().unwrap_or_else(|e| e.into_inner()).remove(job_id);
    }

    /// Register a job this process starts running; the flag turns true on cancel.
    pub fn start_running(&self, job_id: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(job_id.to_string(), flag.clone());
        flag
    }

    pub fn cancel_local(&self, job_id: &str) {
        if let Some(flag) = self.running.lock().unwrap_or_else(|e| e.into_inner()).get(job_id) {
            flag.store(true, Ordering::Relaxed);
        }
    }

    /// Ask every job of this process to stop (shutdown).
    pub fn cancel_all(&self) {
        for flag in self.running.lock().unwrap_or_else(|e| e.into_inner()).values() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_go_when_their_last_watcher_leaves() {
        let hub = EventHub::default();
        let a = hub.subscribe("j");
        let b = hub.subscribe("j");
        hub.release("j", 1);
        assert_eq!(hub.channel_count(), 1, "b watches besides a");
        drop(a);
        hub.release("j", 0);
        assert_eq!(hub.channel_count(), 1, "b still watches");
        drop(b);
        hub.release("j", 0);
        assert_eq!(hub.channel_count(), 0);
        let _c = hub.subscribe("k");
        hub.finish("k");
        assert_eq!(hub.channel_count(), 0);
    }
}
