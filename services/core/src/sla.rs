//! Business-hours arithmetic and SLA clocks. Pure: no I/O, no clock reads.
//!
//! An inbox's business hours are `{"mon": [["09:00", "17:00"]], …}` (the shape the directory
//! validates) in an IANA time zone; holidays are local dates with no business time at all.
//! Instants are Unix microseconds. A business interval is the real time between the instants
//! its local start and end map to, so a range that spans a DST change counts the hours that
//! really passed (`00:00–06:00` on a spring-forward night is five hours). Local times that do
//! not exist (in a gap) or exist twice (in a fold) resolve like RFC 5545 / Temporal's
//! "compatible" rule: the later reading for a gap, the earlier for a fold.
//!
//! An inbox without business hours counts every hour (24/7).

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use std::collections::{BTreeMap, BTreeSet};

/// Microseconds per second.
pub const US_PER_SEC: i64 = 1_000_000;

/// How far ahead [`BusinessCalendar::add`] looks for open hours before it gives up (a
/// calendar whose every day is a holiday, or a target of centuries).
const MAX_DAYS: i64 = 366 * 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalendarError {
    #[error("{0:?} is not an IANA time zone name")]
    UnknownTimeZone(String),
    #[error("business_hours: {0}")]
    BadHours(String),
    #[error("{0:?} is not a date (YYYY-MM-DD)")]
    BadHoliday(String),
}

/// When an inbox is open for business.
#[derive(Debug, Clone)]
pub struct BusinessCalendar {
    tz: TimeZone,
    /// Open minute ranges per weekday (Monday = 0), sorted and merged; `None` = always open.
    week: Option<[Vec<(u32, u32)>; 7]>,
    holidays: BTreeSet<Date>,
}

impl BusinessCalendar {
    /// Every hour of every day, in UTC.
    pub fn always_open() -> Self {
        Self {
            tz: TimeZone::UTC,
            week: None,
            holidays: BTreeSet::new(),
        }
    }

