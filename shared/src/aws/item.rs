//! Helpers for DynamoDB items and expressions: typed reads, and attribute names filled in
//! from the expressions themselves so every attribute can be written `#name`.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;

use crate::error::{Error, Result};

pub type Item = HashMap<String, AttributeValue>;

pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub fn b(v: bool) -> AttributeValue {
    AttributeValue::Bool(v)
}

/// Keys padded so string order is numeric order.
pub fn pad(v: i64) -> String {
    format!("{v:020}")
}

pub fn key(pk: impl Into<String>, sk: impl Into<String>) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn missing(k: &str) -> Error {
    Error::internal(format!("stored item lacks '{k}'"))
}

pub fn get_s(item: &Item, k: &str) -> Result<String> {
    opt_s(item, k).ok_or_else(|| missing(k))
}

pub fn opt_s(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

pub fn get_n(item: &Item, k: &str) -> Result<i64> {
    opt_n(item, k).ok_or_else(|| missing(k))
}

pub fn opt_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

pub fn get_b(item: &Item, k: &str) -> bool {
    item.get(k)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}

/// `#name` tokens of an expression, mapped to attribute names.
pub fn names(exprs: &[&str]) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    for expr in exprs {
        let mut rest = *expr;
        while let Some(i) = rest.find('#') {
            let tail = &rest[i + 1..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            out.insert(format!("#{}", &tail[..end]), tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `:value` bindings.
pub fn values(pairs: Vec<(&str, AttributeValue)>) -> Option<Item> {
    (!pairs.is_empty()).then(|| pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_expressions() {
        let got = names(&[
            "SET #status = :s, #log_seq = #log_seq + :one",
            "#lease_owner = :o",
        ])
        .unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got["#status"], "status");
        assert!(names(&["attribute_not_exists(pk)"]).is_none());
        assert_eq!(pad(42), "00000000000000000042");
    }
}
