//! Stack tags (`super::super::tags`).

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// `POST S/tags`: a new tag (Pulumi's tags are set once per name: remove, then add).
#[derive(ToSchema)]
pub(crate) struct TagAddRequest {
    /// 1 to 40 of letters, digits, `-`, `_`, `.`, `:`.
    #[schema(pattern = "^[A-Za-z0-9._:-]{1,40}$", example = "owner")]
    name: String,
    /// At most 256 bytes (default `""`); a `ttl` tag's is whole minutes.
    value: Option<String>,
}

/// `PATCH S/tags`: the stack's tags become exactly these, name to value.
#[derive(ToSchema)]
pub(crate) struct TagsReplaceRequest(BTreeMap<String, String>);

/// `PATCH S/tags/{name}`: the tag's new value.
#[derive(ToSchema)]
pub(crate) struct TagUpdateRequest {
    /// If given, the path's name.
    name: Option<String>,
    /// At most 256 bytes; a `ttl` tag's is whole minutes.
    value: String,
}