    /// A calendar from an inbox's time zone (`None` = UTC), business hours (`None` or JSON
    /// `null` = 24/7) and holidays (`YYYY-MM-DD` local dates).
    pub fn new(
        timezone: Option<&str>,
        hours: Option<&serde_json::Value>,
        holidays: &[String],
    ) -> Result<Self, CalendarError> {
        let tz = match timezone.filter(|t| !t.is_empty()) {
            None => TimeZone::UTC,
            Some(name) => {
                TimeZone::get(name).map_err(|_| CalendarError::UnknownTimeZone(name.to_owned()))?
            }
        };
        let week = match hours {
            None | Some(serde_json::Value::Null) => None,
            Some(h) => Some(parse_week(h)?),
        };
        let holidays = holidays
            .iter()
            .map(|d| {
                d.parse::<Date>()
                    .map_err(|_| CalendarError::BadHoliday(d.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { tz, week, holidays })
    }

    /// Whether the calendar counts every hour.
    pub fn is_always_open(&self) -> bool {
        self.week.is_none() && self.holidays.is_empty()
    }

    /// The instant `business_us` of business time after `from_us`; `None` when the calendar
    /// has no open hours within twenty years. `add(t, 0) == t`.
    pub fn add(&self, from_us: i64, business_us: i64) -> Option<i64> {
        if business_us <= 0 {
            return Some(from_us);
        }
        if self.is_always_open() {
            return from_us.checked_add(business_us);
        }
        let mut remaining = business_us;
        for (start, end) in self.intervals_from(from_us, MAX_DAYS) {
            let available = end - start;
            if remaining <= available {
                return Some(start + remaining);
            }
            remaining -= available;
        }
        None
    }

    /// Business time between two instants (0 when `to_us <= from_us`).
    pub fn between(&self, from_us: i64, to_us: i64) -> i64 {
        if to_us <= from_us {
            return 0;
        }
        if self.is_always_open() {
            return to_us - from_us;
        }
        let days = (to_us - from_us) / (86_400 * US_PER_SEC) + 3;
        let mut total = 0;
        for (start, end) in self.intervals_from(from_us, days) {
            if start >= to_us {
                break;
            }
            total += end.min(to_us) - start;
        }
        total
    }

    /// Whether the inbox is open at an instant.
    pub fn is_open(&self, at_us: i64) -> bool {
        self.between(at_us, at_us.saturating_add(1)) == 1
    }

    /// The end of business on the local day of `at_us` (the end of its last open range), if
    /// that day has open hours: "the end of the shift".
    pub fn end_of_day(&self, at_us: i64) -> Option<i64> {
        let date = self.local_date(at_us)?;
        self.day_intervals(date).last().map(|&(_, end)| end)
    }

    fn local_date(&self, at_us: i64) -> Option<Date> {
        let ts = Timestamp::from_microsecond(at_us).ok()?;
        Some(self.tz.to_datetime(ts).date())
    }

    /// Disjoint open intervals `[start, end)` in increasing order, the first clipped to begin
    /// at `from_us`, over at most `max_days` local days.
    fn intervals_from(&self, from_us: i64, max_days: i64) -> impl Iterator<Item = (i64, i64)> {
        // Start a day early: a range of the previous local day can still be open (a fold).
        let first = self
            .local_date(from_us)
            .and_then(|d| d.yesterday().ok())
            .unwrap_or(Date::MIN);
        let mut cursor = from_us;
        let mut day = Some(first);
        let mut pending: std::vec::IntoIter<(i64, i64)> = Vec::new().into_iter();
        let mut walked = 0;
        std::iter::from_fn(move || {
            loop {
                for (s, e) in pending.by_ref() {
                    let s = s.max(cursor);
                    if e > s {
                        cursor = e;
                        return Some((s, e));
                    }
                }
                if walked > max_days {
                    return None;
                }
                let d = day?;
                walked += 1;
                pending = self.day_intervals(d).into_iter();
                day = d.tomorrow().ok();
            }
        })
    }

    /// One local day's open intervals as instants.
    fn day_intervals(&self, date: Date) -> Vec<(i64, i64)> {
        if self.holidays.contains(&date) {
            return Vec::new();
        }
        let ranges: &[(u32, u32)] = match &self.week {
            None => &[(0, 24 * 60)],
            Some(w) => &w[weekday_index(date.weekday())],
        };
        ranges
            .iter()
            .filter_map(|&(s, e)| Some((self.instant(date, s)?, self.instant(date, e)?)))
            .filter(|(s, e)| e > s)
            .collect()
    }

    /// The instant a local minute of a day maps to (24:00 is the next day's midnight).
    fn instant(&self, date: Date, minute: u32) -> Option<i64> {
        let (date, minute) = if minute >= 24 * 60 {
            (date.tomorrow().ok()?, 0)
        } else {
            (date, minute)
        };
        let h = i8::try_from(minute / 60).ok()?;
        let m = i8::try_from(minute % 60).ok()?;
        let dt = date.at(h, m, 0, 0);
        let ts = self.tz.to_ambiguous_timestamp(dt).compatible().ok()?;
        Some(ts.as_microsecond())
    }
}

fn weekday_index(w: Weekday) -> usize {
    usize::try_from(w.to_monday_zero_offset()).unwrap_or(0)
}

/// Parses `{"mon": [["09:00", "17:00"]], …}`; ranges of a day are sorted and merged.
fn parse_week(hours: &serde_json::Value) -> Result<[Vec<(u32, u32)>; 7], CalendarError> {
    let bad = |why: String| CalendarError::BadHours(why);
    let obj = hours
        .as_object()
        .ok_or_else(|| bad("must be an object keyed by weekday".into()))?;
    let minutes = |s: &str| -> Option<u32> {
        let (h, m) = s.split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 24 * 60).then_some(h * 60 + m)
    };
    let mut week: [Vec<(u32, u32)>; 7] = Default::default();
    for (day, ranges) in obj {
        let idx = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
            .iter()
            .position(|d| *d == day)
            .ok_or_else(|| bad(format!("{day:?} is not a weekday (mon … sun)")))?;
        let ranges = ranges
            .as_array()
            .ok_or_else(|| bad(format!("{day} must be a list of [start, end]")))?;
        let mut list = Vec::new();
        for r in ranges {
            let pair = r
                .as_array()
                .filter(|a| a.len() == 2)
                .and_then(|a| Some((minutes(a[0].as_str()?)?, minutes(a[1].as_str()?)?)));
            match pair {
                Some((s, e)) if s < e => list.push((s, e)),
                _ => return Err(bad(format!("{day}: {r} is not a valid range"))),
            }
        }
        list.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::new();
        for (s, e) in list {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        week[idx] = merged;
    }
    Ok(week)
}

/// Which SLA clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClockKind {
    /// From the first customer message to the first agent reply.
    FirstResponse,
    /// From a customer message that follows an agent reply to the next agent reply.
    NextResponse,
    /// From opening to closing (or marking spam).
    Resolution,
}

impl ClockKind {
    pub const ALL: [ClockKind; 3] = [
        ClockKind::FirstResponse,
        ClockKind::NextResponse,
        ClockKind::Resolution,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::FirstResponse => "first_response",
            Self::NextResponse => "next_response",
            Self::Resolution => "resolution",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Targets in business seconds; `None` = no target for that clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlaTargets {
    pub first_response_secs: Option<i64>,
    pub next_response_secs: Option<i64>,
    pub resolution_secs: Option<i64>,
}

impl SlaTargets {
    pub fn get(&self, kind: ClockKind) -> Option<i64> {
        match kind {
            ClockKind::FirstResponse => self.first_response_secs,
            ClockKind::NextResponse => self.next_response_secs,
            ClockKind::Resolution => self.resolution_secs,
        }
    }

    /// `self`'s targets, falling back to `base` for the ones it leaves open.
    pub fn or(self, base: SlaTargets) -> SlaTargets {
        SlaTargets {
            first_response_secs: self.first_response_secs.or(base.first_response_secs),
            next_response_secs: self.next_response_secs.or(base.next_response_secs),
            resolution_secs: self.resolution_secs.or(base.resolution_secs),
        }
    }
}

/// An inbox's SLA policy.
#[derive(Debug, Clone, PartialEq)]
pub struct SlaPolicy {
    pub targets: SlaTargets,
    /// Per conversation priority (`low` … `urgent`): overrides of the default targets.
    pub by_priority: BTreeMap<String, SlaTargets>,
    /// Warn when this fraction of a target has elapsed (0 < f < 1).
    pub warn_at: f64,
}

impl SlaPolicy {
    /// The targets that apply to a conversation of `priority`.
    pub fn targets_for(&self, priority: &str) -> SlaTargets {
        self.by_priority
            .get(priority)
            .map_or(self.targets, |t| t.or(self.targets))
    }

    /// Checks targets are positive and the warning fraction is inside (0, 1).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.warn_at > 0.0 && self.warn_at < 1.0) {
            return Err("warn_at must be a fraction strictly between 0 and 1".into());
        }
        let all = std::iter::once(("default", &self.targets))
            .chain(self.by_priority.iter().map(|(k, v)| (k.as_str(), v)));
        for (name, t) in all {
            if !["default", "low", "normal", "high", "urgent"].contains(&name) {
                return Err(format!(
                    "{name:?} is not a priority (low, normal, high, urgent)"
                ));
            }
            for k in ClockKind::ALL {
                if t.get(k).is_some_and(|s| s <= 0) {
                    return Err(format!("{name}: {} must be positive", k.as_str()));
                }
            }
        }
        Ok(())
    }
}

/// One running or paused SLA clock: business time used so far and, while running, since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    pub target_us: i64,
    /// Business time consumed before the last resume.
    pub used_us: i64,
    /// `Some` while running.
    pub running_since_us: Option<i64>,
}

impl Clock {
    /// A clock started at `at_us`.
    pub fn start(target_secs: i64, at_us: i64) -> Self {
        Self {
            target_us: target_secs.saturating_mul(US_PER_SEC),
            used_us: 0,
            running_since_us: Some(at_us),
        }
    }

