//! Billing periods: which window a moment belongs to, computed from an injected clock.
//!
//! A monthly period with a billing anchor starts on the anchor day of each month, clamped to the
//! month's last day (anchor 31 → 28 or 29 February, then 31 March). Each period's start is
//! computed afresh from the anchor and the month it falls in, never by adding one month to the
//! previous start: chaining would drift (31 Jan → 28 Feb → 28 Mar).

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// How long a meter's quota lasts before it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A UTC calendar day.
    Day,
    /// A calendar month (UTC), or a month starting on the tenant's billing anchor day.
    Month,
}

impl Period {
    /// `day` or `month`, as written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// The source of "now". Injected so tests can move time.
pub trait Clock: Send + Sync + 'static {
    /// The current moment.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Windows remembered per thread by [`Window::containing`] (a tenant's anchor and period pick
/// the slot; a collision only costs a recomputation).
const RECENT_SLOTS: usize = 8;

type Remembered = [Option<((Period, Option<u8>), Window)>; RECENT_SLOTS];

thread_local! {
    static RECENT: std::cell::Cell<Remembered> = const { std::cell::Cell::new([None; RECENT_SLOTS]) };
}

/// One period: `[start, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First day of the period.
    pub start_date: Date,
    /// When the period starts.
    pub start: Timestamp,
    /// When the next period starts.
    pub end: Timestamp,
}

impl Window {
    /// The window of `period` containing `now`, for a tenant with an optional billing anchor.
    ///
    /// Every metered call asks this, and the answer is the same for every moment inside a
    /// window: each thread remembers the last few windows it computed and reuses one while
    /// `now` is inside it, so the calendar arithmetic runs about once per period instead of
    /// once per call. The reuse checks `start <= now < end`, so a clock moved backwards or
    /// forwards (tests, NTP steps) gets the right window.
    pub fn containing(
        period: Period,
        anchor: Option<u8>,
        now: Timestamp,
    ) -> Result<Window, jiff::Error> {
        let key = (period, anchor);
        let slot = (usize::from(anchor.unwrap_or(0)) * 2 + period as usize) % RECENT_SLOTS;
        // `try_with`: a thread being torn down has no memory left, and computes.
        if let Ok(Some((k, w))) = RECENT.try_with(|r| r.get()[slot]) {
            if k == key && w.start <= now && now < w.end {
                return Ok(w);
            }
        }
        let w = Window::compute(period, anchor, now)?;
        let _ = RECENT.try_with(|r| {
            let mut all = r.get();
            all[slot] = Some((key, w));
            r.set(all);
        });
        Ok(w)
    }

    /// [`Window::containing`] without the per-thread memory.
    fn compute(period: Period, anchor: Option<u8>, now: Timestamp) -> Result<Window, jiff::Error> {
        let today = now.to_zoned(TimeZone::UTC).date();
        let (start, end) = match period {
            Period::Day => (today, today.tomorrow()?),
            Period::Month => {
                let anchor = anchor.unwrap_or(1).clamp(1, 31) as i8;
                let (y, m) = (today.year(), today.month());
                let this = anchored(y, m, anchor)?;
                if today >= this {
                    let (ny, nm) = next_month(y, m);
                    (this, anchored(ny, nm, anchor)?)
                } else {
                    let (py, pm) = prev_month(y, m);
                    (anchored(py, pm, anchor)?, this)
                }
            }
        };
        Ok(Window {
            start_date: start,
            start: midnight(start)?,
            end: midnight(end)?,
        })
    }

    /// Seconds from `now` until the period resets (at least 1 while inside the window).
    pub fn seconds_to_reset(&self, now: Timestamp) -> u64 {
        let secs = self.end.as_second() - now.as_second();
        secs.max(1) as u64
    }

    /// Length of the window in seconds.
    pub fn length_secs(&self) -> u64 {
        (self.end.as_second() - self.start.as_second()).max(1) as u64
    }

    /// The period label used in events: `2026-11` for months, `2026-11-26` for days.
    pub fn label(&self, period: Period) -> String {
        match period {
            Period::Day => self.start_date.to_string(),
            Period::Month => format!(
                "{:04}-{:02}",
                self.start_date.year(),
                self.start_date.month()
            ),
        }
    }
}

