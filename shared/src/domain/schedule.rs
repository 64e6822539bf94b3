//! Schedules: standard 5-field cron in UTC or a one-time instant, what a schedule fires, and
//! when it fires next.

use chrono::{DateTime, Utc};
use croner::Cron as CronerCron;
use croner::parser::{CronParser, Seconds, Year};
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StackRef;
use crate::error::{Error, Result};

/// Where a schedule's stored definition names the token that set it: its deployments are
/// requested by that token, which therefore cannot approve them.
pub const REQUESTED_BY: &str = "requestedBy";

/// The parser for standard cron: minute to day of week, no seconds or years.
fn five_fields() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
}

/// A parsed 5-field cron expression, evaluated in UTC.
#[derive(Debug, Clone)]
pub struct Cron {
    text: String,
    cron: CronerCron,
}

fn to_chrono(t: OffsetDateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.unix_timestamp(), t.nanosecond()).unwrap_or_default()
}

fn from_chrono(t: DateTime<Utc>) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()),
    )
    .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Cron {
    /// Parses minute, hour, day of month, month and day of week (0 and 7 are Sunday; `*`,
    /// lists, ranges, steps and names). A day-of-month and a day-of-week restriction match
    /// either, as in Vixie cron.
    pub fn parse(text: &str) -> Result<Self> {
        let fields = text.split_whitespace().count();
        if fields != 5 && !text.trim_start().starts_with('@') {
            return Err(Error::invalid(format!(
                "invalid scheduleCron '{text}': expected 5 fields (minute hour day-of-month month day-of-week), found {fields}"
            )));
        }
        let cron = five_fields()
            .parse(text)
            .map_err(|e| Error::invalid(format!("invalid scheduleCron '{text}': {e}")))?;
        // A pattern that can never match (30 February) is refused now, not at its first tick.
        cron.find_next_occurrence(&Utc::now(), false).map_err(|e| {
            Error::invalid(format!(
                "invalid scheduleCron '{text}': it never matches ({e})"
            ))
        })?;
        Ok(Self {
            text: text.trim().to_string(),
            cron,
        })
    }

    /// Re-reads an expression that `parse` accepted when it was stored.
    pub fn from_stored(text: &str) -> Result<Self> {
        let cron = five_fields()
            .parse(text)
            .map_err(|e| Error::internal(format!("stored cron '{text}' no longer parses: {e}")))?;
        Ok(Self {
            text: text.trim().to_string(),
            cron,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The first slot strictly after `t`, on a whole second (cron slots have no fraction,
    /// whatever `t` has).
    pub fn next_after(&self, t: OffsetDateTime) -> Result<OffsetDateTime> {
        let whole = t.replace_nanosecond(0).unwrap_or(t);
        self.cron
            .find_next_occurrence(&to_chrono(whole), false)
            .map(from_chrono)
            .map_err(|e| Error::internal(format!("cron '{}' has no next slot: {e}", self.text)))
    }
}

/// When a schedule fires.
#[derive(Debug, Clone)]
pub enum When {
    Cron(Box<Cron>),
    Once(OffsetDateTime),
}

/// What sort of schedule it is; all are Pulumi's `deployment` kind on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Custom,
    Drift,
    Ttl,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Custom => "custom",
            Purpose::Drift => "drift",
            Purpose::Ttl => "ttl",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "custom" => Ok(Purpose::Custom),
            "drift" => Ok(Purpose::Drift),
            "ttl" => Ok(Purpose::Ttl),
            other => Err(Error::internal(format!(
                "unknown schedule purpose '{other}'"
            ))),
        }
    }
}

/// A stored schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: Uuid,
    pub stack: StackRef,
    pub purpose: Purpose,
    pub when: When,
    /// `{"request": <create-deployment request>}`, as the API shows it.
    pub definition: Value,
    /// `None` once a one-time schedule has fired.
    pub next_execution: Option<OffsetDateTime>,
    pub paused: bool,
    pub created: OffsetDateTime,
    pub modified: OffsetDateTime,
    pub last_executed: Option<OffsetDateTime>,
}

impl Schedule {
    /// The schedule's next slot from `now` on: a one-time schedule keeps its instant (even if
    /// past, so it fires at the next tick); a cron schedule takes its first slot after `now`.
    pub fn first_slot(when: &When, now: OffsetDateTime) -> Result<Option<OffsetDateTime>> {
        Ok(Some(match when {
            When::Once(t) => *t,
            When::Cron(c) => c.next_after(now)?,
        }))
    }
}

/// What a tick does with a due slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    /// The slot that fires (the latest one due).
    pub slot: OffsetDateTime,
    /// Due slots before it that were missed (downtime): recorded, not fired.
    pub skipped: Vec<OffsetDateTime>,
    /// The next slot after `now`; `None` for a one-time schedule.
    pub next: Option<OffsetDateTime>,
}

/// At most this many missed slots are listed one by one in the history.
pub const MAX_SKIPPED_LISTED: usize = 100;

/// Works out a due schedule's firing at `now`: after downtime a cron schedule fires once, for
/// its latest due slot, and the slots it missed are reported as skipped.
pub fn firing(when: &When, due: OffsetDateTime, now: OffsetDateTime) -> Result<Firing> {
    match when {
        When::Once(_) => Ok(Firing {
            slot: due,
            skipped: vec![],
            next: None,
        }),
        When::Cron(c) => {
            let mut slots = vec![due];
            let mut t = due;
            loop {
                let n = c.next_after(t)?;
                if n > now {
                    let slot = slots.pop().expect("at least the due slot");
                    // Listing is capped: a long outage of a frequent schedule is summarised.
                    let skip_from = slots.len().saturating_sub(MAX_SKIPPED_LISTED);
                    return Ok(Firing {
                        slot,
                        skipped: slots.split_off(skip_from),
                        next: Some(n),
                    });
                }
                slots.push(n);
                t = n;
                if slots.len() > 1_000_000 {
                    return Err(Error::internal("too many missed slots"));
                }
            }
        }
    }
}