    /// Business time used up to `at_us`.
    pub fn used_at(&self, cal: &BusinessCalendar, at_us: i64) -> i64 {
        self.used_us
            + self
                .running_since_us
                .map_or(0, |since| cal.between(since, at_us))
    }

    /// Stops counting (pending); the time used so far is kept.
    pub fn pause(&mut self, cal: &BusinessCalendar, at_us: i64) {
        self.used_us = self.used_at(cal, at_us);
        self.running_since_us = None;
    }

    /// Counts again from `at_us`.
    pub fn resume(&mut self, at_us: i64) {
        if self.running_since_us.is_none() {
            self.running_since_us = Some(at_us);
        }
    }

    /// When the target is reached, while running.
    pub fn due_us(&self, cal: &BusinessCalendar) -> Option<i64> {
        let since = self.running_since_us?;
        cal.add(since, (self.target_us - self.used_us).max(0))
    }

    /// When `fraction` of the target is reached, while running and not yet past it.
    pub fn warn_us(&self, cal: &BusinessCalendar, fraction: f64) -> Option<i64> {
        let since = self.running_since_us?;
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let warn_total = (self.target_us as f64 * fraction) as i64;
        let left = warn_total - self.used_us;
        (left > 0).then(|| cal.add(since, left)).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    const H: i64 = 3600 * US_PER_SEC;
    const M: i64 = 60 * US_PER_SEC;

    fn us(s: &str) -> i64 {
        s.parse::<Timestamp>().map(|t| t.as_microsecond()).unwrap()
    }

    fn office(tz: &str) -> BusinessCalendar {
        let day = json!([["09:00", "17:00"]]);
        let hours = json!({"mon": day, "tue": day, "wed": day, "thu": day, "fri": day});
        BusinessCalendar::new(Some(tz), Some(&hours), &[]).unwrap()
    }

    #[test]
    fn an_hour_before_closing_plus_two_hours_lands_the_next_morning() {
        let cal = office("Europe/Amsterdam");
        // Mon 2026-11-23 16:00 CET = 15:00Z; one hour left today, one tomorrow from 09:00.
        let due = cal.add(us("2026-11-23T15:00:00Z"), 2 * H).unwrap();
        assert_eq!(due, us("2026-11-24T09:00:00Z")); // 10:00 CET
        assert_eq!(cal.between(us("2026-11-23T15:00:00Z"), due), 2 * H);
    }

    #[test]
    fn weekends_are_skipped() {
        let cal = office("Europe/Amsterdam");
        // Fri 2026-11-27 16:30 CET + 1h → Mon 09:30 CET.
        let due = cal.add(us("2026-11-27T15:30:00Z"), H).unwrap();
        assert_eq!(due, us("2026-11-30T08:30:00Z"));
        // A message on Saturday starts counting on Monday at 09:00.
        let due = cal.add(us("2026-11-28T12:00:00Z"), 30 * M).unwrap();
        assert_eq!(due, us("2026-11-30T08:30:00Z"));
    }

    #[test]
    fn holidays_have_no_business_time() {
        let day = json!([["09:00", "17:00"]]);
        let hours = json!({"mon": day, "tue": day, "wed": day, "thu": day, "fri": day});
        let cal = BusinessCalendar::new(
            Some("Europe/Amsterdam"),
            Some(&hours),
            &["2026-12-25".into()],
        )
        .unwrap();
        // Thu 24 Dec 16:00 CET + 2h → Fri 25 is a holiday → Mon 28 10:00 CET.
        let due = cal.add(us("2026-12-24T15:00:00Z"), 2 * H).unwrap();
        assert_eq!(due, us("2026-12-28T09:00:00Z"));
    }

    #[test]
    fn office_hours_stay_local_across_dst() {
        let cal = office("Europe/Amsterdam");
        // Fri 2026-03-27 16:00 CET (15:00Z) + 2h: 1h Friday, then Monday 30 March is CEST
        // (UTC+2), so 10:00 local = 08:00Z.
        let due = cal.add(us("2026-03-27T15:00:00Z"), 2 * H).unwrap();
        assert_eq!(due, us("2026-03-30T08:00:00Z"));
        // Autumn: Fri 2026-10-23 16:00 CEST (14:00Z) + 2h → Mon 26 Oct 10:00 CET = 09:00Z.
        let due = cal.add(us("2026-10-23T14:00:00Z"), 2 * H).unwrap();
        assert_eq!(due, us("2026-10-26T09:00:00Z"));
    }

    #[test]
    fn a_range_across_the_dst_change_counts_real_hours() {
        // Open 00:00–06:00 every Sunday. On 2026-03-29 clocks jump 02:00 → 03:00 CET→CEST:
        // the night has five real hours; on 2026-10-25 (03:00 → 02:00) it has seven.
        let hours = json!({"sun": [["00:00", "06:00"]]});
        let cal = BusinessCalendar::new(Some("Europe/Amsterdam"), Some(&hours), &[]).unwrap();
        let spring = cal.between(us("2026-03-28T12:00:00Z"), us("2026-03-29T12:00:00Z"));
        assert_eq!(spring, 5 * H);
        let autumn = cal.between(us("2026-10-24T12:00:00Z"), us("2026-10-25T12:00:00Z"));
        assert_eq!(autumn, 7 * H);
        // Starting at local midnight, 4.5 business hours end at 05:30 CEST (03:30Z).
        assert_eq!(
            cal.add(us("2026-03-28T23:00:00Z"), 4 * H + 30 * M),
            Some(us("2026-03-29T03:30:00Z"))
        );
    }

    #[test]
    fn without_business_hours_every_hour_counts() {
        let cal = BusinessCalendar::new(Some("America/New_York"), None, &[]).unwrap();
        assert_eq!(cal.add(0, 5 * H), Some(5 * H));
        assert_eq!(cal.between(10, 10 + H), H);
    }

    #[test]
    fn a_calendar_that_is_never_open_gives_up() {
        let cal = BusinessCalendar::new(Some("UTC"), Some(&json!({})), &[]).unwrap();
        assert_eq!(cal.add(0, H), None);
        assert_eq!(cal.between(0, 100 * H), 0);
    }

    #[test]
    fn bad_input_is_refused() {
        assert!(matches!(
            BusinessCalendar::new(Some("Mars/Olympus"), None, &[]),
            Err(CalendarError::UnknownTimeZone(_))
        ));
        assert!(
            BusinessCalendar::new(None, Some(&json!({"mon": [["17:00", "09:00"]]})), &[]).is_err()
        );
        assert!(BusinessCalendar::new(None, None, &["25-12-2026".into()]).is_err());
    }

    #[test]
    fn end_of_shift_is_the_last_range_end() {
        let cal = office("Europe/Amsterdam");
        assert_eq!(
            cal.end_of_day(us("2026-11-23T10:00:00Z")),
            Some(us("2026-11-23T16:00:00Z"))
        );
        assert_eq!(cal.end_of_day(us("2026-11-28T10:00:00Z")), None);
    }

    #[test]
    fn a_paused_clock_keeps_what_it_used() {
        let cal = office("UTC");
        // Mon 2026-11-23 09:00Z, target 4h; pending 10:00–15:00, resumed at 15:00.
        let mut c = Clock::start(4 * 3600, us("2026-11-23T09:00:00Z"));
        assert_eq!(c.due_us(&cal), Some(us("2026-11-23T13:00:00Z")));
        assert_eq!(c.warn_us(&cal, 0.75), Some(us("2026-11-23T12:00:00Z")));
        c.pause(&cal, us("2026-11-23T10:00:00Z"));
        assert_eq!(c.due_us(&cal), None);
        c.resume(us("2026-11-23T15:00:00Z"));
        // 1h used; 3h left: 2h today, 1h tomorrow.
        assert_eq!(c.due_us(&cal), Some(us("2026-11-24T10:00:00Z")));
        // Warning at 3h used: 2h after resuming.
        assert_eq!(c.warn_us(&cal, 0.75), Some(us("2026-11-23T17:00:00Z")));
    }

    #[test]
    fn policy_targets_fall_back_per_clock() {
        let p = SlaPolicy {
            targets: SlaTargets {
                first_response_secs: Some(3600),
                next_response_secs: None,
                resolution_secs: Some(86_400),
            },
            by_priority: [(
                "urgent".to_owned(),
                SlaTargets {
                    first_response_secs: Some(600),
                    ..SlaTargets::default()
                },
            )]
            .into(),
            warn_at: 0.8,
        };
        p.validate().unwrap();
        let t = p.targets_for("urgent");
        assert_eq!(t.first_response_secs, Some(600));
        assert_eq!(t.resolution_secs, Some(86_400));
        assert_eq!(p.targets_for("low").first_response_secs, Some(3600));
        let bad = SlaPolicy { warn_at: 1.0, ..p };
        assert!(bad.validate().is_err());
    }

    fn calendars() -> impl Strategy<Value = BusinessCalendar> {
        let tz = prop::sample::select(vec![
            "UTC",
            "Europe/Amsterdam",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
        ]);
        // Up to two ranges per day in 15-minute steps, some days closed.
        let range = (0u32..96, 1u32..96).prop_map(|(s, len)| {
            let e = (s + len).min(96);
            (s * 15, e * 15)
        });
        let day = prop::collection::vec(range, 0..3);
        (tz, prop::collection::vec(day, 7), any::<bool>()).prop_map(|(tz, days, holiday)| {
            let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            let fmt = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
            let mut obj = serde_json::Map::new();
            for (n, ranges) in names.iter().zip(days) {
                let list: Vec<_> = ranges
                    .into_iter()
                    .filter(|(s, e)| s < e)
                    .map(|(s, e)| json!([fmt(s), fmt(e)]))
                    .collect();
                obj.insert((*n).to_owned(), json!(list));
            }
            // Always open on Wednesday mornings, so `add` never runs out of time.
            obj.insert("wed".into(), json!([["08:00", "12:00"]]));
            let holidays = if holiday {
                vec!["2026-03-29".to_owned(), "2026-10-26".to_owned()]
            } else {
                Vec::new()
            };
            BusinessCalendar::new(Some(tz), Some(&serde_json::Value::Object(obj)), &holidays)
                .unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// `between(t, add(t, d)) == d`, and the result is the earliest such instant.
        #[test]
        fn add_then_between_round_trips(
            cal in calendars(),
            // 2026, where both DST changes of the zones above fall.
            t in 1_767_225_600i64 * US_PER_SEC..1_798_761_600i64 * US_PER_SEC,
            d in 1i64..(200 * 3600 * US_PER_SEC),
        ) {
            let due = cal.add(t, d).unwrap();
            prop_assert!(due > t);
            prop_assert_eq!(cal.between(t, due), d);
            prop_assert!(cal.between(t, due - 1) < d);
        }

        /// Business time is additive over a split point and never exceeds real time.
        #[test]
        fn between_is_additive(
            cal in calendars(),
            a in 1_767_225_600i64 * US_PER_SEC..1_798_761_600i64 * US_PER_SEC,
            x in 0i64..(30 * 86_400 * US_PER_SEC),
            y in 0i64..(30 * 86_400 * US_PER_SEC),
        ) {
            let (b, c) = (a + x, a + x + y);
            let whole = cal.between(a, c);
            prop_assert_eq!(whole, cal.between(a, b) + cal.between(b, c));
            prop_assert!(whole <= c - a);
        }
    }
}
