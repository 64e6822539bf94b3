//! A stack as the stack resource shows it: its tags, its last update, what it holds.

use std::collections::BTreeMap;

use time::OffsetDateTime;
use uuid::Uuid;

use super::StackRef;
use crate::error::{Error, Result};

/// A stack's tags: name to value.
pub type Tags = BTreeMap<String, String>;

/// A stack, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StackInfo {
    pub stack: StackRef,
    pub created: OffsetDateTime,
    pub tags: Tags,
    /// The version of its latest update (0: none yet).
    pub update_version: i64,
    /// The resources its state held after its last successful update, where known.
    pub resource_count: Option<i64>,
    /// The deployment holding its run slot (accepted or running), if any.
    pub active: Option<Uuid>,
    pub paused: bool,
}

/// The longest tag name and value Pulumi accepts.
pub const MAX_TAG_NAME: usize = 40;
pub const MAX_TAG_VALUE: usize = 256;

/// The tag whose value, in minutes, arms a destroy that long after each successful update.
pub const TTL_TAG: &str = "ttl";
/// The longest TTL a tag may ask for: a year, in minutes.
pub const MAX_TTL_MINUTES: i64 = 365 * 24 * 60;

/// Pulumi's rules: names of 1 to 40 of `[A-Za-z0-9-_.:]`, values of at most 256 bytes; and
/// Tarmac's: `ttl` is a whole number of minutes.
pub fn validate_tag(name: &str, value: &str) -> Result<()> {
    let name_ok = !name.is_empty()
        && name.len() <= MAX_TAG_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if !name_ok {
        return Err(Error::invalid(format!(
            "invalid tag name '{name}': use 1 to {MAX_TAG_NAME} letters, digits, '-', '_', '.' or ':'"
        )));
    }
    if value.len() > MAX_TAG_VALUE {
        return Err(Error::invalid(format!(
            "the value of tag '{name}' is {} bytes long; at most {MAX_TAG_VALUE}",
            value.len()
        )));
    }
    if name == TTL_TAG {
        ttl_minutes(value)?;
    }
    Ok(())
}

/// A `ttl` tag's minutes.
pub fn ttl_minutes(value: &str) -> Result<i64> {
    value
        .trim()
        .parse::<i64>()
        .ok()
        .filter(|m| (1..=MAX_TTL_MINUTES).contains(m))
        .ok_or_else(|| {
            Error::invalid(format!(
                "the ttl tag must be a whole number of minutes from 1 to {MAX_TTL_MINUTES}, not '{value}'"
            ))
        })
}

pub fn validate_tags(tags: &Tags) -> Result<()> {
    tags.iter().try_for_each(|(k, v)| validate_tag(k, v))
}

/// The id of the schedule a stack's `ttl` tag keeps (the same on every server, so clients can
/// tell it from the schedules they made).
pub fn ttl_schedule_id(stack: &super::StackRef) -> uuid::Uuid {
    crate::crypto::derived_uuid(&[b"tarmac-ttl-tag:", stack.to_string().as_bytes()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_pulumis_rules_and_ttl_is_minutes() {
        for ok in [
            ("owner", "me"),
            ("vcs:repo", ""),
            ("a.b-c_d", "x"),
            ("ttl", "30"),
        ] {
            assert!(validate_tag(ok.0, ok.1).is_ok(), "{ok:?}");
        }
        let long = "v".repeat(257);
        for (name, value, why) in [
            ("", "x", "invalid tag name"),
            ("has space", "x", "invalid tag name"),
            (&"n".repeat(41)[..], "x", "invalid tag name"),
            ("k", long.as_str(), "257 bytes"),
            ("ttl", "abc", "whole number of minutes"),
            ("ttl", "0", "whole number of minutes"),
        ] {
            let err = validate_tag(name, value).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
        assert_eq!(ttl_minutes(" 45 ").unwrap(), 45);
    }
}
