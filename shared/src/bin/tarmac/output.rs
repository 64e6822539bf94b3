//! `--output table|json|yaml`. JSON and YAML print the server's own answer, so scripts read the
//! API's shapes; tables pick the columns a person wants.

use serde_json::Value;

use crate::api::{CliError, CliResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
    Yaml,
}

/// Columns and rows for the table form.
pub(crate) struct Table {
    pub(crate) headers: Vec<&'static str>,
    pub(crate) rows: Vec<Vec<String>>,
}

impl Table {
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: vec![],
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub(crate) fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.len()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  ", w = widths[i]));
                }
            }
            s.trim_end().to_string()
        };
        let mut out = line(self.headers.clone());
        out.push('\n');
        for r in &self.rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
            out.push('\n');
        }
        out
    }
}

/// Prints `value` in `format`; the table is built only when it is wanted.
pub(crate) fn emit(
    format: Format,
    value: &Value,
    table: impl FnOnce(&Value) -> Table,
) -> CliResult<()> {
    emit_text(format, value, |v| table(v).render())
}

/// Like `emit`, with any text for the table form.
pub(crate) fn emit_text(
    format: Format,
    value: &Value,
    text: impl FnOnce(&Value) -> String,
) -> CliResult<()> {
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("JSON values serialize")
        ),
        Format::Yaml => print!("{}", to_yaml(value)?),
        Format::Table => print!("{}", text(value)),
    }
    Ok(())
}

pub(crate) fn to_yaml(value: &Value) -> CliResult<String> {
    serde_yaml_ng::to_string(value).map_err(|e| CliError::new(format!("cannot write YAML: {e}")))
}

/// A JSON value as a table cell: strings bare, `null` empty.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `2026-11-30T08:01:02.123456Z` (or Pulumi's `2026-11-30 08:01:02.123`) as `2026-11-30 08:01:02`.
pub(crate) fn when(v: &Value) -> String {
    let s = cell(v);
    s.replace('T', " ").chars().take(19).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let mut t = Table::new(&["NAME", "STATUS"]);
        t.row(vec!["a".into(), "succeeded".into()]);
        t.row(vec!["longer".into(), "".into()]);
        assert_eq!(t.render(), "NAME    STATUS\na       succeeded\nlonger\n");
        assert_eq!(
            when(&Value::from("2026-11-30T08:01:02.123456Z")),
            "2026-11-30 08:01:02"
        );
    }
}
