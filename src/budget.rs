//! The API budget: one limiter shared by every request the process makes, so
//! the exporter never spends more of the user's Cloudflare allowance (1200
//! requests per 5 minutes, across all of the user's tokens) than configured.
//!
//! Requests are spaced evenly, one every `duration / count`. Because a
//! request can start late (a busy machine) and the next one on time, the
//! start times of the requests in the current window are also kept, and a
//! request waits while `count` of them are less than a window (plus a 2%
//! margin for latency between here and Cloudflare) old. So no window holds more
//! than `count` requests. A 429 pauses every request until its
//! `Retry-After` has passed, and Cloudflare's `Ratelimit` header slows
//! requests down before the allowance runs out. It runs on tokio's clock,
//! so tests can drive it with paused time.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

/// A request allowance: at most `count` requests per `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub duration: Duration,
}

impl RateLimit {
    /// The spacing between two requests that keeps within the allowance,
    /// margin included.
    pub fn period(self) -> Duration {
        self.window() / self.count
    }

    /// The window as enforced: the configured one plus the margin.
    fn window(self) -> Duration {
        self.duration.mul_f64(1.0 + WINDOW_MARGIN)
    }
}

impl Default for RateLimit {
    /// 1000 per 5 minutes: Cloudflare's 1200 less headroom for the people and
    /// tools that share the user's allowance.
    fn default() -> Self {
        Self {
            count: 1000,
            duration: Duration::from_secs(300),
        }
    }
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (count, duration) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not COUNT/DURATION, e.g. 1000/5m"))?;
        let count: u128 = count
            .trim()
            .parse()
            .ok()
            .filter(|&count| count > 0)
            .ok_or_else(|| format!("{count:?} is not a whole number above zero"))?;
        let count = u32::try_from(count)
            .ok()
            .filter(|&count| count <= MAX_COUNT)
            .ok_or_else(|| format!("the count must be at most {MAX_COUNT}"))?;
        let duration = humantime::parse_duration(duration.trim())
            .map_err(|err| format!("{duration:?} is not a duration: {err}"))?;
        if duration.is_zero() {
            return Err("the duration must be longer than zero".to_owned());
        }
        if duration > crate::cli::MAX_DURATION {
            return Err("the duration must be at most a week".to_owned());
        }
        Ok(Self { count, duration })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.count,
            humantime::format_duration(self.duration)
        )
    }
}

/// The largest budget accepted. The limiter remembers the start of every
/// request in the current window (16 bytes each), so this bounds its memory;
/// it is far above any Cloudflare allowance.
const MAX_COUNT: u32 = 1_000_000;

/// The longest pause any header can impose. Cloudflare blocks for at most
/// five minutes; a larger value is a bug on the way, not a reason to stop
/// watching for longer (if the block lasts, the next 429 pauses again).
const MAX_PAUSE: Duration = Duration::from_secs(5 * 60);

/// The window is enforced this much longer than configured, so that network
/// latency cannot fit one request too many into Cloudflare's own count.
const WINDOW_MARGIN: f64 = 0.02;

/// The shared limiter. Cheap to lock: no lock is held across an await.
pub struct Budget {
    limit: RateLimit,
    state: Mutex<State>,
}

struct State {
    /// The earliest time the next request may start.
    next_slot: Instant,
    /// No request starts before this (a 429's `Retry-After`).
    paused_until: Option<Instant>,
    /// A wider spacing in force until the given time (a low `Ratelimit`).
    slowed: Option<(Duration, Instant)>,
    /// When the requests of the current window started, oldest first.
    recent: VecDeque<Instant>,
}

