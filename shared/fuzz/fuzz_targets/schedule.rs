//! Schedules: the cron parser, next slots, firing after downtime, and one-time instants.
//!
//! Invariants (from `shared/src/domain/schedule.rs`):
//! - parsing any text returns, never panics;
//! - an expression `parse` accepted re-reads with `from_stored` from what is stored (`as_str`),
//!   and gives the same slots;
//! - the next slot is strictly after the reference time, on a whole minute (five fields, no
//!   seconds), and it is the first: from any time between the two, it is still next;
//! - a firing after downtime fires the latest due slot, lists at most `MAX_SKIPPED_LISTED`
//!   earlier ones, in order, and its next slot is the first after `now`;
//! - an instant that parses is UTC, and reads back from its RFC 3339 form.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tarmac::domain::schedule::{Cron, MAX_SKIPPED_LISTED, When, firing, parse_instant};
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

#[derive(Arbitrary, Debug)]
enum Expr {
    Fields(Vec<Vec<Part>>, u8),
    Alias(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Part {
    kind: u8,
    a: u8,
    b: u8,
    c: u8,
}

const NAMES: &[&str] = &[
    "SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT", "JAN", "FEB", "MAR", "JUN", "DEC", "mon",
    "Jan",
];
const ALIASES: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
    "@reboot",
    "@every",
    " @daily ",
];
const SEPARATORS: &[&str] = &[" ", "  ", "\t", " \n "];

impl Part {
    fn text(&self) -> String {
        let (a, b, c) = (self.a % 64, self.b % 64, self.c % 16);
        let name = NAMES[usize::from(self.a) % NAMES.len()];
        match self.kind % 12 {
            0 | 1 => "*".into(),
            2 => format!("*/{c}"),
            3 | 4 => a.to_string(),
            5 => format!("{a}-{b}"),
            6 => format!("{a}-{b}/{c}"),
            7 => name.into(),
            8 => format!("{name}-{}", NAMES[usize::from(self.b) % NAMES.len()]),
            9 => "?".into(),
            10 => ["L", "W", "LW", "5L", "15W", "1#2", "MON#5"][usize::from(self.c) % 7].into(),
            _ => self.a.to_string(),
        }
    }
}

impl Expr {
    fn text(&self) -> String {
        match self {
            Expr::Fields(fields, sep) => fields
                .iter()
                .map(|parts| parts.iter().map(Part::text).collect::<Vec<_>>().join(","))
                .collect::<Vec<_>>()
                .join(SEPARATORS[usize::from(*sep) % SEPARATORS.len()]),
            Expr::Alias(i) => ALIASES[usize::from(*i) % ALIASES.len()].into(),
            Expr::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    expr: Expr,
    /// Seconds from 2000 when `near`, else anywhere `time` can represent.
    at: i64,
    nanos: u32,
    near: bool,
    /// How long the scheduler was down, in seconds (at most two days).
    downtime: u32,
    instant: String,
}

fn reference(input: &Input) -> OffsetDateTime {
    const Y2000: i64 = 946_684_800;
    const MIN: i64 = -377_705_116_800; // -9999-01-01
    const MAX: i64 = 253_402_300_799; // 9999-12-31 23:59:59
    let secs = if input.near {
        Y2000 + input.at.rem_euclid(200 * 366 * 86_400)
    } else {
        MIN + input.at.rem_euclid(MAX - MIN + 1)
    };
    let t = OffsetDateTime::from_unix_timestamp(secs).expect("in range");
    t.replace_nanosecond(input.nanos % 1_000_000_000)
        .expect("a valid nanosecond")
}

fuzz_target!(|input: Input| {
    if let Ok(t) = parse_instant("scheduleOnce", &input.instant) {
        assert!(t.offset().is_utc(), "{t}");
        if let Ok(text) = t.format(&Rfc3339) {
            assert_eq!(parse_instant("scheduleOnce", &text).ok(), Some(t), "{text}");
        }
    }

    let text = input.expr.text();
    let _ = Cron::from_stored(&text);
    let Ok(cron) = Cron::parse(&text) else {
        return;
    };
    let stored = Cron::from_stored(cron.as_str())
        .unwrap_or_else(|e| panic!("{text:?} was accepted but does not re-read: {e}"));
    let t = reference(&input);
    let Ok(next) = cron.next_after(t) else {
        return;
    };
    assert!(next > t, "{text:?}: the slot after {t} is {next}");
    assert_eq!(
        (next.second(), next.nanosecond()),
        (0, 0),
        "{text:?}: {next}"
    );
    assert_eq!(stored.next_after(t).ok(), Some(next), "{text:?} after {t}");
    let just_before = next - Duration::SECOND;
    if just_before >= t {
        assert_eq!(
            cron.next_after(just_before).ok(),
            Some(next),
            "{text:?}: a slot between {t} and {next}"
        );
    }

    if !input.near {
        return;
    }
    let now = next + Duration::seconds(i64::from(input.downtime % (2 * 86_400)));
    let when = When::Cron(Box::new(cron.clone()));
    let f = firing(&when, next, now).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(next <= f.slot && f.slot <= now, "{text:?}: {f:?}");
    assert!(f.skipped.len() <= MAX_SKIPPED_LISTED, "{text:?}");
    assert!(
        f.skipped.windows(2).all(|w| w[0] < w[1]) && f.skipped.iter().all(|s| *s < f.slot),
        "{text:?}: {f:?}"
    );
    assert_eq!(f.next, cron.next_after(now).ok(), "{text:?}: {f:?}");
    assert!(f.next.is_some_and(|n| n > now), "{text:?}: {f:?}");
});
