//! Reading JSON bodies whose clients disagree on key spelling (`repoUrl`, `repoURL`, `Git`).

use serde_json::Value;

/// A JSON object's member by case-insensitive name, `null` counting as absent. `None` if `body`
/// is not an object.
pub(crate) fn member<'a>(body: &'a Value, name: &str) -> Option<&'a Value> {
    body.as_object()?
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_null())
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_match_any_case_and_nulls_are_absent() {
        let body = serde_json::json!({"repoURL": "u", "Gone": null});
        assert_eq!(member(&body, "repoUrl"), Some(&Value::from("u")));
        assert_eq!(member(&body, "gone"), None);
        assert_eq!(member(&Value::from(1), "x"), None);
    }
}