impl Budget {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            state: Mutex::new(State {
                next_slot: Instant::now(),
                paused_until: None,
                slowed: None,
                recent: VecDeque::new(),
            }),
        }
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Waits until a request may be sent and returns how long that took.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        loop {
            let slot = self.reserve();
            tokio::time::sleep_until(slot).await;
            match self.admit() {
                Ok(()) => return started.elapsed(),
                // A pause began or the window is full: wait, then queue again
                // so that the requests held back do not all start at once.
                Err(not_before) => tokio::time::sleep_until(not_before).await,
            }
        }
    }

    /// Lets a request whose slot has come start now, unless a pause began
    /// meanwhile or the last `count` requests all fall in the current window;
    /// then says when to try again.
    fn admit(&self) -> Result<(), Instant> {
        let mut state = self.lock();
        let now = Instant::now();
        if let Some(until) = state.paused_until.filter(|&until| until > now) {
            return Err(until);
        }
        // Starts that have left the window no longer count, and are dropped
        // so that memory follows the requests actually made, not the count.
        let window = self.limit.window();
        while state.recent.front().is_some_and(|&at| at + window <= now) {
            state.recent.pop_front();
        }
        if state.recent.len() >= self.limit.count as usize {
            let oldest = state.recent.front().copied().unwrap_or(now);
            return Err(oldest + window);
        }
        state.recent.push_back(now);
        Ok(())
    }

    /// Stops every request until `delay` from now (a 429's `Retry-After`).
    /// When this starts a pause (none was in force), returns its length,
    /// capped, so the caller can say so once rather than for every request
    /// caught in it.
    pub fn pause_for(&self, delay: Duration) -> Option<Duration> {
        let now = Instant::now();
        let delay = delay.min(MAX_PAUSE);
        let until = now + delay;
        let mut state = self.lock();
        let started = state.paused_until.is_none_or(|current| current <= now);
        if state.paused_until.is_none_or(|current| current < until) {
            state.paused_until = Some(until);
        }
        started.then_some(delay)
    }

    /// Reads Cloudflare's `Ratelimit` header (`"default";r=50;t=30`: 50
    /// requests left until the window resets in 30 s). With nothing left,
    /// pauses until the reset; when what is left would run out before the
    /// reset at the budget's pace, spreads it over the rest of the window.
    /// `Ratelimit-Policy` (`"default";q=1200;w=300`) gives the window of an
    /// item that names no reset.
    pub fn observe_ratelimit_header(&self, value: &str, policy: Option<&str>) {
        let Some((remaining, reset)) = parse_ratelimit(value, policy) else {
            return;
        };
        let reset = reset.min(MAX_PAUSE);
        if remaining == 0 {
            if let Some(pause) = self.pause_for(reset) {
                warn!(
                    pause = %humantime::format_duration(pause),
                    "Cloudflare's Ratelimit header says the allowance is used up; pausing every \
                     request until it resets"
                );
            }
            return;
        }
        let spacing = reset / remaining;
        if spacing > self.limit.period() {
            self.lock().slowed = Some((spacing, Instant::now() + reset));
        }
    }

    fn reserve(&self) -> Instant {
        let mut state = self.lock();
        let now = Instant::now();
        let mut slot = state.next_slot.max(now);
        if let Some(until) = state.paused_until {
            if until > now {
                slot = slot.max(until);
            } else {
                state.paused_until = None;
            }
        }
        let spacing = match state.slowed {
            Some((spacing, until)) if until > now => spacing,
            _ => {
                state.slowed = None;
                self.limit.period()
            }
        };
        state.next_slot = slot + spacing;
        slot
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update is a plain assignment, so a poisoned lock holds a consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `"default";r=50;t=30` to (50, 30 s): of all the items, the one that
/// allows the fewest requests per second from now on. An item without `t`
/// takes the window `w` of the policy of the same name.
fn parse_ratelimit(value: &str, policy: Option<&str>) -> Option<(u32, Duration)> {
    value
        .split(',')
        .filter_map(|item| {
            let remaining = u32::try_from(parameter(item, "r")?).ok()?;
            let reset = parameter(item, "t").or_else(|| {
                let name = item_name(item);
                policy?
                    .split(',')
                    .find(|policy_item| item_name(policy_item) == name)
                    .and_then(|policy_item| parameter(policy_item, "w"))
            })?;
            Some((remaining, Duration::from_secs(reset)))
        })
        .min_by(|(r1, t1), (r2, t2)| {
            // r1 / t1 against r2 / t2, without dividing by a zero reset.
            (u128::from(*r1) * t2.as_millis()).cmp(&(u128::from(*r2) * t1.as_millis()))
        })
}

/// The name that starts a list item: `"default"` of `"default";r=50;t=30`.
fn item_name(item: &str) -> &str {
    item.split(';').next().unwrap_or_default().trim()
}

fn parameter(item: &str, name: &str) -> Option<u64> {
    item.split(';').skip(1).find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_parses_count_and_duration() {
        let limit: RateLimit = "1000/5m".parse().unwrap();
        assert_eq!(limit.count, 1000);
        assert_eq!(limit.duration, Duration::from_secs(300));
        // A 2% margin turns 300 ms into 306 ms.
        assert_eq!(limit.period(), Duration::from_millis(306));
        assert_eq!(
            "50/1s".parse::<RateLimit>().unwrap().period(),
            Duration::from_micros(20_400)
        );
        for bad in [
            "1000",
            "0/5m",
            "-1/5m",
            "10/0s",
            "ten/5m",
            "10/soon",
            "1000001/1s",
        ] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_spaced_by_the_period() {
        let budget = Budget::new("10/1s".parse().unwrap());
        let start = Instant::now();
        for n in 0..25u32 {
            budget.acquire().await;
            assert_eq!(start.elapsed(), Duration::from_millis(102) * n);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_back_every_request_including_waiting_ones() {
        let budget = std::sync::Arc::new(Budget::new("10/1s".parse().unwrap()));
        budget.acquire().await;
        // This request has its slot at 100 ms; the pause starts before then.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire().await }
        });
        tokio::task::yield_now().await;
        budget.pause_for(Duration::from_secs(5));
        let waited = waiting.await.unwrap();
        assert!(waited >= Duration::from_secs(5), "{waited:?}");

        let start = Instant::now();
        budget.acquire().await;
        assert!(start.elapsed() <= Duration::from_millis(102));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_start_does_not_let_a_window_hold_more_than_count() {
        let budget = std::sync::Arc::new(Budget::new("4/1s".parse().unwrap()));
        // Four requests reserve slots 0, 255, 510 and 765 ms, but the machine
        // stalls and they all start at 900 ms; the fifth is due at 1000 ms.
        let mut waiting = Vec::new();
        for _ in 0..4 {
            let slot = budget.reserve();
            waiting.push(slot);
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        for _ in &waiting {
            budget.admit().unwrap();
        }
        let start = Instant::now();
        budget.acquire().await;
        // It waits for the first of the four to leave the window (plus margin).
        assert_eq!(start.elapsed(), Duration::from_millis(1020));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_first_of_overlapping_pauses_starts_one() {
        let budget = Budget::new("10/1s".parse().unwrap());
        assert_eq!(
            budget.pause_for(Duration::from_secs(5)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            budget.pause_for(Duration::from_secs(8)),
            None,
            "extends the pause in force"
        );
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            budget.pause_for(Duration::from_secs(1)),
            Some(Duration::from_secs(1)),
            "the first pause is over"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(budget.pause_for(Duration::MAX), Some(MAX_PAUSE), "capped");
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_header_with_nothing_left_pauses_until_reset() {
        let budget = Budget::new("1000/5m".parse().unwrap());
        budget.observe_ratelimit_header("\"default\";r=0;t=30", None);
        let waited = budget.acquire().await;
        assert_eq!(waited, Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_header_with_little_left_spreads_the_rest() {
        let budget = Budget::new("1000/5m".parse().unwrap());
        // 5 left for the next 10 s: one request every 2 s.
        budget.observe_ratelimit_header("\"default\";r=5;t=10", Some("\"burst\";q=100;w=60"));
        budget.acquire().await;
        let waited = budget.acquire().await;
        assert_eq!(waited, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_too_low_for_the_budgets_pace_slows_down_early() {
        // Regression: only a remainder under a tenth of the quota used to
        // slow requests down, so 200 left of 1200 for 120 s (one per 600 ms)
        // went out every 306 ms and ran into a 429.
        let budget = Budget::new("1000/5m".parse().unwrap());
        budget
            .observe_ratelimit_header("\"default\";r=200;t=120", Some("\"default\";q=1200;w=300"));
        budget.acquire().await;
        assert_eq!(budget.acquire().await, Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn ratelimit_without_reset_takes_the_policy_window() {
        let budget = Budget::new("1000/5m".parse().unwrap());
        budget.observe_ratelimit_header(
            "\"default\";r=0",
            Some("\"burst\";q=100;w=60, \"default\";q=1200;w=300"),
        );
        assert_eq!(budget.acquire().await, Duration::from_secs(300));
    }

    #[tokio::test(start_paused = true)]
    async fn plenty_left_changes_nothing() {
        // 900 left for 60 s allows 15 a second, more than the budget's 10.
        let budget = Budget::new("10/1s".parse().unwrap());
        budget.observe_ratelimit_header("\"default\";r=900;t=60", Some("\"default\";q=1200;w=300"));
        budget.acquire().await;
        assert_eq!(budget.acquire().await, Duration::from_millis(102));
    }

    #[tokio::test(start_paused = true)]
    async fn absurd_header_values_are_capped() {
        let budget = Budget::new("10/1s".parse().unwrap());
        budget.observe_ratelimit_header(&format!("\"default\";r=0;t={}", u64::MAX), None);
        budget.observe_ratelimit_header(&format!("\"default\";r=1;t={}", u64::MAX), None);
        budget.pause_for(Duration::MAX);
        assert_eq!(budget.acquire().await, MAX_PAUSE);
    }

    #[test]
    fn header_parsing_tolerates_noise() {
        assert_eq!(
            parse_ratelimit("\"default\";r=50;t=30", None),
            Some((50, Duration::from_secs(30)))
        );
        // 9 in 5 s is a faster pace than 30 in 60 s: the slower one wins.
        assert_eq!(
            parse_ratelimit("\"a\";r=9;t=5, \"b\";r=30;t=60", None),
            Some((30, Duration::from_secs(60)))
        );
        assert_eq!(parse_ratelimit("garbage", None), None);
        assert_eq!(parse_ratelimit("\"default\";r=-1;t=30", None), None);
        assert_eq!(
            parse_ratelimit("\"default\";r=5", Some("\"other\";q=9;w=60")),
            None
        );
    }
}