fn anchored(year: i16, month: i8, anchor: i8) -> Result<Date, jiff::Error> {
    let first = Date::new(year, month, 1)?;
    Date::new(year, month, anchor.min(first.days_in_month()))
}

fn next_month(y: i16, m: i8) -> (i16, i8) {
    if m == 12 {
        (y + 1, 1)
    } else {
        (y, m + 1)
    }
}

fn prev_month(y: i16, m: i8) -> (i16, i8) {
    if m == 1 {
        (y - 1, 12)
    } else {
        (y, m - 1)
    }
}

fn midnight(d: Date) -> Result<Timestamp, jiff::Error> {
    Ok(d.to_zoned(TimeZone::UTC)?.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn win(p: Period, anchor: Option<u8>, now: &str) -> (String, String) {
        let w = Window::containing(p, anchor, ts(now)).unwrap();
        (w.start.to_string(), w.end.to_string())
    }

    #[test]
    fn remembered_windows_match_computed_ones_as_the_clock_moves() {
        let moments = [
            "2026-11-26T12:00:00Z",
            "2026-11-30T23:59:59Z",
            "2026-12-01T00:00:00Z",
            "2026-11-14T23:59:59Z",
            "2026-11-15T00:00:00Z",
            "2027-02-28T10:00:00Z",
            "2026-11-26T12:00:01Z",
            "2028-02-29T01:00:00Z",
        ];
        for _ in 0..3 {
            for now in moments {
                for period in [Period::Day, Period::Month] {
                    for anchor in [None, Some(1), Some(15), Some(31), Some(29)] {
                        assert_eq!(
                            Window::containing(period, anchor, ts(now)).unwrap(),
                            Window::compute(period, anchor, ts(now)).unwrap(),
                            "{period:?} anchor {anchor:?} at {now}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn day_is_utc_midnight_to_midnight() {
        let (s, e) = win(Period::Day, None, "2026-11-26T23:59:59Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2026-11-26T00:00:00Z", "2026-11-27T00:00:00Z")
        );
    }

    #[test]
    fn calendar_month() {
        let (s, e) = win(Period::Month, None, "2026-12-31T12:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z")
        );
    }

    #[test]
    fn anchor_before_and_after_the_anchor_day() {
        let (s, e) = win(Period::Month, Some(15), "2026-11-14T23:59:59Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2026-10-15T00:00:00Z", "2026-11-15T00:00:00Z")
        );
        let (s, e) = win(Period::Month, Some(15), "2026-11-15T00:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2026-11-15T00:00:00Z", "2026-12-15T00:00:00Z")
        );
    }

    #[test]
    fn anchor_31_is_clamped_in_february_and_not_chained() {
        let (s, e) = win(Period::Month, Some(31), "2027-02-10T00:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2027-01-31T00:00:00Z", "2027-02-28T00:00:00Z")
        );
        let (s, e) = win(Period::Month, Some(31), "2027-03-01T00:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z")
        );
        let (s, e) = win(Period::Month, Some(31), "2028-02-29T01:00:00Z");
        assert_eq!(
            (s.as_str(), e.as_str()),
            ("2028-02-29T00:00:00Z", "2028-03-31T00:00:00Z")
        );
    }

    #[test]
    fn labels_and_reset() {
        let now = ts("2026-11-30T23:00:00Z");
        let w = Window::containing(Period::Month, None, now).unwrap();
        assert_eq!(w.label(Period::Month), "2026-11");
        assert_eq!(w.seconds_to_reset(now), 3600);
        assert_eq!(w.length_secs(), 30 * 86_400);
        let d = Window::containing(Period::Day, None, now).unwrap();
        assert_eq!(d.label(Period::Day), "2026-11-30");
    }

    proptest::proptest! {
        /// Every moment falls inside its window, and consecutive windows touch without gaps.
        #[test]
        fn windows_tile_time(secs in 0i64..4_102_444_800, anchor in proptest::option::of(1u8..=31)) {
            let now = Timestamp::from_second(secs).unwrap();
            for p in [Period::Day, Period::Month] {
                let w = Window::containing(p, anchor, now).unwrap();
                proptest::prop_assert!(w.start <= now && now < w.end);
                let next = Window::containing(p, anchor, w.end).unwrap();
                proptest::prop_assert_eq!(next.start, w.end);
            }
        }
    }
}
