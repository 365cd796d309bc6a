//! Warming: loading many keys ahead of traffic without hurting the source.
//!
//! Keys come from a stream (an iterator through
//! `futures_util::stream::iter`), are cut into batches, and each batch goes
//! through the batch load path (`batch.rs`): one store read to skip what is
//! already cached, one loader call for the rest, fills under fill leases so
//! a write during warming still wins. At most `concurrency` loader calls
//! run at once, whatever the number of keys; progress is reported after
//! every batch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use tokio::sync::Semaphore;

use crate::BoxError;
use crate::batch::BatchFn;
use crate::cache::{Cache, Value};
use crate::codec::Codec;

/// How a warm-up runs.
#[derive(Debug, Clone, Copy)]
pub struct WarmOptions {
    /// Keys per loader call (and per store read). Default 500.
    pub batch: usize,
    /// Loader calls running at once, at most. Default 4.
    pub concurrency: usize,
}

impl Default for WarmOptions {
    fn default() -> Self {
        WarmOptions {
            batch: 500,
            concurrency: 4,
        }
    }
}

/// Where a warm-up is, or how it ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmReport {
    /// Keys handled so far.
    pub done: usize,
    /// Loaded from the source (and cached, unless the store failed:
    /// counted in the cache's store errors).
    pub loaded: usize,
    /// Already cached, or loaded meanwhile by another caller.
    pub skipped: usize,
    /// The source had no such key.
    pub not_found: usize,
    /// The load failed (logged; the keys stay uncached).
    pub failed: usize,
    /// Since the warm-up started.
    pub elapsed: Duration,
}

impl<V: Value, C: Codec> Cache<V, C> {
    /// Loads every key of `keys` that is not cached yet, `options.batch`
    /// keys per `loader` call, at most `options.concurrency` calls at once.
    /// `progress` is called after every batch; the last report is
    /// returned. A failing batch is counted and logged, and warming goes
    /// on: a warm-up never fails as a whole.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::collections::HashMap;
    /// use cachette::{Cache, WarmOptions};
    /// use futures_util::stream;
    ///
    /// let squares: Cache<u64> = Cache::builder("square").build()?;
    /// let keys = stream::iter((1..=1_000).map(|n: u64| n.to_string()));
    /// let report = squares
    ///     .warm(keys, |batch: Vec<String>| async move {
    ///         Ok::<_, std::num::ParseIntError>(
    ///             batch.into_iter()
    ///                 .map(|k| k.parse::<u64>().map(|n| (k, n * n)))
    ///                 .collect::<Result<HashMap<_, _>, _>>()?,
    ///         )
    ///     }, WarmOptions::default(), |p| eprintln!("{} keys", p.done))
    ///     .await;
    /// assert_eq!(report.loaded, 1_000);
    /// assert_eq!(squares.get("12").await?, Some(144));
    /// # Ok(()) }
    /// ```
    pub async fn warm<S, F, Fut, E>(
        &self,
        keys: S,
        loader: F,
        options: WarmOptions,
        mut progress: impl FnMut(&WarmReport),
    ) -> WarmReport
    where
        S: Stream<Item = String>,
        F: Fn(Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HashMap<String, V>, E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let started = Instant::now();
        let concurrency = options.concurrency.max(1);
        // The bound holds for every loader call, the single-key calls a
        // batch hands off included.
        let permits = Arc::new(Semaphore::new(concurrency));
        let loader = Arc::new(loader);
        let bounded: BatchFn<V> = Arc::new(move |keys| {
            let permits = Arc::clone(&permits);
            let loader = Arc::clone(&loader);
            Box::pin(async move {
                let _permit = permits.acquire_owned().await.map_err(BoxError::from)?;
                loader(keys).await.map_err(Into::into)
            })
        });
        let mut report = WarmReport::default();
        let batches = keys
            .chunks(options.batch.max(1))
            .map(|batch| {
                let bounded = Arc::clone(&bounded);
                async move {
                    let n = batch.len();
                    (n, self.load_many(&batch, bounded).await)
                }
            })
            .buffer_unordered(concurrency);
        tokio::pin!(batches);
        while let Some((n, outcome)) = batches.next().await {
            report.done += n;
            match outcome {
                Ok(outcome) => {
                    let r = outcome.report;
                    report.loaded += r.loaded;
                    report.skipped += r.hits + r.joined;
                    report.not_found += r.not_found;
                    report.failed += r.failed;
                    if let Some(e) = outcome.error {
                        tracing::warn!(namespace = %self.inner.namespace, error = %e, "warming: a batch failed");
                    }
                }
                Err(e) => {
                    report.failed += n;
                    tracing::warn!(namespace = %self.inner.namespace, error = %e, "warming: a batch was refused");
                }
            }
            report.elapsed = started.elapsed();
            progress(&report);
        }
        report.elapsed = started.elapsed();
        report
    }
}