/// Parses a `scheduleOnce`/`timestamp`: RFC 3339 with `Z` or an offset, with or without
/// fractions; a naive time (as the Python SDK sends from a naive datetime) is UTC.
pub fn parse_instant(field: &str, s: &str) -> Result<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(t.to_offset(time::UtcOffset::UTC));
    }
    // Naive times are UTC, with `T` or, as Pulumi's service writes them, a space.
    let naive = time::PrimitiveDateTime::parse(
        &s.replacen(' ', "T", 1),
        &time::format_description::well_known::Iso8601::DEFAULT,
    )
    .map_err(|_| {
        Error::invalid(format!(
            "{field} '{s}' is not an RFC 3339 timestamp (like 2026-12-31T23:59:00Z)"
        ))
    })?;
    Ok(naive.assume_utc())
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn next(expr: &str, t: OffsetDateTime) -> OffsetDateTime {
        Cron::parse(expr).unwrap().next_after(t).unwrap()
    }

    #[test]
    fn cron_edge_cases() {
        let t = datetime!(2026-01-31 10:07:30 UTC);
        assert_eq!(next("*/15 * * * *", t), datetime!(2026-01-31 10:15 UTC));
        assert_eq!(next("5-10 * * * *", t), datetime!(2026-01-31 10:08 UTC));
        assert_eq!(next("0 9,17 * * *", t), datetime!(2026-01-31 17:00 UTC));
        // Day of week 0 and 7 are both Sunday (2026-02-01 is a Sunday).
        assert_eq!(next("0 0 * * 0", t), datetime!(2026-02-01 00:00 UTC));
        assert_eq!(next("0 0 * * 7", t), datetime!(2026-02-01 00:00 UTC));
        assert_eq!(next("0 0 * * SUN", t), datetime!(2026-02-01 00:00 UTC));
        // Month ends: the 31st skips months without one; the 29th of February waits for a leap year.
        assert_eq!(
            next("0 0 31 * *", datetime!(2026-02-01 00:00 UTC)),
            datetime!(2026-03-31 00:00 UTC)
        );
        assert_eq!(next("0 0 29 2 *", t), datetime!(2028-02-29 00:00 UTC));
        assert_eq!(
            next("0 0 1 * *", datetime!(2026-12-31 23:59 UTC)),
            datetime!(2027-01-01 00:00 UTC)
        );
        // Strictly after: a slot equal to `t` is not next.
        assert_eq!(
            next("0 * * * *", datetime!(2026-01-01 10:00 UTC)),
            datetime!(2026-01-01 11:00 UTC)
        );
        // Slots are whole seconds whatever the fraction of `t`.
        assert_eq!(
            next("0 3 * * *", datetime!(2026-01-01 10:00:05.249 UTC)),
            datetime!(2026-01-02 03:00 UTC)
        );
    }

    #[test]
    fn invalid_expressions_are_refused_with_a_message() {
        for (expr, want) in [
            ("* * * *", "expected 5 fields"),
            ("0 0 * * * *", "expected 5 fields"),
            ("61 * * * *", "invalid scheduleCron"),
            ("* 24 * * *", "invalid scheduleCron"),
            ("* * * 13 *", "invalid scheduleCron"),
            ("*/0 * * * *", "invalid scheduleCron"),
            ("0 0 30 2 *", "never matches"),
            ("bogus", "expected 5 fields"),
        ] {
            let err = Cron::parse(expr).unwrap_err();
            assert!(matches!(err, Error::Invalid(_)), "{expr}");
            assert!(err.to_string().contains(want), "{expr}: {err}");
        }
    }

    #[test]
    fn after_downtime_a_cron_schedule_fires_once_and_lists_what_it_missed() {
        let when = When::Cron(Box::new(Cron::parse("0 * * * *").unwrap()));
        let f = firing(
            &when,
            datetime!(2026-01-01 10:00 UTC),
            datetime!(2026-01-01 13:30 UTC),
        )
        .unwrap();
        assert_eq!(f.slot, datetime!(2026-01-01 13:00 UTC));
        assert_eq!(
            f.skipped,
            [
                datetime!(2026-01-01 10:00 UTC),
                datetime!(2026-01-01 11:00 UTC),
                datetime!(2026-01-01 12:00 UTC)
            ]
        );
        assert_eq!(f.next, Some(datetime!(2026-01-01 14:00 UTC)));
        let on_time = firing(
            &when,
            datetime!(2026-01-01 10:00 UTC),
            datetime!(2026-01-01 10:00:05 UTC),
        )
        .unwrap();
        assert!(on_time.skipped.is_empty());
        let once = firing(
            &When::Once(datetime!(2026-01-01 10:00 UTC)),
            datetime!(2026-01-01 10:00 UTC),
            datetime!(2026-01-02 0:00 UTC),
        )
        .unwrap();
        assert_eq!(once.next, None);
    }

    #[test]
    fn instants_accept_every_form_clients_send() {
        let want = datetime!(2026-12-31 23:59 UTC);
        for s in [
            "2026-12-31T23:59:00Z",
            "2026-12-31T23:59:00.000Z",
            "2026-12-31T23:59:00+00:00",
            "2026-12-31T23:59:00",
            "2027-01-01T01:59:00+02:00",
        ] {
            assert_eq!(parse_instant("scheduleOnce", s).unwrap(), want, "{s}");
        }
        assert!(
            parse_instant("scheduleOnce", "tomorrow")
                .unwrap_err()
                .to_string()
                .contains("not an RFC 3339")
        );
    }
}
