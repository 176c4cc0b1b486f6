//! Batching of store calls: every call that is ready at the same moment goes to the store in
//! one request, and each caller gets its own answer back.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Most calls one batch carries.
const MAX_BATCH: usize = 128;

type Job<J, R> = (J, oneshot::Sender<Result<R, StoreError>>);

/// A batching task's mailbox.
pub struct Batcher<J, R> {
    jobs: mpsc::UnboundedSender<Job<J, R>>,
}

impl<J: Send + 'static, R: Send + 'static> Batcher<J, R> {
    /// Starts a batching task on the current runtime; `run` executes one batch and answers
    /// each of its calls, in order.
    pub fn start<F, Fut>(run: F) -> Batcher<J, R>
    where
        F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>> + Send + 'static,
    {
        let (jobs, rx) = mpsc::unbounded_channel();
        tokio::spawn(batch_loop(rx, run));
        Batcher { jobs }
    }

    /// Hands one call to the batch and waits for its answer.
    pub async fn call(&self, job: J) -> Result<R, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send((job, reply))
            .map_err(|_| StoreError::Backend("the store's batching task has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Backend("the store's batching task dropped a call".into()))?
    }
}

/// Collects the calls that are ready, runs them as one batch, repeats. Several batches may be
/// in flight at once; a slow one does not hold up the next.
async fn batch_loop<J, R, F, Fut>(mut rx: mpsc::UnboundedReceiver<Job<J, R>>, run: F)
where
    J: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<J>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<Result<R, StoreError>>, StoreError>> + Send + 'static,
{
    use futures_util::stream::{FuturesUnordered, StreamExt};
    // Batches in flight are polled by this task, not spawned: a spawned batch would wait for a
    // turn on the thread before sending its request, after every task queued ahead of it.
    let mut in_flight = FuturesUnordered::new();
    let mut open = true;
    while open || !in_flight.is_empty() {
        tokio::select! {
            // A batch is what is queued when this task wakes: the calls that became ready while
            // it waited for its turn on the thread. It does not yield to gather more first:
            // that made every call of a burst wait for the slowest to reach its store call, and
            // the proxy thread then idled in lock-step with Redis (benches/load.sh, metered
            // route: the gateway's core 88% busy with the yield, 97% without).
            first = rx.recv(), if open => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
                let (calls, replies): (Vec<J>, Vec<_>) = jobs.into_iter().unzip();
                let batch = run(calls);
                in_flight.push(async move { send_answers(replies, batch.await) });
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
}

/// Sends each caller of a batch its answer: its own result (one per call, in order), or the
/// batch's error.
pub(super) fn send_answers<R>(
    replies: Vec<oneshot::Sender<Result<R, StoreError>>>,
    results: Result<Vec<Result<R, StoreError>>, StoreError>,
) {
    match results {
        Ok(results) => {
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(e.to_string())));
            }
        }
    }
}
