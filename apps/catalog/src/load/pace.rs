//! When each simulated user sends its next request.
//!
//! With a rate, user k of n sends at start + k·gap/n + i·gap (gap =
//! n / rate): the schedule is fixed in advance and a user that falls behind
//! catches up at once, so every target gets the same requests at the same
//! rate (an open loop). Without one, each user sends as soon as it has its
//! answer (a closed loop, which measures capacity). Latency is measured
//! from the actual send: tokio's timers wake up to a millisecond late,
//! which would otherwise be charged to the server.

use std::time::Duration;

use tokio::time::{Instant, sleep_until};

use super::LoadError;

/// One user's schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    next: Option<Instant>,
    gap: Duration,
}

impl Pace {
    /// User `user` of `users`, sending from `start`, at `rate` requests/s
    /// over all users (`None`: as fast as answered).
    pub(crate) fn new(
        rate: Option<f64>,
        users: usize,
        user: usize,
        start: Instant,
    ) -> Result<Pace, LoadError> {
        let users = users.max(1);
        match rate {
            None => Ok(Pace {
                next: None,
                gap: Duration::ZERO,
            }),
            Some(rate) if rate > 0.0 && rate.is_finite() => {
                let gap = Duration::try_from_secs_f64(users as f64 / rate)
                    .map_err(|_| LoadError::Spec(format!("--rate {rate} is out of range")))?;
                Ok(Pace {
                    next: Some(start + gap.mul_f64(user as f64 / users as f64)),
                    gap,
                })
            }
            Some(_) => Err(LoadError::Spec("--rate must be a positive number".into())),
        }
    }

    /// Waits for this user's next turn (at once in a closed loop).
    pub(crate) async fn wait(&mut self) {
        if let Some(at) = self.next {
            sleep_until(at).await;
            self.next = Some(at + self.gap);
        }
    }
}
